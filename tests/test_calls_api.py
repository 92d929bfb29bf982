"""A call authorized, reserved and charged end to end over HTTP, on real Redis and PostgreSQL."""

import asyncio
import time

from ocs.balances import keys
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.config import with_overrides
from tests.conftest import RunningApp, add_plan, eventually


async def ledger_rows(app: RunningApp, account: str) -> list:
    async with app.services.pool.acquire() as conn:
        return await conn.fetch(
            "SELECT * FROM ledger WHERE account_id = $1 ORDER BY occurred_at, entry_id", account
        )


async def test_uk_mobile_call_of_45_seconds_costs_0_198(app: RunningApp) -> None:
    await add_plan(app.services)
    status, account = await app.post(
        "/v1/accounts", {"id": "1001", "plan": "retail", "balance": "1.00"}
    )
    assert status == 201, account
    assert account["balance"] == "1.000000"

    status, grant = await app.post(
        "/v1/calls",
        {"account": "1001", "destination": "+447700900123", "caller": "1001", "call_id": "c-1"},
    )
    assert status == 201, grant
    assert grant["call_id"] == "c-1"
    assert grant["zone"] == "UK Mobile"
    # 1.00 - 0.15 connect = 0.85 at 0.06/min: 850 s, on the 30/6 grid 846 s.
    assert grant["max_duration"] == 846
    assert grant["reserved"] == "1.000000"

    status, shown = await app.get("/v1/accounts/1001")
    assert shown["reserved"] == "1.000000"
    assert shown["available"] == "0.000000"
    assert shown["lines_in_use"] == 1

    status, stopped = await app.post("/v1/calls/c-1/stop", {"duration": 45})
    assert status == 200, stopped
    assert stopped["billed_seconds"] == 48
    assert stopped["cost"] == "0.198000"
    assert stopped["balance"] == "0.802000"
    assert stopped["repeated"] is False

    status, shown = await app.get("/v1/accounts/1001")
    assert shown["balance"] == "0.802000"
    assert shown["reserved"] == "0.000000"
    assert shown["lines_in_use"] == 0


async def test_repeated_stop_charges_once_and_returns_the_first_result(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "a1", "plan": "retail", "balance": "5.00"})
    await app.post("/v1/calls", {"account": "a1", "destination": "447700900123", "call_id": "dup"})
    first = await app.post("/v1/calls/dup/stop", {"duration": 45})
    second = await app.post("/v1/calls/dup/stop", {"duration": 600})
    third = await app.post("/v1/calls/dup/stop", {"duration": 45})
    assert first[0] == second[0] == third[0] == 200
    assert first[1]["cost"] == second[1]["cost"] == "0.198000"
    assert second[1]["duration"] == 45
    assert second[1]["repeated"] is True and third[1]["repeated"] is True
    _, shown = await app.get("/v1/accounts/a1")
    assert shown["balance"] == "4.802000"


async def test_concurrent_duplicate_stops_charge_once(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "a2", "plan": "retail", "balance": "5.00"})
    await app.post("/v1/calls", {"account": "a2", "destination": "447700900123", "call_id": "race"})
    results = await asyncio.gather(
        *[app.post("/v1/calls/race/stop", {"duration": 45}) for _ in range(20)]
    )
    assert all(status == 200 for status, _ in results)
    assert sum(1 for _, body in results if not body["repeated"]) == 1
    _, shown = await app.get("/v1/accounts/a2")
    assert shown["balance"] == "4.802000"


async def test_repeated_authorize_returns_the_same_grant(app: RunningApp) -> None:
    await add_plan(app.services, max_lines=1)
    await app.post("/v1/accounts", {"id": "a3", "plan": "retail", "balance": "2.00"})
    payload = {"account": "a3", "destination": "447700900123", "call_id": "same"}
    first = await app.post("/v1/calls", payload)
    again = await app.post("/v1/calls", payload)
    assert first[0] == 201 and again[0] == 200
    assert again[1]["repeated"] is True
    assert again[1]["max_duration"] == first[1]["max_duration"]
    _, shown = await app.get("/v1/accounts/a3")
    assert shown["lines_in_use"] == 1
    assert shown["reserved"] == first[1]["reserved"]


