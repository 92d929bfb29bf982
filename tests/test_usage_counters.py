"""Usage counters (bundles of seconds) end to end: defined over HTTP, held and used
atomically by authorize and stop in Redis, reset per cycle, charged in the CDR.

Rates used (tests/conftest.py RETAIL_DECK, EUR): Germany (49) 0.012 a minute,
1/1 seconds, no connect fee: 200 micro-units a second, so ``cost(d) = 200 * d``;
UK Mobile (447) 0.060 a minute, 30/6, connect fee 0.150; UK Fixed (44) 0.010 a
minute, 60/60.
"""

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ocs.charging.janitor import Janitor
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.rating.rates import (
    CounterSplit,
    Rate,
    Tier,
    cost,
    cost_with_counter,
    max_duration,
    max_duration_with_counter,
)
from tests.conftest import RunningApp, add_plan, eventually
from tests.helpers import new_account

GERMANY = "4930901820"
UK_MOBILE = "447700900123"
UK_FIXED = "442079460000"
PER_SECOND_DE = 200  # micro-units a second to Germany


# -- helpers ----------------------------------------------------------------------


async def define_counter(app: RunningApp, plan: str = "retail", **fields: Any) -> dict[str, Any]:
    """Define a counter over HTTP and wait until the catalog snapshot has it as defined."""
    body = {"price_per_minute": "0.00", **fields}
    status, counter = await app.post(f"/v1/plans/{plan}/counters", body)
    assert status == 201, counter

    async def loaded() -> bool:
        for found in app.services.catalog.snapshot.counters_for(plan):
            if found.id == counter["id"]:
                return (
                    found.seconds == counter["seconds"]
                    and sorted(found.zones) == counter["zones"]
                    and found.reject_on_threshold == counter["reject_on_threshold"]
                    and found.carryover == counter["carryover"]
                    and found.mandatory == counter["mandatory"]
                    and found.active == counter["active"]
                )
        return False

    await eventually(loaded, what=f"counter {counter['id']} in the catalog snapshot")
    return counter


async def authorize(
    app: RunningApp, account_id: str, destination: str, call_id: str
) -> tuple[int, dict[str, Any]]:
    return await app.post(
        "/v1/calls", {"account": account_id, "destination": destination, "call_id": call_id}
    )


async def granted(
    app: RunningApp, account_id: str, destination: str, call_id: str
) -> dict[str, Any]:
    status, grant = await authorize(app, account_id, destination, call_id)
    assert status == 201, grant
    return grant


async def stop(app: RunningApp, call_id: str, duration: int) -> dict[str, Any]:
    status, stopped = await app.post(f"/v1/calls/{call_id}/stop", {"duration": duration})
    assert status == 200, stopped
    assert stopped["repeated"] is False
    return stopped


async def counters_of(app: RunningApp, account_id: str) -> dict[str, dict[str, int]]:
    """counter id -> {limit, used, held, left} as GET /v1/accounts/{id}/counters shows it."""
    status, body = await app.get(f"/v1/accounts/{account_id}/counters")
    assert status == 200, body
    return {
        c["counter"]: {k: c[k] for k in ("limit", "used", "held", "left")} for c in body["counters"]
    }


async def balance_of(app: RunningApp, account_id: str) -> str:
    status, body = await app.get(f"/v1/accounts/{account_id}")
    assert status == 200, body
    return body["balance"]


async def cdrs_of(app: RunningApp, account_id: str, count: int) -> dict[str, dict[str, Any]]:
    """The account's CDRs once the ledger writer has put ``count`` of them in PostgreSQL."""
    found: list[dict[str, Any]] = []

    async def written() -> bool:
        async with app.services.pool.acquire() as conn:
            found[:] = [
                dict(r)
                for r in await conn.fetch("SELECT * FROM cdrs WHERE account_id = $1", account_id)
            ]
        return len(found) >= count

    await eventually(written, what=f"{count} CDRs of {account_id} in PostgreSQL")
    assert len(found) == count, found
    return {row["call_id"]: row for row in found}


