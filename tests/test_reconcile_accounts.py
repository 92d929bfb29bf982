"""`ocs reconcile` checks the accounts' states too (decision 0028, addendum 2026-12-07):
what Redis lets a call do agrees with the status PostgreSQL records. A status change
whose Redis write or COMMIT was lost (a suspension, a reactivation, an operator's lock,
an on-demand session) is reported (exit 1), and ``--repair-accounts`` sets Redis to
PostgreSQL's status, after which calls are refused or let through as PostgreSQL says.
A status change in flight while reconcile reads is not taken for a mismatch."""

import asyncio
import json
from datetime import date
from pathlib import Path
from typing import Any

from ocs.balances import keys
from ocs.billing.account_reconcile import StateMismatch, check_states
from ocs.billing.cycles import PlanBilling
from ocs.billing.sessions import lock_without_session
from ocs.billing.store import set_plan_billing
from tests.conftest import RunningApp, add_plan, eventually
from tests.helpers import new_account, ocs_cli, send


async def accounts_made(app: RunningApp) -> None:
    """Retail accounts "restored", "dunned", "fraud" and "low", and "booth", billed on
    demand with no session open (locked, reason "session")."""
    await add_plan(app.services, max_lines=5)
    await add_plan(app.services, "shop", max_lines=5)
    await set_plan_billing(
        app.services.pool, app.services.store, PlanBilling("shop", "on_demand", date(2026, 1, 1))
    )
    for account_id in ("restored", "dunned", "fraud", "low"):
        await new_account(app, account_id, balance="2.00")
    await new_account(app, "booth", plan="shop", balance="2.00")
    await lock_without_session(app.services.pool, app.services.store, "booth")
    status, body = await send(app, "PATCH", "/v1/accounts/fraud", {"status": "locked"})
    assert status == 200, body
    # Below its critical balance: Redis alone locks it (reason "critical"), as a charge
    # does; PostgreSQL keeps "active", and the two agree.
    await app.services.redis.hset(
        keys.account("low"), mapping={"status": "locked", "lock": "critical"}
    )


async def reconcile_cli(
    app: RunningApp, cwd: Path, *flags: str
) -> tuple[int, dict[str, Any], list[str]]:
    """``ocs reconcile`` as an operator runs it: its exit code, JSON report and log."""
    code, stdout, stderr = await ocs_cli(app.services.settings, cwd, "reconcile", *flags)
    assert code in (0, 1), stderr
    return code, json.loads(stdout), stderr.splitlines()


async def call(app: RunningApp, account_id: str, call_id: str) -> str:
    """A call of ``account_id`` to a UK fixed number: "granted" (ended at once), or the
    reason it was refused."""
    status, body = await send(
        app,
        "POST",
        "/v1/calls",
        {"account": account_id, "destination": "442079460000", "call_id": call_id},
    )
    if status == 201:
        stopped, answer = await send(app, "POST", f"/v1/calls/{call_id}/stop", {"duration": 0})
        assert stopped == 200, answer
        return "granted"
    assert status == 403, body
    return str(body["error"]["reason"])


async def test_agreeing_states_report_nothing(app: RunningApp, tmp_path: Path) -> None:
    await accounts_made(app)
    assert await check_states(app.services.redis, app.services.pool) == []
    code, report, _ = await reconcile_cli(app, tmp_path)
    assert (code, report["ok"], report["account_states"]) == (0, True, [])


