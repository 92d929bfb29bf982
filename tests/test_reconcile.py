"""`ocs reconcile`: Redis balances equal the ledger, and a balance changed behind its back
shows; so does an account Redis holds and PostgreSQL does not, whose creation's retry
finishes it."""

import asyncio
import json
import sys
import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs.balances import keys
from ocs.balances.reconcile import reconcile
from ocs.balances.store import BalanceStore
from tests.conftest import RunningApp, add_plan, eventually


async def test_balances_reconcile_with_entries_in_flight_and_written(app: RunningApp) -> None:
    await add_plan(app.services)
    for n in range(5):
        await app.post("/v1/accounts", {"id": f"r{n}", "plan": "retail", "balance": "2.00"})
        await app.post(f"/v1/accounts/r{n}/topups", {"amount": "1.25"})
        await app.post(
            "/v1/calls", {"account": f"r{n}", "destination": "447700900123", "call_id": f"rc{n}"}
        )
        await app.post(f"/v1/calls/rc{n}/stop", {"duration": 45 + n})
    result = await reconcile(app.services.redis, app.services.pool)
    assert result.ok and result.accounts == 5


async def test_a_balance_changed_without_its_record_is_reported(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "honest", "plan": "retail", "balance": "2.00"})
    await app.post("/v1/accounts", {"id": "tampered", "plan": "retail", "balance": "2.00"})
    # A change that bypasses the scripts has no ledger entry.
    await app.services.redis.hincrby(keys.account("tampered"), "balance", 500_000)
    result = await reconcile(app.services.redis, app.services.pool)
    assert not result.ok
    assert [(m.account_id, m.redis_balance, m.ledger_total) for m in result.mismatches] == [
        ("tampered", 2_500_000, 2_000_000)
    ]
    settings = app.services.settings
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        "reconcile",
        "--redis-url",
        settings.redis_url or "",
        "--database-url",
        settings.database_url or "",
        "--log-format",
        "text",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 1, stderr.decode()
    report = json.loads(stdout)
    assert report["mismatches"] == [
        {"account": "tampered", "redis_balance": "2.500000", "ledger_total": "2.000000"}
    ]


async def test_reconcile_is_exact_while_calls_and_the_writer_run(app: RunningApp) -> None:
    await add_plan(app.services, max_lines=50)
    accounts = [f"busy{n}" for n in range(8)]
    for account in accounts:
        await app.post(
            "/v1/accounts", {"id": account, "plan": "retail", "balance": "50.00", "max_lines": 50}
        )

    async def traffic(account: str) -> None:
        for n in range(15):
            call_id = f"{account}-{n}"
            await app.post(
                "/v1/calls", {"account": account, "destination": "447700900123", "call_id": call_id}
            )
            await app.post(f"/v1/calls/{call_id}/stop", {"duration": 10 + n})
            await app.post(f"/v1/accounts/{account}/topups", {"amount": "0.01"})

    running = asyncio.gather(*(traffic(a) for a in accounts))
    checks = []
    while not running.done():
        checks.append(await reconcile(app.services.redis, app.services.pool))
    await running
    checks.append(await reconcile(app.services.redis, app.services.pool))
    assert len(checks) >= 2
    assert all(c.ok for c in checks), [c.mismatches for c in checks if not c.ok][:1]


async def test_a_redis_that_lost_entries_already_written_to_postgresql_is_reported(
    app: RunningApp,
) -> None:
    # A host crash with `appendfsync everysec` restarts Redis from an AOF missing its last
    # second: the charge, its stream entry and the stream's last id go back, while the
    # ledger writer had already copied the entry to PostgreSQL. Reconcile counted rows up
    # to the stream's last id, so it left that row out on both sides and said all was well.
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "crashed", "plan": "retail", "balance": "2.00"})
    redis, pool = app.services.redis, app.services.pool
    stream = keys.ledger(keys.bucket_of("crashed"))

    async def written(count: int) -> bool:
        rows = await pool.fetchval("SELECT count(*) FROM ledger WHERE account_id = 'crashed'")
        return bool(rows == count and await redis.xlen(stream) == 0)

    await eventually(lambda: written(1), what="the opening balance's entry written")
    # The state the AOF kept: before the call below.
    kept_balance = await redis.hget(keys.account("crashed"), "balance")
    kept_id = (await redis.xinfo_stream(stream))["last-generated-id"]
    await app.post(
        "/v1/calls", {"account": "crashed", "destination": "447700900123", "call_id": "gone"}
    )
    status, _ = await app.post("/v1/calls/gone/stop", {"duration": 45})
    assert status == 200
    await eventually(lambda: written(2), what="the call's entry written")
    charge = await pool.fetchval(
        "SELECT amount FROM ledger WHERE account_id = 'crashed' AND kind <> 'topup'"
        " ORDER BY entry_id DESC LIMIT 1"
    )
    assert charge < 0
    # Redis restarted from that AOF: the balance, the stream's last id and the writer's
    # group as they were before the call.
    await redis.hset(keys.account("crashed"), "balance", kept_balance)
    await redis.execute_command("XSETID", stream, kept_id)
    await redis.execute_command("XGROUP", "SETID", stream, keys.LEDGER_GROUP, kept_id)

    result = await reconcile(redis, pool)

    assert not result.ok
    assert [(m.account_id, m.redis_balance, m.ledger_total) for m in result.mismatches] == [
        ("crashed", int(kept_balance), int(kept_balance) + charge)
    ]
    (lost,) = result.lost
    assert lost.stream_last_id == f"{keys.bucket_of('crashed')}-{kept_id.decode()}"


