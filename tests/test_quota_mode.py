"""Quota mode: a call is granted slices of ``quota`` seconds; each interim report debits
what was used and reserves the next slice, and the stop charges the rest, so that the
call costs exactly what one call of its whole duration is rated.

Rates (tests/conftest.py RETAIL_DECK): UK Mobile 0.06 a minute, 0.15 connect fee,
30/6 billing: cost(300) = 0.45, cost(600) = 0.75, cost(700) = 0.852 (702 s billed).
"""

import asyncio

from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest
from ocs.rating.rates import Rate, cost
from tests.conftest import RunningApp, account, add_plan, eventually

UK_MOBILE = "447700900123"


def uk_mobile_rate(app: RunningApp) -> Rate:
    match = app.services.catalog.snapshot.tariff_for("retail", UK_MOBILE)
    assert match is not None
    return match[1].rate


def micro(amount: str) -> int:
    units, _, fraction = amount.lstrip("-").partition(".")
    value = int(units) * 1_000_000 + int(fraction.ljust(6, "0"))
    return -value if amount.startswith("-") else value


async def test_quota_slices_sum_to_the_cost_of_the_whole_call(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "q1", "plan": "retail", "balance": "10.00"})
    rate = uk_mobile_rate(app)

    status, grant = await app.post(
        "/v1/calls",
        {"account": "q1", "destination": UK_MOBILE, "call_id": "slice", "quota": 300},
    )
    assert status == 201, grant
    assert (grant["max_duration"], grant["reserved"], grant["final"]) == (300, "0.450000", False)
    view = await account(app, "q1")
    assert (view["balance"], view["reserved"]) == ("10.000000", "0.450000")

    status, first = await app.post("/v1/calls/slice/update", {"used": 300})
    assert status == 200, first
    assert (first["debited"], first["granted"], first["final"]) == ("0.450000", 600, False)
    view = await account(app, "q1")
    assert micro(view["balance"]) == 10_000_000 - cost(rate, 300)
    assert micro(view["reserved"]) == cost(rate, 600) - cost(rate, 300)  # the next slice

    # A repeated report debits nothing more.
    status, repeated = await app.post("/v1/calls/slice/update", {"used": 300})
    assert (status, repeated["debited"], repeated["granted"]) == (200, "0.450000", 600)
    assert micro((await account(app, "q1"))["balance"]) == 10_000_000 - cost(rate, 300)

    status, second = await app.post("/v1/calls/slice/update", {"used": 600})
    assert status == 200, second
    assert (second["debited"], second["granted"], second["final"]) == ("0.750000", 900, False)
    view = await account(app, "q1")
    assert micro(view["balance"]) == 10_000_000 - cost(rate, 600)

    status, stopped = await app.post("/v1/calls/slice/stop", {"duration": 700})
    assert status == 200, stopped
    whole = cost(rate, 700)
    assert whole == 852_000
    assert micro(stopped["cost"]) == micro(stopped["rated_cost"]) == whole
    assert stopped["billed_seconds"] == 702
    view = await account(app, "q1")
    assert micro(view["balance"]) == 10_000_000 - whole
    assert (view["reserved"], view["lines_in_use"]) == ("0.000000", 0)

    async def written() -> bool:
        async with app.services.pool.acquire() as conn:
            n = await conn.fetchval("SELECT count(*) FROM ledger WHERE reference = 'slice'")
        return n == 3

    await eventually(written, what="two interim debits and the stop in the ledger")
    async with app.services.pool.acquire() as conn:
        moves = await conn.fetch(
            "SELECT kind, amount FROM ledger WHERE reference = 'slice' ORDER BY occurred_at,"
            " entry_id"
        )
        cdr = await conn.fetchrow(
            "SELECT duration, billed_seconds, rated_cost, charged FROM cdrs WHERE call_id = 'slice'"
        )
    assert [(m["kind"], m["amount"]) for m in moves] == [
        ("interim", -cost(rate, 300)),
        ("interim", -(cost(rate, 600) - cost(rate, 300))),
        ("call", -(whole - cost(rate, 600))),
    ]
    assert sum(m["amount"] for m in moves) == -whole
    assert (cdr["duration"], cdr["billed_seconds"], cdr["rated_cost"], cdr["charged"]) == (
        700,
        702,
        whole,
        whole,
    )