async def test_cdr_and_ledger_reach_postgresql_and_sum_to_the_balance(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "led", "plan": "retail", "balance": "3.00"})
    await app.post("/v1/accounts/led/topups", {"amount": "2.50", "topup_id": "t-1"})
    for n, seconds in enumerate((45, 61, 0, 300)):
        await app.post(
            "/v1/calls", {"account": "led", "destination": "447700900123", "call_id": f"led-{n}"}
        )
        await app.post(f"/v1/calls/led-{n}/stop", {"duration": seconds})

    async def all_written() -> bool:
        return len(await ledger_rows(app, "led")) == 6

    await eventually(all_written, what="6 ledger rows in PostgreSQL")
    rows = await ledger_rows(app, "led")
    _, shown = await app.get("/v1/accounts/led")
    balance = int(shown["balance"].replace(".", ""))
    assert sum(r["amount"] for r in rows) == balance
    assert [r["kind"] for r in rows] == ["opening", "topup", "call", "call", "call", "call"]
    async with app.services.pool.acquire() as conn:
        cdrs = await conn.fetch(
            "SELECT call_id, duration, billed_seconds, charged, zone FROM cdrs"
            " WHERE account_id = 'led' ORDER BY call_id"
        )
    assert [(c["call_id"], c["duration"], c["billed_seconds"], c["charged"]) for c in cdrs] == [
        ("led-0", 45, 48, 198_000),
        ("led-1", 61, 66, 216_000),
        ("led-2", 0, 0, 0),
        ("led-3", 300, 300, 450_000),
    ]
    assert {c["zone"] for c in cdrs} == {"UK Mobile"}


async def test_topup_with_the_same_id_credits_once(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "t1", "plan": "retail"})
    first = await app.post("/v1/accounts/t1/topups", {"amount": "5.00", "topup_id": "x"})
    again = await app.post("/v1/accounts/t1/topups", {"amount": "5.00", "topup_id": "x"})
    assert first[0] == 201 and again[0] == 200
    assert again[1]["repeated"] is True
    _, shown = await app.get("/v1/accounts/t1")
    assert shown["balance"] == "5.000000"


async def test_refusals_carry_status_and_reason(app: RunningApp) -> None:
    await add_plan(app.services, max_lines=1, min_balance=500_000)
    await app.post("/v1/accounts", {"id": "ok", "plan": "retail", "balance": "5.00"})
    await app.post(
        "/v1/accounts", {"id": "locked", "plan": "retail", "balance": "5.00", "status": "locked"}
    )
    await app.post(
        "/v1/accounts", {"id": "susp", "plan": "retail", "balance": "5.00", "status": "suspended"}
    )
    await app.post("/v1/accounts", {"id": "broke", "plan": "retail"})
    await app.post("/v1/accounts", {"id": "poor", "plan": "retail", "balance": "0.40"})
    await app.post(
        "/v1/accounts", {"id": "low", "plan": "retail", "balance": "0.60", "credit_limit": "0"}
    )

    async def refusal(account: str, destination: str = "447700900123") -> tuple[int, str]:
        status, body = await app.post("/v1/calls", {"account": account, "destination": destination})
        return status, body["error"]["reason"] if status >= 400 else "granted"

    assert await refusal("nobody") == (404, "account_not_found")
    assert await refusal("locked") == (403, "account_locked")
    assert await refusal("susp") == (403, "account_suspended")
    assert await refusal("broke") == (402, "zero_balance")
    assert await refusal("poor") == (402, "below_minimum_balance")
    assert await refusal("ok", "999123") == (403, "destination_not_allowed")
    assert await refusal("ok") == (201, "granted")
    assert await refusal("ok") == (409, "no_free_line")
    # Nothing was reserved by the refusals.
    for account in ("locked", "susp", "broke", "poor"):
        _, shown = await app.get(f"/v1/accounts/{account}")
        assert shown["reserved"] == "0.000000" and shown["lines_in_use"] == 0


async def test_first_block_must_be_covered(app: RunningApp) -> None:
    # Connect fee 0.15 + 30 s at 0.06/min = 0.18 is the least a UK mobile call costs.
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "edge", "plan": "retail", "balance": "0.179999"})
    status, body = await app.post("/v1/calls", {"account": "edge", "destination": "447700900123"})
    assert (status, body["error"]["reason"]) == (402, "insufficient_funds")
    await app.post("/v1/accounts/edge/topups", {"amount": "0.000001"})
    status, body = await app.post("/v1/calls", {"account": "edge", "destination": "447700900123"})
    assert status == 201 and body["max_duration"] == 30