async def reconcile_command(app: RunningApp) -> tuple[int, dict[str, Any]]:
    """``ocs reconcile`` run as an operator runs it: its exit code and report."""
    settings = app.services.settings
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        "reconcile",
        "--redis-url",
        settings.redis_url or "",
        "--database-url",
        settings.database_url or "",
        "--log-format",
        "text",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None, stderr.decode()
    return child.returncode, json.loads(stdout)


async def test_an_account_whose_creation_lost_its_answer_is_reported_and_finished_by_its_retry(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_plan(app.services)
    redis, pool = app.services.redis, app.services.pool
    real = BalanceStore.create_account

    async def made_then_lost(self: BalanceStore, *args: Any, **kwargs: Any) -> Any:
        await real(self, *args, **kwargs)
        raise RedisConnectionError("connection to Redis lost: reset by peer")

    monkeypatch.setattr(BalanceStore, "create_account", made_then_lost)
    request = {"id": "half", "plan": "retail", "balance": "10.00"}
    status, body = await app.post("/v1/accounts", request)
    assert status == 503, body
    monkeypatch.undo()
    # Redis made the account, funded; PostgreSQL rolled its row back.
    assert await pool.fetchval("SELECT count(*) FROM accounts") == 0
    assert await redis.hget(keys.account("half"), "balance") == b"10000000"

    # Made moments ago, its creation might still be in its transaction: not yet reported.
    assert (await reconcile(redis, pool)).ok
    # Once older than that, reported (before: reconcile looked at PostgreSQL's accounts
    # only, and said all was well).
    result = await reconcile(redis, pool, orphan_grace_ms=0)
    assert not result.ok
    assert [(o.account_id, o.redis_balance) for o in result.orphans] == [("half", 10_000_000)]
    # A day later (its creation stamped so), `ocs reconcile` names it and exits 1.
    created = (await redis.hget(keys.account("half"), "created") or b"").decode()
    token = created.partition(":")[2]
    aged = int(time.time() * 1000) - 86_400_000
    await redis.hset(keys.account("half"), "created", f"{aged}:{token}")
    code, report = await reconcile_command(app)
    assert (code, report["ok"], report["accounts"], report["mismatches"]) == (1, False, 0, [])
    assert [(o["account"], o["redis_balance"]) for o in report["orphans"]] == [
        ("half", "10.000000")
    ]

    # A request with other settings is refused: it is not the one that made the account.
    status, body = await app.post("/v1/accounts", {**request, "balance": "20.00"})
    assert (status, body["error"]["field"]) == (409, "id"), body
    # The same request again finishes the creation (before: refused for ever).
    status, body = await app.post("/v1/accounts", request)
    assert status == 201, body
    assert body["balance"] == "10.000000"
    assert await pool.fetchval("SELECT plan_id FROM accounts WHERE id = 'half'") == "retail"

    async def opening_written() -> bool:
        total = await pool.fetchval("SELECT sum(amount) FROM ledger WHERE account_id = 'half'")
        return bool(total == 10_000_000)

    # Its opening balance once: the first try's, which the retry did not repeat.
    await eventually(opening_written, what="the opening balance in PostgreSQL")
    assert await pool.fetchval("SELECT count(*) FROM ledger") == 1
    assert (await reconcile(redis, pool, orphan_grace_ms=0)).ok
    status, _ = await app.post("/v1/accounts", request)
    assert status == 409