async def test_states_left_wrong_are_reported_then_repaired_for_calls(
    app: RunningApp, tmp_path: Path
) -> None:
    await accounts_made(app)
    redis, pool = app.services.redis, app.services.pool
    # What a status change that told one store and not the other leaves:
    # - a suspension whose COMMIT was lost after it told Redis;
    await redis.hset(keys.account("restored"), mapping={"status": "suspended", "lock": ""})
    # - a suspension Redis lost (restarted from an AOF missing its last second);
    async with pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET status = 'suspended' WHERE id = 'dunned'")
    # - an operator's lock Redis lost, then a charge below the critical balance;
    await redis.hset(keys.account("fraud"), mapping={"status": "locked", "lock": "critical"})
    # - a session's opening whose COMMIT was lost after it told Redis.
    await redis.hset(keys.account("booth"), mapping={"status": "active", "lock": ""})
    assert await call(app, "restored", "r1") == "account_suspended"
    assert await call(app, "dunned", "d1") == "granted"
    assert await call(app, "booth", "b1") == "granted"

    assert await check_states(redis, pool) == [
        StateMismatch("booth", "locked", "active", ""),
        StateMismatch("dunned", "suspended", "active", ""),
        StateMismatch("fraud", "locked", "locked", "critical"),
        StateMismatch("restored", "active", "suspended", ""),
    ]
    # Before: reconcile looked at balances, accounts and numbers, and said all was well.
    code, report, _ = await reconcile_cli(app, tmp_path)
    assert (code, report["ok"], report["mismatches"], report["numbers"]) == (1, False, [], [])
    assert report["account_states"] == [
        {
            "account": "booth",
            "postgresql_status": "locked",
            "redis_status": "active",
            "redis_lock": None,
        },
        {
            "account": "dunned",
            "postgresql_status": "suspended",
            "redis_status": "active",
            "redis_lock": None,
        },
        {
            "account": "fraud",
            "postgresql_status": "locked",
            "redis_status": "locked",
            "redis_lock": "critical",
        },
        {
            "account": "restored",
            "postgresql_status": "active",
            "redis_status": "suspended",
            "redis_lock": None,
        },
    ]
    assert await call(app, "dunned", "d2") == "granted"  # reported only: nothing changed

    code, report, log = await reconcile_cli(app, tmp_path, "--repair-accounts")
    assert code == 1  # what it found, and set right
    # One line per account set right, naming it and both stores' states.
    assert [line.split(" account_id=")[1] for line in log if "account state in Redis" in line] == [
        "booth postgresql_status=locked redis_status=active redis_lock= lock=session",
        "dunned postgresql_status=suspended redis_status=active redis_lock= lock=",
        "fraud postgresql_status=locked redis_status=locked redis_lock=critical lock=",
        "restored postgresql_status=active redis_status=suspended redis_lock= lock=",
    ]
    assert [(a["account"], a["repaired_to"]) for a in report["account_states"]] == [
        ("booth", {"status": "locked", "lock": "session"}),
        ("dunned", {"status": "suspended", "lock": None}),
        ("fraud", {"status": "locked", "lock": None}),
        ("restored", {"status": "active", "lock": None}),
    ]
    code, report, _ = await reconcile_cli(app, tmp_path)
    assert (code, report["ok"], report["account_states"]) == (0, True, [])

    assert await call(app, "restored", "r2") == "granted"
    assert await call(app, "dunned", "d3") == "account_suspended"
    assert await call(app, "booth", "b2") == "no_open_session"
    # An operator's lock again, which a top-up no longer lifts.
    status, body = await app.post("/v1/accounts/fraud/topups", {"amount": "1.00"})
    assert status == 201, body
    assert await call(app, "fraud", "f1") == "account_locked"
    assert await call(app, "low", "l1") == "account_locked"  # untouched: it agreed


async def test_a_status_change_in_flight_while_reconcile_reads_is_no_mismatch(
    app: RunningApp,
) -> None:
    """A status change tells Redis inside its transaction, then commits: read between
    the two, Redis says suspended while PostgreSQL still says active. Reconcile reads
    such an account again under its row's lock, which waits for the change."""
    await accounts_made(app)
    pool, store = app.services.pool, app.services.store
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            # A suspension, as an operator's policy change makes it, up to its COMMIT.
            await conn.execute("UPDATE accounts SET status = 'suspended' WHERE id = 'restored'")
            await store.set_policy("restored", {"status": "suspended", "lock": ""})
            checking = asyncio.create_task(check_states(app.services.redis, pool))

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