async def test_a_call_running_past_its_grant_never_overdraws(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "over", "plan": "retail", "balance": "1.00"})
    await app.post(
        "/v1/calls", {"account": "over", "destination": "447700900123", "call_id": "long"}
    )
    status, body = await app.post("/v1/calls/long/stop", {"duration": 3600})
    assert status == 200
    assert body["rated_cost"] == "3.750000"
    assert body["cost"] == "1.000000"
    assert body["balance"] == "0.000000"


async def test_stopping_an_unknown_call_is_404(app: RunningApp) -> None:
    status, body = await app.post("/v1/calls/nope/stop", {"duration": 10})
    assert status == 404 and body["error"]["reason"] == "call_not_found"


async def test_a_call_can_be_stopped_by_another_process(app: RunningApp) -> None:
    """A stop that reaches a process which did not authorize the call finds it in Redis."""
    from ocs.charging.lifecycle import CallService

    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "moved", "plan": "retail", "balance": "1.00"})
    await app.post(
        "/v1/calls", {"account": "moved", "destination": "447700900123", "call_id": "elsewhere"}
    )
    other_process = CallService(
        app.services.catalog, app.services.store, app.services.settings, app.services.digests
    )
    charge = await other_process.stop("elsewhere", 45)
    assert (charge.charged, charge.balance, charge.repeated) == (198_000, 802_000, False)
    # The process that authorized it answers a repeated stop with the first result.
    status, body = await app.post("/v1/calls/elsewhere/stop", {"duration": 45})
    assert status == 200 and body["repeated"] is True and body["cost"] == "0.198000"


async def test_a_refused_call_with_a_live_call_id_does_not_hijack_its_stop(
    app: RunningApp,
) -> None:
    from ocs.charging.lifecycle import CallService

    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "owner", "plan": "retail", "balance": "1.00"})
    await app.post("/v1/accounts", {"id": "other", "plan": "retail"})
    await app.post(
        "/v1/calls", {"account": "owner", "destination": "447700900123", "call_id": "shared-id"}
    )
    status, body = await app.post(
        "/v1/calls", {"account": "other", "destination": "447700900123", "call_id": "shared-id"}
    )
    # The id is another account's live call's before anything of this one is looked at.
    assert (status, body["error"]["reason"]) == (409, "call_id_in_use")
    # The stop reaches a process that did not authorize the call: it must still find
    # the owner's call through the call reference.
    other_process = CallService(
        app.services.catalog, app.services.store, app.services.settings, app.services.digests
    )
    charge = await other_process.stop("shared-id", 45)
    assert (charge.account_id, charge.charged, charge.repeated) == ("owner", 198_000, False)


async def test_a_start_or_interim_after_the_stop_is_refused_as_already_stopped(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "ended", "plan": "retail", "balance": "1.00"})
    await app.post(
        "/v1/calls", {"account": "ended", "destination": "447700900123", "call_id": "over"}
    )
    status, _ = await app.post("/v1/calls/over/stop", {"duration": 45})
    assert status == 200
    # A Start that comes after the Stop (reordered): a compiled build answered it 200,
    # started at 0.
    for step, body in (("start", {}), ("update", {"used": 50})):
        status, answer = await app.post(f"/v1/calls/over/{step}", body)
        assert (status, answer["error"]["reason"]) == (409, "call_already_stopped"), step


def another_process(app: RunningApp, **overrides: object) -> CallService:
    """Another ``ocs serve`` worker: its own CallService (and its own kept call records)
    over the same Redis and PostgreSQL."""
    settings = with_overrides(app.services.settings, **overrides)
    return CallService(app.services.catalog, app.services.store, settings, app.services.digests)