# The counters most tests define: every account's 600 s to Germany, and an optional
# 600 s to UK mobiles that an account buys.
DE_600: dict[str, Any] = {"id": "de-600", "seconds": 600, "zones": ["Germany"]}
UK_OPT: dict[str, Any] = {
    "id": "uk-opt",
    "seconds": 600,
    "zones": ["UK Mobile"],
    "mandatory": False,
}


async def counter_plan(
    app: RunningApp, counters: list[dict[str, Any]], accounts: dict[str, str], **plan: Any
) -> None:
    """The retail plan (``plan``: add_plan's overrides), its ``counters`` defined over
    HTTP, then the ``accounts`` (id -> balance) opened on it."""
    await add_plan(app.services, **plan)
    for counter in counters:
        await define_counter(app, **counter)
    for account_id, amount in accounts.items():
        await new_account(app, account_id, amount)


async def counter_is(
    app: RunningApp,
    account_id: str,
    counter_id: str,
    *,
    limit: int,
    used: int,
    held: int,
    left: int,
) -> None:
    """Asserts the account's counter, as the API shows it, is as given (seconds)."""
    shown = (await counters_of(app, account_id))[counter_id]
    assert shown == {"limit": limit, "used": used, "held": held, "left": left}


async def refused_with(
    app: RunningApp, account_id: str, destination: str, call_id: str, status: int, reason: str
) -> None:
    """Asserts the authorization is refused with ``status`` and ``reason``."""
    answered, refused = await authorize(app, account_id, destination, call_id)
    assert answered == status, refused
    assert refused["error"]["reason"] == reason


async def released_unstarted(app: RunningApp, account_id: str, call_id: str) -> None:
    """A call to Germany granted (asserted: the bundle's 600 s held) but never started,
    which the janitor then releases (asserted: one call closed)."""
    calls = app.services.calls
    grant = await calls.authorize(
        AuthorizeRequest(account_id, GERMANY, call_id=call_id), Origin(wait_for_start=True)
    )
    assert grant.counter_seconds == 600
    assert await Janitor(calls, app.services.store).sweep(now=2_000_000_000) == 1


async def buy(app: RunningApp, account_id: str, counter_id: str) -> dict[str, Any]:
    """The account buys the optional counter (201 asserted): the counter."""
    status, body = await app.post(f"/v1/accounts/{account_id}/counters", {"counter": counter_id})
    assert status == 201, body
    return body


async def cancel(app: RunningApp, account_id: str, counter_id: str) -> dict[str, Any]:
    """The account gives the optional counter up (200 asserted): the answer."""
    response = await app.client.delete(f"/v1/accounts/{account_id}/counters/{counter_id}")
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


# -- the scenario -----------------------------------------------------------------


async def test_600_free_seconds_cover_400_then_200_of_400_and_the_rest_pays_the_zone(
    app: RunningApp,
) -> None:
    await counter_plan(app, [DE_600], {"c1": "1.00"})

    first = await granted(app, "c1", GERMANY, "c1-1")
    # 600 counter seconds first, then 1.00 at 0.012/min buys 5000 s more.
    assert first["counter_seconds"] == 600
    assert first["max_duration"] == 600 + 5000
    await counter_is(app, "c1", "de-600", limit=600, used=0, held=600, left=0)
    stopped = await stop(app, "c1-1", 400)
    assert stopped["cost"] == "0.000000"
    assert stopped["balance"] == "1.000000"
    await counter_is(app, "c1", "de-600", limit=600, used=400, held=0, left=200)

    second = await granted(app, "c1", GERMANY, "c1-2")
    assert second["counter_seconds"] == 200
    assert second["max_duration"] == 200 + 5000
    stopped = await stop(app, "c1-2", 400)
    # 200 s free, the other 200 s at the zone's tariff: cost(400) - cost(200).
    assert stopped["cost"] == "0.040000"
    assert stopped["rated_cost"] == "0.040000"
    assert stopped["balance"] == "0.960000"
    await counter_is(app, "c1", "de-600", limit=600, used=600, held=0, left=0)

    # Used up, and no reject on threshold: calls go on at the zone's tariff.
    third = await granted(app, "c1", GERMANY, "c1-3")
    assert third["counter_seconds"] == 0
    assert third["max_duration"] == 4800
    stopped = await stop(app, "c1-3", 100)
    assert stopped["cost"] == "0.020000"
    assert stopped["balance"] == "0.940000"
    assert (await counters_of(app, "c1"))["de-600"]["used"] == 600

    # A zone the counter does not cover never touches it.
    other = await granted(app, "c1", UK_MOBILE, "c1-4")
    assert other["counter_seconds"] == 0
    assert (await stop(app, "c1-4", 45))["cost"] == "0.198000"

    cdrs = await cdrs_of(app, "c1", 4)
    assert {call: (c["duration"], c["rated_cost"], c["charged"]) for call, c in cdrs.items()} == {
        "c1-1": (400, 0, 0),
        "c1-2": (400, 200 * PER_SECOND_DE, 200 * PER_SECOND_DE),
        "c1-3": (100, 100 * PER_SECOND_DE, 100 * PER_SECOND_DE),
        "c1-4": (45, 198_000, 198_000),
    }
    assert {c["zone"] for call, c in cdrs.items() if call != "c1-4"} == {"Germany"}
    async with app.services.pool.acquire() as conn:
        ledger = await conn.fetchval("SELECT SUM(amount) FROM ledger WHERE account_id = 'c1'")
    assert ledger == 940_000 - 198_000
    assert await balance_of(app, "c1") == "0.742000"


