"""No overdraft: concurrent authorizations on one account grant exactly what it can pay for."""

import asyncio

from tests.conftest import RunningApp, add_plan

# 0.01/min, 60/60: a 10-minute cap costs 0.10 per call.
FLAT_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.010,0,60,60
"""


async def test_200_concurrent_calls_grant_exactly_the_affordable_number(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=500)
    # 1.05 buys ten full 10-minute grants (0.10 each) and one of 5 minutes; 12 lines.
    await app.post(
        "/v1/accounts", {"id": "busy", "plan": "retail", "balance": "1.05", "max_lines": 12}
    )
    results = await asyncio.gather(
        *[
            app.post(
                "/v1/calls", {"account": "busy", "destination": "4930123456", "call_id": f"c{n}"}
            )
            for n in range(200)
        ]
    )
    granted = [body for status, body in results if status == 201]
    refused = [body["error"]["reason"] for status, body in results if status != 201]
    assert len(granted) == 11
    assert sorted(g["max_duration"] for g in granted) == [300] + [600] * 10
    # The 12th line is free, but the 11 live calls hold every cent: the refusal says so.
    assert set(refused) == {"funds_held_by_live_calls"}

    _, shown = await app.get("/v1/accounts/busy")
    assert shown["available"] == "0.000000"
    assert shown["lines_in_use"] == 11

    # Every call runs far past its grant: charges stop at what the account holds.
    stops = await asyncio.gather(
        *[app.post(f"/v1/calls/{g['call_id']}/stop", {"duration": 7200}) for g in granted]
    )
    assert all(status == 200 for status, _ in stops)
    _, shown = await app.get("/v1/accounts/busy")
    assert shown["balance"] == "0.000000"
    assert shown["reserved"] == "0.000000"
    assert shown["lines_in_use"] == 0


async def test_lines_limit_holds_under_concurrency(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=3)
    await app.post("/v1/accounts", {"id": "lines", "plan": "retail", "balance": "100.00"})
    results = await asyncio.gather(
        *[
            app.post("/v1/calls", {"account": "lines", "destination": "4930123456"})
            for _ in range(200)
        ]
    )
    statuses = [status for status, _ in results]
    assert statuses.count(201) == 3
    assert {body["error"]["reason"] for status, body in results if status != 201} == {
        "no_free_line"
    }


async def test_credit_limit_is_the_floor(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=100)
    await app.post(
        "/v1/accounts",
        {"id": "post", "plan": "retail", "balance": "0", "credit_limit": "0.50", "max_lines": 100},
    )
    results = await asyncio.gather(
        *[
            app.post("/v1/calls", {"account": "post", "destination": "4930123456"})
            for _ in range(50)
        ]
    )
    granted = [body for status, body in results if status == 201]
    assert len(granted) == 5
    await asyncio.gather(
        *[app.post(f"/v1/calls/{g['call_id']}/stop", {"duration": 86_400}) for g in granted]
    )
    _, shown = await app.get("/v1/accounts/post")
    assert shown["balance"] == "-0.500000"