async def test_a_reused_call_id_is_charged_at_its_own_rate_where_its_earlier_call_was_kept(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "reuser", "plan": "retail", "balance": "5.00"})
    here = another_process(app, debit_on_interim=True)
    there = another_process(app)
    # Call "x" to the USA (0.005 a minute) authorized here, stopped through the other worker.
    await here.authorize(AuthorizeRequest("reuser", "12125550100", call_id="x"))
    authorized_ms = int(time.time() * 1000)
    first = await there.stop("x", 60)
    assert (first.zone, first.charged) == ("USA", 5_000)
    # Once its stopped result has expired (stop_dedupe_ttl), the switch uses "x" again:
    # a UK Mobile call (0.15 connect, 0.06 a minute, 30/6), authorized on the other worker.
    await app.services.redis.delete(keys.stopped_call("reuser", "x"))

    async def next_millisecond() -> bool:
        # A record tells a reused id's calls apart by their authorization millisecond; a
        # compiled build got here within the first's, and the two were one call.
        return int(time.time() * 1000) > authorized_ms

    await eventually(next_millisecond, what="the clock to pass the first authorization")
    await there.authorize(AuthorizeRequest("reuser", "447700900123", call_id="x"))
    # Its interim and stop reach this worker, which kept the USA call's record.
    progress = await here.update("x", 30)
    assert progress.debited == 180_000  # 0.15 + 30 s at 0.06, not 30 s to the USA
    charge = await here.stop("x", 60)
    assert (charge.zone, charge.charged, charge.repeated) == ("UK Mobile", 210_000, False)
    _, account = await app.get("/v1/accounts/reuser")
    assert (account["balance"], account["lines_in_use"]) == ("4.785000", 0)


async def test_a_stop_without_duration_of_a_reused_call_id_is_timed_from_the_current_call(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "earlier", "plan": "retail", "balance": "5.00"})
    await app.post("/v1/accounts", {"id": "current", "plan": "retail", "balance": "5.00"})
    here, there = another_process(app), another_process(app)
    await here.authorize(AuthorizeRequest("earlier", "447700900123", call_id="y"))
    await there.stop("y", 30)
    # The id is then another account's call, authorized on the other worker and answered
    # 100 s ago; its stop, with no duration, reaches this worker.
    await there.authorize(
        AuthorizeRequest("current", "447700900123", call_id="y"), Origin(wait_for_start=True)
    )
    now = int(time.time())
    await app.services.store.start(
        account_id="current", call_id="y", started_at=now - 100, expires_at=now + 600
    )
    charge = await here.stop("y", None)
    # 100 s (or 101, as the clock turns) billed 102 s: 0.15 + 0.102 = 0.252
    assert (charge.account_id, charge.charged) == ("current", 252_000), charge
    assert 100 <= charge.duration <= 101
    _, account = await app.get("/v1/accounts/current")
    assert (account["balance"], account["lines_in_use"]) == ("4.748000", 0)


async def test_a_caller_id_with_control_characters_is_cleaned_not_stored_raw(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "nul", "plan": "retail", "balance": "1.00"})
    status, _ = await app.post(
        "/v1/calls",
        {
            "account": "nul",
            "destination": "447700900123",
            "caller": "4930\x07123",
            "call_id": "nul-1",
        },
    )
    assert status == 201
    await app.post("/v1/calls/nul-1/stop", {"duration": 45})

    async def stored() -> bool:
        async with app.services.pool.acquire() as conn:
            return await conn.fetchval("SELECT caller FROM cdrs WHERE call_id = 'nul-1'") == (
                "4930123"
            )

    await eventually(stored, what="the CDR with a cleaned caller id")
    # A NUL cannot be stored at all: refused by name before anything is reserved.
    status, body = await app.post(
        "/v1/calls",
        {"account": "nul", "destination": "447700900123", "caller": "49\x00", "call_id": "n2"},
    )
    assert (status, body["error"]["field"]) == (400, "caller")


async def test_a_balance_never_grows_past_exact_lua_arithmetic(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "rich", "plan": "retail", "balance": "999999999.000000"})
    status, body = await app.post("/v1/accounts/rich/topups", {"amount": "1.000000"})
    assert status == 201 and body["balance"] == "1000000000.000000"
    status, body = await app.post("/v1/accounts/rich/topups", {"amount": "0.000001"})
    assert (status, body["error"]["field"]) == (400, "amount")
    _, shown = await app.get("/v1/accounts/rich")
    assert shown["balance"] == "1000000000.000000"
