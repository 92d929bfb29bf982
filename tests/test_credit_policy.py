"""Credit policy of an account: critical balance lock, minimum balance to call, funds
committed to the plan's recurring fee, and the postpaid credit limit as a floor.

Rates: PER_SECOND_DECK prices Germany at 0.60 a minute, billed by the second
(0.01 a second, no connect fee); FLAT_DECK at 0.01 a minute on a 60/60 grid.
"""

import asyncio
from typing import Any

from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest
from tests.conftest import RunningApp, account, add_plan, eventually

PER_SECOND_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.600,0,1,1
"""
FLAT_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.010,0,60,60
"""
GERMANY = "4930123456"


async def send(app: RunningApp, method: str, path: str, payload: object = None) -> tuple[int, Any]:
    response = await app.client.request(method, path, json=payload)
    return response.status, await response.json()


async def set_plan_policy(app: RunningApp, **policy: object) -> dict[str, Any]:
    status, body = await send(app, "PUT", "/v1/plans/retail/policy", policy)
    assert status == 200, body
    return body


async def new_account(app: RunningApp, account_id: str, **fields: object) -> dict[str, Any]:
    status, body = await app.post("/v1/accounts", {"id": account_id, "plan": "retail", **fields})
    assert status == 201, body
    return body


async def call(app: RunningApp, account_id: str, call_id: str | None = None) -> tuple[int, dict]:
    payload: dict[str, object] = {"account": account_id, "destination": GERMANY}
    if call_id is not None:
        payload["call_id"] = call_id
    return await app.post("/v1/calls", payload)


async def stop(app: RunningApp, call_id: str, duration: int) -> dict[str, Any]:
    status, body = await app.post(f"/v1/calls/{call_id}/stop", {"duration": duration})
    assert status == 200, body
    return body


async def topup(app: RunningApp, account_id: str, amount: str) -> dict[str, Any]:
    status, body = await app.post(f"/v1/accounts/{account_id}/topups", {"amount": amount})
    assert status == 201, body
    return body


def refusal(result: tuple[int, dict]) -> tuple[int, str]:
    status, body = result
    assert status != 201, body
    return status, body["error"]["reason"]


# -- critical balance ----------------------------------------------------------------


async def test_critical_balance_is_copied_from_the_plan_and_overridden_per_account(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=30)
    policy = await set_plan_policy(app, critical_balance="0.50")
    assert policy["critical_balance"] == "0.500000"
    first = await new_account(app, "crit-1", balance="1.00")
    assert (first["critical_balance"], first["status"], first["locked_by"]) == (
        "0.500000",
        "active",
        None,
    )
    # A later plan default applies to accounts created later; earlier ones keep theirs.
    await set_plan_policy(app, critical_balance="0.20")
    assert (await new_account(app, "crit-2"))["critical_balance"] == "0.200000"
    assert (await account(app, "crit-1"))["critical_balance"] == "0.500000"

    status, body = await send(app, "PATCH", "/v1/accounts/crit-1", {"critical_balance": "0.30"})
    assert status == 200, body
    assert body["critical_balance"] == "0.300000"
    # 0.40 left after two 30 s calls: above 0.30, so still active.
    assert (await call(app, "crit-1", "c-1"))[0] == 201
    await stop(app, "c-1", 30)
    await call(app, "crit-1", "c-2")
    stopped = await stop(app, "c-2", 30)
    assert stopped["balance"] == "0.400000"
    view = await account(app, "crit-1")
    assert (view["status"], view["locked_by"]) == ("active", None)
    async with app.services.pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT a.critical_balance AS account, p.critical_balance AS plan"
            " FROM accounts a JOIN plans p ON p.id = a.plan_id WHERE a.id = 'crit-1'"
        )
    assert (stored["account"], stored["plan"]) == (300_000, 200_000)

    status, body = await send(app, "PATCH", "/v1/accounts/crit-1", {"critical_balance": None})
    assert status == 200, body
    assert body["critical_balance"] is None


async def test_a_stop_below_the_critical_balance_locks_and_a_topup_back_unlocks(
    app: RunningApp,
) -> None:
    # 30 s calls: each reserves 0.30.
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=30, max_lines=3)
    await set_plan_policy(app, critical_balance="0.50")
    await new_account(app, "crit", balance="1.00")

    assert (await call(app, "crit", "a"))[0] == 201
    assert (await call(app, "crit", "b"))[0] == 201
    assert (await stop(app, "a", 30))["balance"] == "0.700000"
    assert (await account(app, "crit"))["status"] == "active"
    assert (await call(app, "crit", "c"))[0] == 201  # reserves 0.30 of the 0.40 free

    # 0.45 left: below 0.50, the account locks.
    assert (await stop(app, "b", 25))["balance"] == "0.450000"
    view = await account(app, "crit")
    assert (view["status"], view["locked_by"]) == ("locked", "critical")
    assert refusal(await call(app, "crit")) == (403, "account_locked")
    # A call already live goes on and is charged as usual.
    assert (await stop(app, "c", 10))["balance"] == "0.350000"

    # A top-up short of the critical balance leaves it locked ...
    assert (await topup(app, "crit", "0.10"))["balance"] == "0.450000"
    assert (await account(app, "crit"))["status"] == "locked"
    assert refusal(await call(app, "crit")) == (403, "account_locked")
    # ... one back to it unlocks it.
    assert (await topup(app, "crit", "0.05"))["balance"] == "0.500000"
    view = await account(app, "crit")
    assert (view["status"], view["locked_by"]) == ("active", None)
    assert (await call(app, "crit"))[0] == 201

    async def ledger_complete() -> bool:
        async with app.services.pool.acquire() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM ledger WHERE account_id = 'crit'")
        return rows == 6  # opening, 3 calls, 2 top-ups

    await eventually(ledger_complete, what="the ledger of the locked account")
    async with app.services.pool.acquire() as conn:
        total = await conn.fetchval("SELECT sum(amount) FROM ledger WHERE account_id = 'crit'")
    assert total == 500_000


