"""Quota mode: a call is granted slices of ``quota`` seconds; each interim report debits
what was used and reserves the next slice, and the stop charges the rest, so that the
call costs exactly what one call of its whole duration is rated.

Rates (tests/conftest.py RETAIL_DECK): UK Mobile 0.06 a minute, 0.15 connect fee,
30/6 billing: cost(300) = 0.45, cost(600) = 0.75, cost(700) = 0.852 (702 s billed).
"""

import asyncio
import time
from datetime import UTC, datetime

from ocs.balances import keys
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest
from ocs.rating.rates import Rate, cost
from tests.conftest import RunningApp, account, add_plan, eventually
from tests.helpers import send

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


async def test_a_call_of_an_account_suspended_mid_call_gets_no_new_slice(
    app: RunningApp,
) -> None:
    """Suspended (or locked by an operator) during the call: the call keeps the slice it
    holds and gets no other, and is charged for exactly what it used."""
    await add_plan(app.services, max_lines=2)
    rate = uk_mobile_rate(app)
    for account_id, status_set in (("s1", "suspended"), ("s2", "locked")):
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "10.00"})
        call_id = f"held-{account_id}"
        status, grant = await app.post(
            "/v1/calls",
            {"account": account_id, "destination": UK_MOBILE, "call_id": call_id, "quota": 60},
        )
        assert (status, grant["max_duration"], grant["final"]) == (201, 60, False), grant
        status, _ = await app.post(f"/v1/calls/{call_id}/start", {})
        assert status == 200
        status, changed = await send(
            app, "PATCH", f"/v1/accounts/{account_id}", {"status": status_set}
        )
        assert (status, changed["status"]) == (200, status_set), changed

        # Before, this report was granted a further 60 s (115, not final), and every
        # later one as many again: the suspension reached only new calls.
        status, progress = await app.post(f"/v1/calls/{call_id}/update", {"used": 55})
        assert status == 200, progress
        assert (progress["granted"], progress["final"], progress["remaining"]) == (60, True, 5)
        assert progress["debited"] == "0.210000"  # 55 s billed as 60 (30/6)
        view = await account(app, account_id)
        # The first slice is debited whole and nothing more is held.
        assert (view["balance"], view["reserved"]) == ("9.790000", "0.000000")

        status, stopped = await app.post(f"/v1/calls/{call_id}/stop", {"duration": 60})
        assert status == 200, stopped
        assert micro(stopped["cost"]) == cost(rate, 60) == 210_000
        view = await account(app, account_id)
        assert (view["balance"], view["reserved"], view["lines_in_use"]) == (
            "9.790000",
            "0.000000",
            0,
        )
        status, refused = await app.post(
            "/v1/calls", {"account": account_id, "destination": UK_MOBILE}
        )
        assert (status, refused["error"]["reason"]) == (403, f"account_{status_set}")

        async def charged(call_id: str = call_id) -> bool:
            async with app.services.pool.acquire() as conn:
                return (
                    await conn.fetchval("SELECT count(*) FROM cdrs WHERE call_id = $1", call_id)
                    == 1
                )

        await eventually(charged, what="the call's CDR in PostgreSQL")
        async with app.services.pool.acquire() as conn:
            debited = await conn.fetchval(
                "SELECT sum(amount) FROM ledger WHERE reference = $1", call_id
            )
            billed = await conn.fetchval("SELECT charged FROM cdrs WHERE call_id = $1", call_id)
        assert (debited, billed) == (-210_000, 210_000)


async def test_a_card_expired_mid_call_gets_no_new_slice(app: RunningApp) -> None:
    """A card whose expiry passes during a sliced call: the call ends at the slice it
    holds, charged for what it used."""
    await add_plan(app.services)
    rate = uk_mobile_rate(app)
    soon = datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    await app.post(
        "/v1/accounts", {"id": "card-x", "plan": "retail", "balance": "10.00", "expires_at": soon}
    )
    calls: CallService = app.services.calls
    grant = await calls.authorize(AuthorizeRequest("card-x", UK_MOBILE, call_id="ex", quota=60))
    assert (grant.max_duration, grant.final) == (60, False)
    # Its expiry passes now, during the call (written rather than waited for).
    await app.services.redis.hset(keys.account("card-x"), "expires", int(time.time()))

    progress = await calls.update("ex", 30)
    # Before: granted 90, not final.
    assert (progress.debited, progress.granted, progress.final, progress.exhausted) == (
        180_000,
        60,
        True,
        True,
    )
    charge = await calls.stop("ex", 42)
    assert (charge.rated, charge.charged) == (cost(rate, 42), 192_000)
    view = await account(app, "card-x")
    assert (view["balance"], view["reserved"]) == ("9.808000", "0.000000")


async def test_a_critical_balance_lock_lets_a_live_call_go_on_slicing(app: RunningApp) -> None:
    """A critical-balance lock refuses new calls only: a live sliced call keeps getting
    slices while the funds last (the lock's documented rule, kept)."""
    await add_plan(app.services, max_lines=2)
    await app.post("/v1/accounts", {"id": "c1", "plan": "retail", "balance": "1.00"})
    status, _ = await send(app, "PATCH", "/v1/accounts/c1", {"critical_balance": "0.90"})
    assert status == 200
    calls: CallService = app.services.calls
    await calls.authorize(AuthorizeRequest("c1", UK_MOBILE, call_id="crit", quota=60))

    # The report's debit (0.21) takes the balance to 0.79, under 0.90: the account locks,
    # and the call is still granted its next slice.
    progress = await calls.update("crit", 60)
    assert (progress.debited, progress.granted, progress.final) == (210_000, 120, False)
    status, refused = await app.post("/v1/calls", {"account": "c1", "destination": UK_MOBILE})
    assert (status, refused["error"]["reason"]) == (403, "account_locked")
    progress = await calls.update("crit", 120)
    assert (progress.debited, progress.granted, progress.final) == (270_000, 180, False)
    charge = await calls.stop("crit", 150)
    assert charge.charged == 300_000
