"""`ocs reconcile` checks the numbers too (decision 0030, addendum 2026-12-07): each
number's Redis reference, which an inbound call reads to find its account, names the
holder PostgreSQL records. A reference deleted, naming another account, or left after
a release is reported (exit 1), and ``--repair-numbers`` sets it to PostgreSQL's
holder, after which inbound calls reach the holder, or are refused when the number is
free. A take in flight while reconcile reads is not taken for a mismatch."""

import asyncio
import json
from datetime import date
from pathlib import Path
from typing import Any

from ocs.balances import keys
from ocs.billing.number_reconcile import NumberMismatch, check_numbers
from tests.conftest import RunningApp, add_plan, eventually
from tests.helpers import Raw, new_account, ocs_cli, send

INBOUND_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment,direction
44,UK Fixed,0.010,0,60,60,outbound
4420,London DID,0.020,0,60,60,inbound
"""
DELETED, REDIRECTED, RELEASED, UNTOUCHED = (
    "442079460001",
    "442079460002",
    "442079460003",
    "442079460004",
)


async def numbers_taken(app: RunningApp) -> None:
    """A London DID set of four numbers serving retail; "holder" takes the first three
    and gives the third back; "other" takes the fourth."""
    await add_plan(app.services, deck=INBOUND_DECK, max_lines=5)
    status, body = await send(app, "POST", "/v1/number-sets", {"id": "london", "kind": "did"})
    assert status == 201, body
    csv = "number\n" + "\n".join((DELETED, REDIRECTED, RELEASED, UNTOUCHED)) + "\n"
    status, body = await send(app, "POST", "/v1/number-sets/london/numbers", Raw(csv, "text/csv"))
    assert status == 200, body
    status, body = await send(app, "PUT", "/v1/number-sets/london/plans/retail", {"priority": 1})
    assert status == 200, body
    await new_account(app, "holder", balance="20.00")
    await new_account(app, "other", balance="1.00")
    for account_id, number in (
        ("holder", DELETED),
        ("holder", REDIRECTED),
        ("holder", RELEASED),
        ("other", UNTOUCHED),
    ):
        status, body = await send(
            app, "POST", f"/v1/accounts/{account_id}/numbers", {"number": number}
        )
        assert status == 201, body
    status, body = await send(app, "DELETE", f"/v1/accounts/holder/numbers/{RELEASED}")
    assert status == 200, body


async def reconcile_cli(app: RunningApp, cwd: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    """``ocs reconcile`` as an operator runs it: its exit code and JSON report."""
    code, stdout, stderr = await ocs_cli(app.services.settings, cwd, "reconcile", *flags)
    assert code in (0, 1), stderr
    return code, json.loads(stdout)


async def inbound_call(app: RunningApp, number: str) -> tuple[int, Any]:
    """An inbound call to ``number`` with no account named: the number must find it."""
    return await send(app, "POST", "/v1/calls", {"destination": number, "direction": "inbound"})


async def test_a_clean_deployment_reports_no_number(app: RunningApp, tmp_path: Path) -> None:
    await numbers_taken(app)
    assert await check_numbers(app.services.redis, app.services.pool) == []
    code, report = await reconcile_cli(app, tmp_path)
    assert (code, report["ok"], report["numbers"]) == (0, True, [])


async def test_wrong_references_are_reported_then_repaired_for_inbound_calls(
    app: RunningApp, tmp_path: Path
) -> None:
    await numbers_taken(app)
    redis = app.services.redis
    # What a process killed between PostgreSQL and Redis, or a COMMIT answer lost and
    # not read back, leaves: a take's reference never written, a reference naming
    # another account, and a release's reference never removed.
    await redis.delete(keys.did_ref(DELETED))
    await redis.set(keys.did_ref(REDIRECTED), "other")
    await redis.set(keys.did_ref(RELEASED), "holder")
    status, body = await inbound_call(app, DELETED)
    assert (status, body["error"]["field"]) == (400, "account"), body  # reaches nobody

    assert await check_numbers(redis, app.services.pool) == [
        NumberMismatch(DELETED, None, "holder"),
        NumberMismatch(REDIRECTED, "other", "holder"),
        NumberMismatch(RELEASED, "holder", None),
    ]
    # Before: reconcile looked at balances and accounts only, and said all was well.
    code, report = await reconcile_cli(app, tmp_path)
    assert (code, report["ok"], report["mismatches"], report["orphans"]) == (1, False, [], [])
    assert report["numbers"] == [
        {"number": DELETED, "redis_account": None, "postgresql_holder": "holder"},
        {"number": REDIRECTED, "redis_account": "other", "postgresql_holder": "holder"},
        {"number": RELEASED, "redis_account": "holder", "postgresql_holder": None},
    ]
    # Reported only: nothing was changed.
    assert await redis.get(keys.did_ref(REDIRECTED)) == b"other"

    code, report = await reconcile_cli(app, tmp_path, "--repair-numbers")
    assert code == 1  # what it found, and set right
    assert [(n["number"], n["repaired_to"]) for n in report["numbers"]] == [
        (DELETED, "holder"),
        (REDIRECTED, "holder"),
        (RELEASED, None),
    ]
    code, report = await reconcile_cli(app, tmp_path)
    assert (code, report["ok"], report["numbers"]) == (0, True, [])

    for number in (DELETED, REDIRECTED):
        status, granted = await inbound_call(app, number)
        assert status == 201, granted
        assert (granted["account"], granted["zone"]) == ("holder", "London DID")
    status, body = await inbound_call(app, RELEASED)
    assert (status, body["error"]["field"]) == (400, "account"), body
    status, granted = await inbound_call(app, UNTOUCHED)
    assert (status, granted["account"]) == (201, "other"), granted


async def test_a_take_in_flight_while_reconcile_reads_is_no_mismatch(app: RunningApp) -> None:
    """A take tells Redis inside its transaction, then commits: read between the two,
    Redis names the taker while PostgreSQL still says the number is free. Reconcile
    reads such a number again under its row's lock, which waits for the take."""
    await numbers_taken(app)
    pool, store = app.services.pool, app.services.store
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            # A take of the released number, as take_number makes it, up to its COMMIT.
            await conn.execute(
                "UPDATE number_set_numbers SET account_id = 'other', assigned_on = $2"
                " WHERE number = $1",
                RELEASED,
                date(2026, 3, 1),
            )
            await store.set_did(RELEASED, "other")
            checking = asyncio.create_task(check_numbers(app.services.redis, pool))

            async def waiting_for_the_row() -> bool:
                waiting = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                return bool(waiting == 1)

            await eventually(waiting_for_the_row, what="reconcile waiting for the row's lock")
            assert not checking.done()
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
    assert await checking == []