async def test_a_balance_left_exactly_at_the_critical_balance_stays_active(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=60)
    await set_plan_policy(app, critical_balance="0.50")
    await new_account(app, "edge", balance="1.00")
    await call(app, "edge", "e-1")
    assert (await stop(app, "e-1", 50))["balance"] == "0.500000"
    assert (await account(app, "edge"))["status"] == "active"
    await call(app, "edge", "e-2")
    assert (await stop(app, "e-2", 1))["balance"] == "0.490000"
    assert (await account(app, "edge"))["locked_by"] == "critical"


async def test_an_interim_debit_below_the_critical_balance_locks(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=600, max_lines=2)
    await set_plan_policy(app, critical_balance="0.50")
    await new_account(app, "slices", balance="1.00")
    status, grant = await app.post(
        "/v1/calls",
        {"account": "slices", "destination": GERMANY, "call_id": "q-1", "quota": 20},
    )
    assert status == 201, grant
    status, progress = await app.post("/v1/calls/q-1/update", {"used": 60})  # debits 0.60
    assert status == 200, progress
    assert progress["debited"] == "0.600000"
    view = await account(app, "slices")
    assert (view["balance"], view["status"], view["locked_by"]) == (
        "0.400000",
        "locked",
        "critical",
    )
    assert refusal(await call(app, "slices")) == (403, "account_locked")
    stopped = await stop(app, "q-1", 65)
    assert (stopped["cost"], stopped["balance"]) == ("0.650000", "0.350000")


async def test_an_operators_lock_is_not_lifted_by_a_topup(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=60)
    await set_plan_policy(app, critical_balance="0.50")
    await new_account(app, "held", balance="1.00")
    status, body = await send(app, "PATCH", "/v1/accounts/held", {"status": "locked"})
    assert status == 200, body
    assert (body["status"], body["locked_by"]) == ("locked", None)
    await topup(app, "held", "5.00")
    assert (await account(app, "held"))["status"] == "locked"
    assert refusal(await call(app, "held")) == (403, "account_locked")

    # An operator's decision also lifts a critical lock, whatever the balance.
    await send(app, "PATCH", "/v1/accounts/held", {"status": "active"})
    await call(app, "held", "h-1")
    await stop(app, "h-1", 60)
    await call(app, "held", "h-2")
    await stop(app, "h-2", 60)
    await call(app, "held", "h-3")
    assert (await stop(app, "h-3", 60))["balance"] == "4.200000"
    await call(app, "held", "h-4")
    await send(app, "PATCH", "/v1/accounts/held", {"critical_balance": "5.00"})
    await stop(app, "h-4", 1)
    assert (await account(app, "held"))["locked_by"] == "critical"
    status, body = await send(app, "PATCH", "/v1/accounts/held", {"status": "active"})
    assert (body["status"], body["locked_by"]) == ("active", None)
    assert (await call(app, "held"))[0] == 201


# -- minimum balance -----------------------------------------------------------------


async def test_minimum_balance_to_call(app: RunningApp) -> None:
    await add_plan(
        app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=50, min_balance=500_000
    )
    poor = await new_account(app, "poor", balance="0.49")
    assert poor["min_balance"] == "0.500000"  # the plan's, copied
    assert refusal(await call(app, "poor")) == (402, "below_minimum_balance")
    await topup(app, "poor", "0.01")
    assert (await call(app, "poor"))[0] == 201

    # Reservations count: each call holds 0.10, and a call needs 0.50 available to start.
    await new_account(app, "busy", balance="1.00", max_lines=50)
    results = await asyncio.gather(*[call(app, "busy") for _ in range(20)])
    assert sum(1 for status, _ in results if status == 201) == 6  # at 1.00, 0.90 ... 0.50
    # The live calls' holds keep the available funds below the minimum: said so.
    assert {body["error"]["reason"] for status, body in results if status != 201} == {
        "funds_held_by_live_calls"
    }
    assert (await account(app, "busy"))["available"] == "0.400000"

    # The account's own minimum overrides the plan's.
    status, body = await send(app, "PATCH", "/v1/accounts/busy", {"min_balance": "0.10"})
    assert status == 200, body
    assert body["min_balance"] == "0.100000"
    results = await asyncio.gather(*[call(app, "busy") for _ in range(20)])
    assert sum(1 for status, _ in results if status == 201) == 4  # at 0.40 ... 0.10
    assert (await account(app, "busy"))["available"] == "0.000000"