async def test_the_slice_funds_cannot_cover_is_final(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "q2", "plan": "retail", "balance": "1.00"})
    calls: CallService = app.services.calls
    rate = uk_mobile_rate(app)

    grant = await calls.authorize(AuthorizeRequest("q2", UK_MOBILE, call_id="thin", quota=300))
    assert (grant.max_duration, grant.reserved, grant.final) == (300, 450_000, False)
    progress = await calls.update("thin", 300)
    assert (progress.debited, progress.granted, progress.final) == (450_000, 600, False)
    # 0.25 is left after 600 s: the last slice reaches 846 s (0.996), not 900.
    progress = await calls.update("thin", 600)
    assert (progress.debited, progress.granted, progress.final) == (750_000, 846, True)
    assert cost(rate, 846) <= 1_000_000 < cost(rate, 852)
    view = await account(app, "q2")
    assert (view["balance"], view["reserved"], view["available"]) == (
        "0.250000",
        "0.250000",
        "0.000000",
    )
    charge = await calls.stop("thin", 846)
    assert (charge.rated, charge.charged, charge.balance) == (996_000, 996_000, 4_000)


async def test_a_quota_grant_smaller_than_the_funds_is_not_final(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "q3", "plan": "retail", "balance": "0.40"})
    calls: CallService = app.services.calls
    # 0.40 cannot pay a 300 s slice (0.45): the first grant is already the last.
    grant = await calls.authorize(AuthorizeRequest("q3", UK_MOBILE, call_id="short", quota=300))
    assert (grant.max_duration, grant.reserved, grant.final) == (246, 400_000, True)


async def test_two_quota_calls_share_one_balance(app: RunningApp) -> None:
    await add_plan(app.services, max_lines=3)
    await app.post("/v1/accounts", {"id": "q4", "plan": "retail", "balance": "1.00"})
    calls: CallService = app.services.calls

    # Without quota, one call holds the whole balance and leaves nothing to a second.
    await app.post("/v1/accounts", {"id": "whole", "plan": "retail", "balance": "1.00"})
    hog = await calls.authorize(AuthorizeRequest("whole", UK_MOBILE, call_id="hog"))
    assert (hog.max_duration, hog.reserved) == (846, 1_000_000)
    status, body = await app.post("/v1/calls", {"account": "whole", "destination": UK_MOBILE})
    # Refused for the funds the live call holds, not for "no funds": it says so.
    assert (status, body["error"]["reason"], body["error"]["live_calls"]) == (
        402,
        "funds_held_by_live_calls",
        1,
    )

    # With a quota, each call holds a slice: both go through.
    a, b = await asyncio.gather(
        calls.authorize(AuthorizeRequest("q4", UK_MOBILE, call_id="qa", quota=300)),
        calls.authorize(AuthorizeRequest("q4", UK_MOBILE, call_id="qb", quota=300)),
    )
    assert (a.max_duration, a.reserved) == (300, 450_000)
    assert (b.max_duration, b.reserved) == (300, 450_000)
    view = await account(app, "q4")
    assert (view["reserved"], view["available"], view["lines_in_use"]) == (
        "0.900000",
        "0.100000",
        2,
    )

    # The first to report gets what is left for its next slice; the second, nothing more.
    pa = await calls.update("qa", 300)
    assert (pa.debited, pa.granted, pa.final) == (450_000, 396, True)
    pb = await calls.update("qb", 300)
    assert (pb.debited, pb.granted, pb.final) == (450_000, 300, True)
    view = await account(app, "q4")
    assert (view["balance"], view["reserved"], view["available"]) == (
        "0.100000",
        "0.100000",
        "0.000000",
    )

    ca = await calls.stop("qa", 396)
    cb = await calls.stop("qb", 300)
    assert (ca.charged, cb.charged) == (546_000, 450_000)
    view = await account(app, "q4")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == ("0.004000", "0.000000", 0)
