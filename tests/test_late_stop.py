"""A call the janitor released as never started is still charged when its Stop comes."""

from datetime import UTC, datetime
from typing import Any

from ocs.balances.results import StopResult
from ocs.balances.script_args import StopArgs
from ocs.billing.realtime import cdr_totals
from ocs.charging.janitor import Janitor
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.config import with_overrides
from tests.conftest import RunningApp, add_plan, eventually


async def test_a_stop_after_the_start_timeout_is_charged_once(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "ringer", "plan": "retail", "balance": "1.00"})
    calls = app.services.calls
    grant = await calls.authorize(
        AuthorizeRequest("ringer", "447700900123", call_id="long-ring"), Origin(wait_for_start=True)
    )
    assert grant.max_duration == 846
    # It rang past start_timeout: the janitor releases the reservation free of charge.
    later = 2_000_000_000  # an epoch second far past the accept
    assert await Janitor(calls, app.services.store).sweep(now=later) == 1
    _, account = await app.get("/v1/accounts/ringer")
    assert (account["balance"], account["reserved"], account["lines_in_use"]) == (
        "1.000000",
        "0.000000",
        0,
    )
    # The switch reports the answered call after all: charged now, once.
    charge = await calls.stop("long-ring", 45)
    assert (charge.charged, charge.cause, charge.repeated) == (198_000, "late-stop", False)
    again = await calls.stop("long-ring", 45)
    assert (again.charged, again.repeated) == (198_000, True)
    _, account = await app.get("/v1/accounts/ringer")
    assert account["balance"] == "0.802000"


async def test_a_nas_restart_closes_only_calls_from_before_it(app: RunningApp) -> None:
    import time

    await add_plan(app.services, max_lines=5, max_call_duration=600)
    await app.post(
        "/v1/accounts", {"id": "gw", "plan": "retail", "balance": "5.00", "max_lines": 5}
    )
    calls = app.services.calls
    await calls.authorize(
        AuthorizeRequest("gw", "447700900123", call_id="before"), Origin(nas="sbc-1")
    )
    rebooted_ms = int(time.time() * 1000) + 1
    while int(time.time() * 1000) <= rebooted_ms:
        pass  # authorizations after this instant belong to the NAS's new life
    await calls.authorize(
        AuthorizeRequest("gw", "447700900123", call_id="after"), Origin(nas="sbc-1")
    )
    await calls.authorize(
        AuthorizeRequest("gw", "447700900123", call_id="elsewhere"), Origin(nas="sbc-2")
    )
    closed = await calls.close_calls_of_nas("sbc-1", cause="nas-reboot", before_ms=rebooted_ms)
    assert closed == 1
    live = await app.services.store.live_calls_of("gw")
    assert sorted(live) == ["after", "elsewhere"]


async def test_a_stop_after_the_janitor_closed_a_started_call_charges_the_rest(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "slow", "plan": "retail", "balance": "2.00"})
    # Charged its last report at the close (the default charges the whole grant).
    settings = with_overrides(app.services.settings, stale_call_policy="last_reported")
    calls = CallService(app.services.catalog, app.services.store, settings, app.services.digests)
    await calls.authorize(AuthorizeRequest("slow", "447700900123", call_id="slow-1"))
    await calls.update("slow-1", 30)  # an interim: 30 s used so far
    closed = await Janitor(calls, app.services.store).sweep(now=2_000_000_000)
    assert closed == 1  # charged its last reported usage: 30 s = 0.18
    _, account = await app.get("/v1/accounts/slow")
    assert account["balance"] == "1.820000"
    charge = await calls.stop("slow-1", 45)  # the real stop: 48 s billed = 0.198
    assert (charge.charged, charge.cause) == (198_000, "late-stop")
    _, account = await app.get("/v1/accounts/slow")
    assert account["balance"] == "1.802000"
    repeated = await calls.stop("slow-1", 45)
    assert repeated.repeated and repeated.charged == 198_000


async def test_a_stop_without_a_duration_charges_the_time_since_start(
    app: RunningApp,
) -> None:
    import time

    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "mute", "plan": "retail", "balance": "2.00"})
    calls = app.services.calls
    await calls.authorize(
        AuthorizeRequest("mute", "447700900123", call_id="mute-1"), Origin(wait_for_start=True)
    )
    # The Accounting-Start said the call was answered 100 s ago.
    now = int(time.time())
    await app.services.store.start(
        account_id="mute", call_id="mute-1", started_at=now - 100, expires_at=now + 3600
    )
    charge = await calls.stop("mute-1", None)
    assert 100 <= charge.duration <= int(time.time()) - now + 100
    assert charge.charged == 150_000 + charge.billed_seconds * 1_000