async def test_reject_on_threshold_caps_calls_at_the_bundle_and_refuses_the_third(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await define_counter(app, id="de-rej", seconds=600, zones=["Germany"], reject_on_threshold=True)
    await new_account(app, "r1", "1.00")

    first = await granted(app, "r1", GERMANY, "r1-1")
    # The bundle is all a call may use: funds do not extend it.
    assert first["max_duration"] == 600
    assert first["counter_seconds"] == 600
    assert (await stop(app, "r1-1", 400))["cost"] == "0.000000"

    second = await granted(app, "r1", GERMANY, "r1-2")
    assert second["max_duration"] == 200
    assert second["counter_seconds"] == 200
    assert (await stop(app, "r1-2", 200))["cost"] == "0.000000"
    await counter_is(app, "r1", "de-rej", limit=600, used=600, held=0, left=0)

    await refused_with(app, "r1", GERMANY, "r1-3", 403, "counter_exhausted")
    shown = (await app.get("/v1/accounts/r1"))[1]
    assert shown["balance"] == "1.000000"
    assert shown["reserved"] == "0.000000"
    assert shown["lines_in_use"] == 0
    # Other zones are not behind the threshold.
    assert (await granted(app, "r1", UK_MOBILE, "r1-4"))["counter_seconds"] == 0


async def test_carryover_moves_unused_seconds_to_the_next_cycle_and_reset_zeroes_used(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await define_counter(app, id="de-carry", seconds=600, zones=["Germany"], carryover=True)
    await define_counter(app, id="uk-fixed", seconds=600, zones=["UK Fixed"])
    await new_account(app, "k1", "1.00")

    await granted(app, "k1", GERMANY, "k1-1")
    await stop(app, "k1-1", 400)
    await granted(app, "k1", UK_FIXED, "k1-2")
    await stop(app, "k1-2", 100)
    assert await counters_of(app, "k1") == {
        "de-carry": {"limit": 600, "used": 400, "held": 0, "left": 200},
        "uk-fixed": {"limit": 600, "used": 100, "held": 0, "left": 500},
    }

    status, report = await app.post("/v1/counters/reset", {"plan": "retail"})
    assert status == 200, report
    # No cycle named: the plan's (a calendar month, the plan having no billing settings).
    assert list(report.pop("cycles")) == ["retail"]
    assert report == {"accounts": 1, "counters": 2, "fees": 0}
    # Carryover: 600 new + 200 unused; without carryover: a fresh 600, used 0.
    assert await counters_of(app, "k1") == {
        "de-carry": {"limit": 800, "used": 0, "held": 0, "left": 800},
        "uk-fixed": {"limit": 600, "used": 0, "held": 0, "left": 600},
    }

    grant = await granted(app, "k1", GERMANY, "k1-3")
    assert grant["counter_seconds"] == 800
    assert grant["max_duration"] == 800 + 5000
    stopped = await stop(app, "k1-3", 900)
    assert stopped["cost"] == f"0.{100 * PER_SECOND_DE:06d}"
    await counter_is(app, "k1", "de-carry", limit=800, used=800, held=0, left=0)


async def test_carryover_while_a_call_holds_seconds_counts_them_once(app: RunningApp) -> None:
    await add_plan(app.services)
    await define_counter(app, id="de-carry", seconds=600, zones=["Germany"], carryover=True)
    await new_account(app, "h1", "1.00")

    live = await granted(app, "h1", GERMANY, "h1-live")
    assert live["counter_seconds"] == 600
    status, report = await app.post("/v1/counters/reset", {"account": "h1"})
    assert status == 200, report
    # Nothing of the first cycle was used: all 600 carry over. The 600 the live call
    # holds stay held, and count once, when it stops.
    await counter_is(app, "h1", "de-carry", limit=1200, used=0, held=600, left=600)
    assert (await stop(app, "h1-live", 300))["cost"] == "0.000000"
    # Two cycles of 600 seconds, 300 used: 900 left.
    await counter_is(app, "h1", "de-carry", limit=1200, used=300, held=0, left=900)


async def test_a_stop_after_the_janitor_released_a_call_counts_its_counter_seconds(
    app: RunningApp,
) -> None:
    await counter_plan(app, [DE_600], {"late": "1.00"})
    calls = app.services.calls
    # No Start came in time: the janitor releases the call, and its 600 held seconds.
    await released_unstarted(app, "late", "late-1")
    await counter_is(app, "late", "de-600", limit=600, used=0, held=0, left=600)
    # The switch's Stop comes after all: 600 s, all on the counter, nothing to pay.
    charge = await calls.stop("late-1", 600)
    assert (charge.charged, charge.cause, charge.repeated) == (0, "late-stop", False)
    await counter_is(app, "late", "de-600", limit=600, used=600, held=0, left=0)
    again = await calls.stop("late-1", 600)
    assert again.repeated is True
    assert (await counters_of(app, "late"))["de-600"]["used"] == 600
    # The bundle is spent: the next call pays the zone rate.
    assert (await granted(app, "late", GERMANY, "late-2"))["counter_seconds"] == 0
    assert await balance_of(app, "late") == "1.000000"


async def test_a_late_stop_pays_for_the_counter_seconds_another_call_used_meanwhile(
    app: RunningApp,
) -> None:
    await counter_plan(app, [DE_600], {"gone": "1.00"})
    calls = app.services.calls
    # No Start came in time: the janitor releases the call and its 600 held seconds.
    await released_unstarted(app, "gone", "gone-1")
    # Another call takes 400 of them, free.
    assert (await granted(app, "gone", GERMANY, "gone-2"))["counter_seconds"] == 600
    assert (await stop(app, "gone-2", 400))["cost"] == "0.000000"
    # The first call's Stop comes after all, 600 s: 200 s are still free on the counter,
    # the other 400 s are paid at the zone's rate (200 micro-units a second).
    charge = await calls.stop("gone-1", 600)
    assert (charge.charged, charge.cause) == (400 * PER_SECOND_DE, "late-stop")
    assert await balance_of(app, "gone") == "0.920000"
    await counter_is(app, "gone", "de-600", limit=600, used=600, held=0, left=0)
    again = await calls.stop("gone-1", 600)
    assert (again.repeated, again.charged) == (True, 400 * PER_SECOND_DE)
    assert await balance_of(app, "gone") == "0.920000"


async def test_reset_of_one_account_leaves_the_others_and_keeps_seconds_live_calls_hold(
    app: RunningApp,
) -> None:
    await counter_plan(app, [DE_600], {"s1": "1.00", "s2": "1.00"}, max_lines=2)
    for account in ("s1", "s2"):
        await granted(app, account, GERMANY, f"{account}-1")
        await stop(app, f"{account}-1", 250)

    live = await granted(app, "s1", GERMANY, "s1-live")
    assert live["counter_seconds"] == 350
    status, report = await app.post("/v1/counters/reset", {"account": "s1"})
    assert status == 200, report
    assert list(report.pop("cycles")) == ["retail"]
    assert report == {"accounts": 1, "counters": 1, "fees": 0}
    # A new cycle: used back to 0; the live call's seconds stay held.
    await counter_is(app, "s1", "de-600", limit=600, used=0, held=350, left=250)
    assert (await counters_of(app, "s2"))["de-600"]["used"] == 250
    # The live call counts what it used against the new cycle.
    assert (await stop(app, "s1-live", 100))["cost"] == "0.000000"
    await counter_is(app, "s1", "de-600", limit=600, used=100, held=0, left=500)


# -- authorize: counter seconds first, then funds --------------------------------------------


async def test_max_duration_counts_counter_seconds_first_even_at_zero_balance(
    app: RunningApp,
) -> None:
    await counter_plan(app, [DE_600], {"z0": "0", "z12": "0.12"})

    # No funds: the bundle alone lets the call through, for exactly its seconds.
    grant = await granted(app, "z0", GERMANY, "z0-1")
    assert grant["max_duration"] == 600
    assert grant["counter_seconds"] == 600
    assert grant["reserved"] == "0.000000"
    stopped = await stop(app, "z0-1", 600)
    assert stopped["cost"] == "0.000000"
    assert stopped["balance"] == "0.000000"
    # A zone without a counter still needs money.
    await refused_with(app, "z0", UK_FIXED, "z0-2", 402, "zero_balance")
    # Bundle used up and no funds: refused like any zero balance.
    await refused_with(app, "z0", GERMANY, "z0-3", 402, "zero_balance")

    # 0.12 buys 600 s at 200 micro-units a second: 600 + 600.
    grant = await granted(app, "z12", GERMANY, "z12-1")
    assert grant["max_duration"] == 1200
    assert grant["counter_seconds"] == 600
    assert grant["reserved"] == "0.120000"
    stopped = await stop(app, "z12-1", 1200)
    assert stopped["cost"] == "0.120000"
    assert stopped["balance"] == "0.000000"


async def test_concurrent_calls_never_share_the_same_counter_seconds(app: RunningApp) -> None:
    # Each call may hold at most 300 s (the plan's longest call) of the 1000 s bundle.
    await add_plan(app.services, max_lines=10, max_call_duration=300)
    await define_counter(app, id="de-1000", seconds=1000, zones=["Germany"])
    await new_account(app, "cc", "10.00")

    results = await asyncio.gather(*(authorize(app, "cc", GERMANY, f"cc-{n}") for n in range(8)))
    assert all(status == 201 for status, _ in results), results
    held = sorted((grant["counter_seconds"] for _, grant in results), reverse=True)
    assert held == [300, 300, 300, 100, 0, 0, 0, 0]
    state = (await counters_of(app, "cc"))["de-1000"]
    assert state == {"limit": 1000, "used": 0, "held": 1000, "left": 0}

    stops = await asyncio.gather(*(stop(app, f"cc-{n}", 300) for n in range(8)))
    charged = sum(int(s["cost"].replace(".", "")) for s in stops)
    # 8 calls of 300 s, of which 1000 s were free.
    assert charged == (8 * 300 - 1000) * PER_SECOND_DE
    await counter_is(app, "cc", "de-1000", limit=1000, used=1000, held=0, left=0)
    assert await balance_of(app, "cc") == "9.720000"


async def test_concurrent_zero_balance_calls_get_the_bundle_once(app: RunningApp) -> None:
    await counter_plan(app, [DE_600], {"zc": "0"}, max_lines=10)
    results = await asyncio.gather(*(authorize(app, "zc", GERMANY, f"zc-{n}") for n in range(10)))
    accepted = [grant for status, grant in results if status == 201]
    assert len(accepted) == 1, results
    assert accepted[0]["counter_seconds"] == accepted[0]["max_duration"] == 600
    assert {grant["error"]["reason"] for status, grant in results if status != 201} == {
        "zero_balance"
    }


# -- optional counters ---------------------------------------------------------------------


async def test_an_optional_counter_applies_only_once_bought_and_stops_after_cancel(
    app: RunningApp,
) -> None:
    await counter_plan(app, [UK_OPT], {"o1": "1.00"})

    before = await granted(app, "o1", UK_MOBILE, "o1-1")
    assert before["counter_seconds"] == 0
    assert (await stop(app, "o1-1", 45))["cost"] == "0.198000"
    assert await counters_of(app, "o1") == {}

    bought = await buy(app, "o1", "uk-opt")
    assert bought["id"] == "uk-opt" and bought["mandatory"] is False
    assert await counters_of(app, "o1") == {
        "uk-opt": {"limit": 600, "used": 0, "held": 0, "left": 600}
    }
    during = await granted(app, "o1", UK_MOBILE, "o1-2")
    assert during["counter_seconds"] == 600
    assert (await stop(app, "o1-2", 45))["cost"] == "0.000000"
    assert (await counters_of(app, "o1"))["uk-opt"]["used"] == 45

    cancelled = await cancel(app, "o1", "uk-opt")
    assert cancelled["cancelled"] is True
    assert await counters_of(app, "o1") == {}
    after = await granted(app, "o1", UK_MOBILE, "o1-3")
    assert after["counter_seconds"] == 0
    assert (await stop(app, "o1-3", 45))["cost"] == "0.198000"
    assert await balance_of(app, "o1") == "0.604000"

    response = await app.client.delete("/v1/accounts/o1/counters/uk-opt")
    assert response.status == 404, await response.text()


async def test_buying_a_counter_checks_it_exists_and_belongs_to_the_plan(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await add_plan(app.services, "other")
    await define_counter(app, "other", id="other-opt", seconds=60, zones=["Germany"])
    await new_account(app, "b1", "1.00")
    status, body = await app.post("/v1/accounts/b1/counters", {"counter": "nope"})
    assert status == 404, body
    status, body = await app.post("/v1/accounts/b1/counters", {"counter": "other-opt"})
    assert status == 400, body
    assert body["error"]["field"] == "counter"
    assert await counters_of(app, "b1") == {}


async def test_cancelling_an_optional_counter_does_not_renew_the_other_counters(
    app: RunningApp,
) -> None:
    await counter_plan(app, [DE_600, UK_OPT], {"x1": "1.00"})
    await granted(app, "x1", GERMANY, "x1-1")
    await stop(app, "x1-1", 400)
    await buy(app, "x1", "uk-opt")

    await cancel(app, "x1", "uk-opt")
    # Giving up one counter is no new cycle for the account's mandatory counter.
    assert await counters_of(app, "x1") == {
        "de-600": {"limit": 600, "used": 400, "held": 0, "left": 200}
    }


async def test_a_counter_cancelled_during_a_call_does_not_apply_after_it(
    app: RunningApp,
) -> None:
    await counter_plan(app, [UK_OPT], {"y1": "1.00"})
    await buy(app, "y1", "uk-opt")
    live = await granted(app, "y1", UK_MOBILE, "y1-1")
    assert live["counter_seconds"] == 600

    await cancel(app, "y1", "uk-opt")
    # The call authorized under the counter ends at its authorized terms.
    assert (await stop(app, "y1-1", 45))["cost"] == "0.000000"

    after = await granted(app, "y1", UK_MOBILE, "y1-2")
    assert after["counter_seconds"] == 0
    assert (await stop(app, "y1-2", 45))["cost"] == "0.198000"
    assert await counters_of(app, "y1") == {}


async def test_a_counter_bought_again_while_a_call_holds_it_starts_a_fresh_cycle(
    app: RunningApp,
) -> None:
    await counter_plan(app, [UK_OPT], {"z1": "1.00"}, max_lines=2)
    await buy(app, "z1", "uk-opt")
    await granted(app, "z1", UK_MOBILE, "z1-1")
    await stop(app, "z1-1", 550)
    live = await granted(app, "z1", UK_MOBILE, "z1-2")
    assert live["counter_seconds"] == 50
    await cancel(app, "z1", "uk-opt")

    await buy(app, "z1", "uk-opt")
    # Taken again, it is a new cycle of 600, not the old one's 50 left; the live call
    # keeps its 50 held and counts its use against the new cycle.
    assert await counters_of(app, "z1") == {
        "uk-opt": {"limit": 600, "used": 0, "held": 50, "left": 550}
    }
    assert (await stop(app, "z1-2", 30))["cost"] == "0.000000"
    assert await counters_of(app, "z1") == {
        "uk-opt": {"limit": 600, "used": 30, "held": 0, "left": 570}
    }
    # Bought while it is held already: nothing changes.
    await buy(app, "z1", "uk-opt")
    assert (await counters_of(app, "z1"))["uk-opt"]["used"] == 30


async def test_an_optional_counter_not_bought_does_not_hide_a_mandatory_one(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    # Both cover Germany; "a-opt" sorts first.
    await define_counter(app, id="a-opt", seconds=300, zones=["Germany"], mandatory=False)
    await define_counter(app, id="b-mand", seconds=600, zones=["Germany"])
    await new_account(app, "m1", "1.00")
    grant = await granted(app, "m1", GERMANY, "m1-1")
    # Mandatory counters apply to every account of the plan.
    assert grant["counter_seconds"] == 600
    assert (await stop(app, "m1-1", 100))["cost"] == "0.000000"


async def test_an_add_on_bought_beside_a_used_up_bundle_pays_the_next_calls(
    app: RunningApp,
) -> None:
    """Every account's 60 s to Germany ("a-main"), and a 600 s add-on to Germany the
    account bought for 5.00 ("b-addon"). Once the 60 s are used, the add-on pays: a call
    of 300 s costs nothing and takes 300 s of it. Authorize stopped at "a-main" with 0 s
    free: the call was granted 0 counter seconds, charged 0.06 (300 s at 0.012 a minute),
    and the add-on paid for stayed unused."""
    await counter_plan(
        app,
        [
            {"id": "a-main", "seconds": 60, "zones": ["Germany"]},
            {
                "id": "b-addon",
                "seconds": 600,
                "zones": ["Germany"],
                "mandatory": False,
                "recurring_fee": "5.00",
            },
        ],
        {"c1": "10.00"},
    )
    await buy(app, "c1", "b-addon")
    assert (await granted(app, "c1", GERMANY, "x1"))["counter_seconds"] == 60
    assert (await stop(app, "x1", 60))["cost"] == "0.000000"
    quote = await app.services.calls.quote("c1", GERMANY)
    grant = await granted(app, "c1", GERMANY, "x2")
    assert grant["counter_seconds"] == 600
    assert (await counters_of(app, "c1"))["b-addon"]["held"] == 600
    assert quote.seconds == grant["max_duration"]  # the IVR says what is granted
    stopped = await stop(app, "x2", 300)
    assert stopped["cost"] == "0.000000"
    assert await counters_of(app, "c1") == {
        "a-main": {"limit": 60, "used": 60, "held": 0, "left": 0},
        "b-addon": {"limit": 600, "used": 300, "held": 0, "left": 300},
    }
    # Both used up: the tariff, at the first that applies (as before), 0.012 a minute.
    assert (await granted(app, "c1", GERMANY, "x3"))["counter_seconds"] == 300
    await stop(app, "x3", 300)
    assert (await granted(app, "c1", GERMANY, "x4"))["counter_seconds"] == 0
    assert (await stop(app, "x4", 60))["cost"] == "0.012000"
    charged = await cdrs_of(app, "c1", 4)
    assert [(charged[c]["counter_id"], charged[c]["counter_seconds"]) for c in sorted(charged)] == [
        ("a-main", 60),
        ("b-addon", 300),
        ("b-addon", 300),
        ("a-main", 0),
    ]


async def test_a_refusing_bundle_used_up_lets_a_bought_add_on_pay_then_refuses(
    app: RunningApp,
) -> None:
    """A bundle that refuses calls once used up ("a-main", 60 s) and an add-on bought
    beside it ("b-addon", 120 s): the add-on pays once the bundle is used up, and only
    when both are is the call refused counter_exhausted (it was refused at once)."""
    await counter_plan(
        app,
        [
            {"id": "a-main", "seconds": 60, "zones": ["Germany"], "reject_on_threshold": True},
            {"id": "b-addon", "seconds": 120, "zones": ["Germany"], "mandatory": False},
        ],
        {"c2": "10.00"},
    )
    await buy(app, "c2", "b-addon")
    assert (await granted(app, "c2", GERMANY, "y1"))["max_duration"] == 60  # its bundle
    await stop(app, "y1", 60)
    assert (await granted(app, "c2", GERMANY, "y2"))["counter_seconds"] == 120
    assert (await counters_of(app, "c2"))["b-addon"]["held"] == 120
    assert (await stop(app, "y2", 200))["cost"] == "0.016000"  # 80 s past it, 0.012/min
    status, refused = await authorize(app, "c2", GERMANY, "y3")
    assert (status, refused["error"]["reason"]) == (403, "counter_exhausted"), refused
    assert (await app.services.calls.quote("c2", GERMANY)).seconds == 0


# -- the rating function with a counter --------------------------------------------------------

# A zone's rate: these fields alone, or with a tier and a max cost too.
_rate_fields: dict[str, st.SearchStrategy[int]] = {
    "connect_fee": st.integers(0, 500_000),
    "first_block": st.integers(0, 90),
    "increment": st.integers(1, 90),
    "price_per_minute": st.integers(0, 2_000_000),
}
_rates = st.one_of(
    st.builds(Rate, **_rate_fields),
    st.builds(
        Rate,
        **_rate_fields,
        tiers=st.tuples(
            st.builds(
                Tier,
                start=st.integers(1, 900),
                price_per_minute=st.integers(0, 2_000_000),
                increment=st.integers(1, 60),
                flat=st.integers(0, 300_000),
            )
        ),
        max_cost=st.integers(0, 5_000_000),
        cut_at_max_cost=st.booleans(),
    ),
)
_splits = st.builds(
    CounterSplit,
    rate=st.builds(
        Rate,
        connect_fee=st.just(0),
        first_block=st.just(0),
        increment=st.integers(1, 60),
        price_per_minute=st.sampled_from([0, 0, 6_000, 100_000]),
    ),
    seconds=st.integers(1, 3_600),
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    rate=_rates,
    split=_splits,
    duration=st.integers(0, 7_200),
    step=st.integers(1, 600),
)
def test_cost_with_counter_never_decreases_with_the_duration(
    rate: Rate, split: CounterSplit, duration: int, step: int
) -> None:
    shorter = cost_with_counter(rate, duration, split)
    assert cost_with_counter(rate, duration + 1, split) >= shorter
    assert cost_with_counter(rate, duration + step, split) >= shorter
    covered = min(duration, split.seconds)
    if duration <= split.seconds:
        assert shorter == cost(split.rate, duration)
    else:
        # The counter's part, then the zone's rate for the rest of the whole call.
        assert shorter == cost(split.rate, covered) + cost(rate, duration) - cost(rate, covered)
    if split.rate.price_per_minute == 0:
        assert cost_with_counter(rate, covered, split) == 0
        assert shorter <= cost(rate, duration)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    rate=_rates,
    split=_splits,
    funds=st.integers(0, 3_000_000),
    cap=st.integers(1, 7_200),
)
def test_max_duration_with_counter_inverts_cost_with_counter(
    rate: Rate, split: CounterSplit, funds: int, cap: int
) -> None:
    longest = max_duration_with_counter(rate, funds, cap, split)
    # A max cost that cuts the call cuts it where the zone's cost would pass it, with a
    # counter as without one (the capped cost stops growing there).
    cut = cap
    if rate.max_cost and rate.cut_at_max_cost:
        cut = max_duration(rate, 10**12, cap)
    assert 0 <= longest <= cut
    if longest == 0:
        assert cost_with_counter(rate, 1, split) > funds or cut == 0
        return
    assert cost_with_counter(rate, longest, split) <= funds
    if longest < cut:
        assert cost_with_counter(rate, longest + 1, split) > funds
    if split.rate.price_per_minute == 0:
        # A free bundle is always granted whole (up to the cap and the cut).
        assert longest >= min(split.seconds, cut)
