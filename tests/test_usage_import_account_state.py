"""Usage imports and the account's state: a supplier's record is a call that took place.

A critical-balance lock set by the import's own debits refuses none of the file's later
records (real time refuses only new calls under it); an operator's lock or a suspension
refuses a record that started at or after it was set, and charges one made before it.
The deck's UK calls of 61 s cost 0.04 EUR each (60/60 at 0.02).
"""

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ocs.balances import keys
from tests.conftest import RunningApp
from tests.usage_import_helpers import (
    HEADER,
    UK_NUMBER,
    balance,
    new_account,
    row,
    run_import,
    setup_mediation,
    stored_cdrs,
    text_of,
)


async def patch_account(app: RunningApp, account_id: str, fields: dict[str, Any]) -> None:
    """Change an account through the admin API, as an operator does."""
    response = await app.client.patch(f"/v1/accounts/{account_id}", json=fields)
    assert response.status == 200, await response.text()


def row_after_now(record_id: str, account: str) -> str:
    """A ``HEADER`` row of a 61 s UK call that starts an hour from now (the template's
    Toronto time): after any status set by the test."""
    later = datetime.now(ZoneInfo("America/Toronto")) + timedelta(hours=1)
    return f"{record_id},{account},{UK_NUMBER},{later:%Y-%m-%d %H:%M:%S},61,O,,\n"


async def test_a_critical_lock_set_mid_file_leaves_the_later_calls_charged(
    app: RunningApp, tmp_path: Path
) -> None:
    # Critical balance 9.95, balance 10.00: the second call takes it to 9.92 and locks the
    # account; the three calls after it took place too and are charged (funds cover them).
    await setup_mediation(app)
    await new_account(app, "acc1", "10.00")
    await patch_account(app, "acc1", {"critical_balance": "9.95"})
    path = tmp_path / "critical.csv"
    path.write_text(HEADER + "".join(row(f"r{n}", "acc1", minute=n) for n in range(5)))
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (5, 0), summary.problems
    assert summary.amounts == {"EUR": 200_000}
    assert await balance(app, "acc1") == 10_000_000 - 5 * 40_000
    cdrs = await stored_cdrs(app, "carrier-x", 5)
    assert [(c["record_id"], c["account_id"]) for c in cdrs] == [
        (f"r{n}", "acc1") for n in range(5)
    ]
    # The lock stays: new calls are refused until a top-up back to 9.95.
    state = await app.services.redis.hmget(keys.account("acc1"), "status", "lock")
    assert state == [b"locked", b"critical"]
    status, refused = await app.post("/v1/calls", {"account": "acc1", "destination": UK_NUMBER})
    assert (status, refused["error"]["reason"]) == (403, "account_locked"), refused


async def test_a_suspension_refuses_the_calls_made_after_it_and_charges_those_before(
    app: RunningApp, tmp_path: Path
) -> None:
    # Suspended now (as dunning or an operator does, through the account's status): its
    # March call is charged, the one an hour from now is a rejected row; so for an
    # operator's lock.
    await setup_mediation(app)
    for account_id, status in (("susp", "suspended"), ("lockd", "locked")):
        await new_account(app, account_id, "10.00")
        await patch_account(app, account_id, {"status": status})
    path = tmp_path / "suspended.csv"
    rows = [
        row("s1", "susp"),
        row_after_now("s2", "susp"),
        row("l1", "lockd"),
        row_after_now("l2", "lockd"),
    ]
    path.write_text(HEADER + "".join(rows))
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (2, 2)
    assert [(p.line, p.problems) for p in summary.problems] == [
        (3, ("account: account_suspended",)),
        (5, ("account: account_locked",)),
    ]
    assert text_of(summary.rejects_path) == HEADER + rows[1] + rows[3]
    assert await balance(app, "susp") == 10_000_000 - 40_000
    assert await balance(app, "lockd") == 10_000_000 - 40_000
    cdrs = await stored_cdrs(app, "carrier-x", 2)
    assert [c["record_id"] for c in cdrs] == ["l1", "s1"]


async def test_a_suspension_set_before_its_time_was_kept_charges_the_call(
    app: RunningApp, tmp_path: Path
) -> None:
    # An account suspended by an earlier version has no 'status_at': when the suspension
    # began is not known, and the call, which took place, is charged.
    await setup_mediation(app)
    await new_account(app, "old", "10.00")
    await patch_account(app, "old", {"status": "suspended"})
    await app.services.redis.hdel(keys.account("old"), "status_at")
    path = tmp_path / "old.csv"
    path.write_text(HEADER + row_after_now("o1", "old"))
    summary = await run_import(app, path)
    assert (summary.rows_charged, summary.rows_rejected) == (1, 0), summary.problems
    assert await balance(app, "old") == 10_000_000 - 40_000