async def test_a_stop_shorter_than_the_full_grant_close_gives_back_the_rest_and_bills_one_call(
    app: RunningApp,
) -> None:
    # The janitor charged a started call its whole grant (stale_call_policy full_grant);
    # its real Stop, 45 s, came after: the call was left at 0.996 and invoiced as two
    # calls of 846 s and 45 s.
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "lost", "plan": "retail", "balance": "1.00"})
    calls = app.services.calls
    grant = await calls.authorize(AuthorizeRequest("lost", "447700900123", call_id="lost-1"))
    assert grant.max_duration == 846
    await calls.start("lost-1")
    assert await Janitor(calls, app.services.store).sweep(now=2_000_000_000) == 1
    _, account = await app.get("/v1/accounts/lost")
    assert account["balance"] == "0.004000"  # 846 s (0.996)
    charge = await calls.stop("lost-1", 45)  # 48 s billed: 0.198
    assert (charge.charged, charge.cause, charge.repeated) == (198_000, "late-stop", False)
    _, account = await app.get("/v1/accounts/lost")
    assert account["balance"] == "0.802000"
    again = await calls.stop("lost-1", 45)
    assert (again.charged, again.repeated) == (198_000, True)
    _, account = await app.get("/v1/accounts/lost")
    assert account["balance"] == "0.802000"

    # What billing counts: one call of 45 s (48 billed), 0.198, over the two CDRs.
    window = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    totals: list[Any] = []

    async def both_written() -> bool:
        async with app.services.pool.acquire() as conn:
            found = await cdr_totals(conn, ["lost"], window)
        totals[:] = list(found.calls["lost"].values())
        return bool(totals) and totals[0].amount == 198_000

    await eventually(both_written, what="the close's and the late stop's CDRs")
    [total] = totals
    assert (total.calls, total.seconds, total.billed, total.amount) == (1, 45, 48, 198_000)


async def test_a_stop_of_a_reused_call_id_is_not_taken_for_the_late_stop_of_its_earlier_call(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "lost", "plan": "retail", "balance": "1.00"})
    await app.post("/v1/accounts", {"id": "next", "plan": "retail", "balance": "1.00"})
    settings = with_overrides(app.services.settings, stale_call_policy="last_reported")
    here = CallService(app.services.catalog, app.services.store, settings, app.services.digests)
    elsewhere = CallService(
        app.services.catalog, app.services.store, settings, app.services.digests
    )
    await here.authorize(AuthorizeRequest("lost", "447700900123", call_id="reused"))
    # Its stop was lost: another process's janitor closes it, nothing reported, free.
    assert await Janitor(elsewhere, app.services.store).sweep(now=2_000_000_000) == 1
    # The id is granted again, to another account's call, on that other process; the
    # new call's stop reaches this process, which kept the first call's record. It was
    # charged to the first account as that call's late stop, and the new call left live.
    await elsewhere.authorize(AuthorizeRequest("next", "447700900123", call_id="reused"))
    charge = await here.stop("reused", 45)
    assert (charge.account_id, charge.charged, charge.cause) == ("next", 198_000, "normal")
    _, lost = await app.get("/v1/accounts/lost")
    _, following = await app.get("/v1/accounts/next")
    assert (lost["balance"], following["balance"], following["lines_in_use"]) == (
        "1.000000",
        "0.802000",
        0,
    )


async def test_a_stop_reporting_no_duration_after_the_close_leaves_the_close_as_it_is(
    app: RunningApp,
) -> None:
    # A Stop with no Acct-Session-Time (or an HTTP stop with no duration) for a call the
    # janitor had closed was timed 0 s and given back everything the close charged.
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "mute2", "plan": "retail", "balance": "1.00"})
    calls = app.services.calls
    await calls.authorize(AuthorizeRequest("mute2", "447700900123", call_id="mute-2"))
    await calls.start("mute-2")
    assert await Janitor(calls, app.services.store).sweep(now=2_000_000_000) == 1
    _, account = await app.get("/v1/accounts/mute2")
    assert account["balance"] == "0.004000"  # its whole grant, 846 s (0.996)
    charge = await calls.stop("mute-2", None)
    assert (charge.charged, charge.repeated) == (996_000, True)
    _, account = await app.get("/v1/accounts/mute2")
    assert account["balance"] == "0.004000"


async def test_a_close_by_ocs_that_finds_the_call_closed_gives_nothing_back(
    app: RunningApp,
) -> None:
    # A NAS's restart (or a cut) closing a call the janitor closed a moment before, with a
    # shorter duration, was taken for the switch's late Stop and gave the difference back.
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "boot", "plan": "retail", "balance": "1.00"})
    calls = app.services.calls
    await calls.authorize(AuthorizeRequest("boot", "447700900123", call_id="boot-1"))
    await calls.start("boot-1")
    assert await Janitor(calls, app.services.store).sweep(now=2_000_000_000) == 1
    args = StopArgs("boot", "boot-1", 198_000, 45, b"\x80", 60, 0, "nas-reboot", None)
    result = await app.services.store.stop(args)
    assert isinstance(result, StopResult) and result.repeated
    _, account = await app.get("/v1/accounts/boot")
    assert account["balance"] == "0.004000"