# -- committed funds -----------------------------------------------------------------


async def test_funds_committed_to_the_recurring_fee_are_not_available(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=14_400, max_lines=5)
    await set_plan_policy(app, recurring_fee="3.00", lock_prorated=True)
    view = await new_account(app, "subscriber", balance="5.00")
    assert (view["committed"], view["available"]) == ("3.000000", "2.000000")

    status, grant = await call(app, "subscriber", "s-1")
    assert status == 201, grant
    assert (grant["reserved"], grant["max_duration"]) == ("2.000000", 200)
    # The live call holds the available funds: the refusal says so.
    assert refusal(await call(app, "subscriber")) == (402, "funds_held_by_live_calls")
    stopped = await stop(app, "s-1", 200)
    assert stopped["balance"] == "3.000000"
    view = await account(app, "subscriber")
    assert (view["available"], view["committed"]) == ("0.000000", "3.000000")
    assert refusal(await call(app, "subscriber")) == (402, "zero_balance")
    await topup(app, "subscriber", "1.00")
    status, grant = await call(app, "subscriber")
    assert (status, grant["max_duration"]) == (201, 100)

    # Below the committed amount, nothing is available at all.
    view = await new_account(app, "short", balance="2.50")
    assert view["available"] == "-0.500000"
    assert refusal(await call(app, "short")) == (402, "zero_balance")

    # Without lock_prorated the fee is not held back.
    await set_plan_policy(app, recurring_fee="3.00", lock_prorated=False)
    view = await new_account(app, "free", balance="5.00")
    assert (view["committed"], view["available"]) == ("0.000000", "5.000000")
    status, grant = await call(app, "free")
    assert (status, grant["max_duration"]) == (201, 500)


# -- postpaid credit limit -------------------------------------------------------------


async def test_concurrent_postpaid_calls_never_pass_the_credit_limit(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=100)
    await new_account(app, "post", credit_limit="1.00", max_lines=100)
    results = await asyncio.gather(*[call(app, "post") for _ in range(60)])
    granted = [body for status, body in results if status == 201]
    assert len(granted) == 10  # 0.10 each
    assert {body["error"]["reason"] for status, body in results if status != 201} == {
        "funds_held_by_live_calls"
    }
    # Every call runs a day: charges stop at the credit limit.
    await asyncio.gather(*[stop(app, g["call_id"], 86_400) for g in granted])
    view = await account(app, "post")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == ("-1.000000", "0.000000", 0)
    assert refusal(await call(app, "post")) == (402, "credit_limit_reached")

    async def all_cdrs() -> bool:
        async with app.services.pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM cdrs WHERE account_id = 'post'") == 10

    await eventually(all_cdrs, what="ten CDRs")
    async with app.services.pool.acquire() as conn:
        charged = await conn.fetchval("SELECT sum(charged) FROM cdrs WHERE account_id = 'post'")
        rated = await conn.fetchval("SELECT sum(rated_cost) FROM cdrs WHERE account_id = 'post'")
    assert (charged, rated) == (1_000_000, 10 * 14_400_000)


async def test_a_lowered_credit_limit_is_the_floor_for_calls_already_live(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=600, max_lines=5)
    await new_account(app, "owed", credit_limit="1.00")
    status, grant = await call(app, "owed", "o-1")
    assert (status, grant["reserved"], grant["max_duration"]) == (201, "1.000000", 100)
    status, body = await send(app, "PATCH", "/v1/accounts/owed", {"credit_limit": "0.20"})
    assert status == 200, body
    assert body["credit_limit"] == "0.200000"
    stopped = await stop(app, "o-1", 100)
    assert (stopped["rated_cost"], stopped["cost"], stopped["balance"]) == (
        "1.000000",
        "0.200000",
        "-0.200000",
    )


async def test_quota_slices_never_pass_the_credit_limit(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=600, max_lines=5)
    await new_account(app, "sliced", credit_limit="0.50")
    calls: CallService = app.services.calls
    grant = await calls.authorize(AuthorizeRequest("sliced", GERMANY, call_id="sl-1", quota=30))
    assert (grant.max_duration, grant.reserved, grant.final) == (30, 300_000, False)
    progress = await calls.update("sl-1", 30)
    assert (progress.debited, progress.granted, progress.final) == (300_000, 50, True)
    progress = await calls.update("sl-1", 80)  # ran past its grant: debits what is left
    assert progress.debited == 500_000
    charge = await calls.stop("sl-1", 90)
    assert (charge.rated, charge.charged, charge.balance) == (900_000, 500_000, -500_000)
