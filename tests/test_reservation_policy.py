"""A plan's reservation policy: how much of one balance each concurrent call holds.

Field trials: on an account with 10.00 and 10 free lines the first call held
everything and the second was refused ``zero_balance``. ``whole`` keeps that
(the refusal now says the funds are held by live calls), ``slice`` holds
``slice_seconds`` at a time and extends on updates, ``share`` holds at most the
available funds divided by the free lines.

Germany here costs 0.01 a minute, billed per minute (60/60): a slice of 60 s
holds 0.01; the plan's longest call is 600 s (0.10) unless said otherwise.
"""

import asyncio
import time
from typing import Any

import pytest

from ocs.balances.plan_policy import PlanPolicy, plan_policy, set_plan_policy
from ocs.charging.janitor import Janitor
from ocs.charging.values import AuthorizeRequest, CallRecord
from ocs.errors import OcsError
from ocs.housekeeping import janitor_disconnect
from ocs.radius.disconnect import DisconnectOutcome, disconnect_call
from tests.conftest import CutRig, RunningApp, account, add_plan, eventually
from tests.helpers import radius
from tests.nas_emulator import NAS_SECRET
from tests.radclient import RadiusReply, radclient

FLAT_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.010,0,60,60
"""
GERMANY = "4930123456"


def micro(amount: str) -> int:
    units, _, fraction = amount.lstrip("-").partition(".")
    value = int(units) * 1_000_000 + int(fraction.ljust(6, "0"))
    return -value if amount.startswith("-") else value


async def burst(app: RunningApp, account_id: str, n: int) -> list[tuple[int, dict[str, Any]]]:
    """``n`` concurrent authorizations on one account."""
    return await asyncio.gather(
        *[
            app.post(
                "/v1/calls",
                {"account": account_id, "destination": GERMANY, "call_id": f"{account_id}-{k}"},
            )
            for k in range(n)
        ]
    )


async def stop_all_long(app: RunningApp, granted: list[dict[str, Any]]) -> None:
    """Every granted call runs a day past its grant: charges stop at what the account holds."""
    stops = await asyncio.gather(
        *[app.post(f"/v1/calls/{g['call_id']}/stop", {"duration": 86_400}) for g in granted]
    )
    assert all(status == 200 for status, _ in stops)


# policy, plan's longest call, slice, balance, credit, lines -> granted, their max_duration
# (sorted), each call's reserve (sorted), reasons of the refusals
SCENARIOS: dict[str, tuple[str, int, int, str, str, int, int, list[int], set[str]]] = {
    # whole: 1.05 buys ten 600 s grants (0.10) and one of 300 s; the rest: funds held.
    "whole": ("whole", 600, 60, "1.05", "0", 500, 11, [300] + [600] * 10, {"funds_held"}),
    # slice: one minute (0.01) each: 105 calls where whole granted 11.
    "slice": ("slice", 600, 60, "1.05", "0", 500, 105, [60] * 105, {"funds_held"}),
    # slice on credit: 0.50 + 0.55 credit, the same 105 slices.
    "slice-credit": ("slice", 600, 60, "0.50", "0.55", 500, 105, [60] * 105, {"funds_held"}),
    # share, lines bind: 10.00 over 10 lines, a four-hour plan: 1.00 (100 min) each.
    "share-lines": ("share", 14_400, 60, "10.00", "0", 10, 10, [6000] * 10, {"no_free_line"}),
    # share, funds bind: 0.05 over 100 lines is less than a first block each: 0.01 each.
    "share-funds": ("share", 600, 60, "0.05", "0", 100, 5, [60] * 5, {"funds_held"}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_500_concurrent_authorizations_grant_exactly_the_affordable_number(
    app: RunningApp, scenario: str
) -> None:
    policy, longest, slice_s, balance, credit, lines, expected, durations, reasons = SCENARIOS[
        scenario
    ]
    await add_plan(
        app.services,
        deck=FLAT_DECK,
        max_call_duration=longest,
        max_lines=lines,
        reservation_policy=policy,
        slice_seconds=slice_s,
    )
    status, body = await app.post(
        "/v1/accounts",
        {
            "id": "one",
            "plan": "retail",
            "balance": balance,
            "credit_limit": credit,
            "max_lines": lines,
        },
    )
    assert status == 201, body
    results = await burst(app, "one", 500)
    granted = [body for status, body in results if status == 201]
    refused = [body["error"] for status, body in results if status != 201]
    assert len(granted) == expected
    assert sorted(g["max_duration"] for g in granted) == durations
    short = {
        "funds_held" if e["reason"] == "funds_held_by_live_calls" else e["reason"] for e in refused
    }
    assert short == reasons
    for error in refused:
        if error["reason"] == "funds_held_by_live_calls":
            assert error["code"] == 402 and 1 <= error["live_calls"] <= expected
    view = await account(app, "one")
    assert view["lines_in_use"] == expected
    assert micro(view["reserved"]) == sum(micro(g["reserved"]) for g in granted)
    assert micro(view["available"]) >= 0
    if policy == "share":
        assert {g["reserved"] for g in granted} == (
            {"1.000000"} if scenario == "share-lines" else {"0.010000"}
        )

    await stop_all_long(app, granted)
    view = await account(app, "one")
    # Never an overdraft: the balance stops at -credit_limit.
    assert micro(view["balance"]) >= -micro(credit)
    assert (view["reserved"], view["lines_in_use"]) == ("0.000000", 0)


async def test_share_leaves_the_second_call_its_part(app: RunningApp) -> None:
    await add_plan(
        app.services,
        deck=FLAT_DECK,
        max_call_duration=14_400,
        max_lines=10,
        reservation_policy="share",
    )
    await app.post(
        "/v1/accounts", {"id": "shop", "plan": "retail", "balance": "10.00", "max_lines": 10}
    )
    status, first = await app.post("/v1/calls", {"account": "shop", "destination": GERMANY})
    assert (status, first["reserved"], first["max_duration"]) == (201, "1.000000", 6000)
    status, second = await app.post("/v1/calls", {"account": "shop", "destination": GERMANY})
    assert (status, second["reserved"]) == (201, "1.000000")  # 9.00 over 9 free lines
    assert (await account(app, "shop"))["available"] == "8.000000"


async def test_a_share_plans_quote_is_the_part_a_call_is_granted(app: RunningApp) -> None:
    """An IVR's quote is what the call is granted: under ``share``, 10.00 over 10 free
    lines is 1.00 a call, 100 minutes; it was quoted what all 10.00 pay (the plan's
    four hours), and the call was cut after 100 minutes."""
    await add_plan(
        app.services,
        deck=FLAT_DECK,
        max_call_duration=14_400,
        max_lines=10,
        reservation_policy="share",
    )
    await app.post(
        "/v1/accounts", {"id": "shop", "plan": "retail", "balance": "10.00", "max_lines": 10}
    )
    calls = app.services.calls
    quoted = await calls.quote("shop", GERMANY)
    status, first = await app.post("/v1/calls", {"account": "shop", "destination": GERMANY})
    assert (status, first["reserved"]) == (201, "1.000000")
    assert quoted.seconds == first["max_duration"] == 6000
    # 9.00 over the 9 lines still free: 1.00 again.
    assert (await calls.quote("shop", GERMANY)).seconds == 6000


async def test_a_slice_is_extended_by_updates_until_the_funds_run_out(app: RunningApp) -> None:
    await add_plan(
        app.services,
        deck=FLAT_DECK,
        max_call_duration=600,
        max_lines=5,
        reservation_policy="slice",
        slice_seconds=60,
    )
    await app.post("/v1/accounts", {"id": "trunk", "plan": "retail", "balance": "0.03"})
    status, grant = await app.post(
        "/v1/calls", {"account": "trunk", "destination": GERMANY, "call_id": "t-1"}
    )
    assert status == 201, grant
    assert (grant["max_duration"], grant["reserved"], grant["final"]) == (60, "0.010000", False)
    # A second call on the same balance is granted its own slice meanwhile.
    status, other = await app.post(
        "/v1/calls", {"account": "trunk", "destination": GERMANY, "call_id": "t-2"}
    )
    assert (status, other["reserved"]) == (201, "0.010000")

    status, update = await app.post("/v1/calls/t-1/update", {"used": 60})
    assert status == 200, update
    assert (update["granted"], update["remaining"], update["final"]) == (120, 60, False)
    assert update["debited"] == "0.010000"
    # 0.03 - 0.01 debited - 0.01 (t-1's next slice) - 0.01 (t-2): nothing is left.
    status, update = await app.post("/v1/calls/t-1/update", {"used": 120})
    assert status == 200, update
    assert (update["granted"], update["remaining"], update["final"]) == (120, 0, True)
    view = await account(app, "trunk")
    assert (view["available"], view["lines_in_use"]) == ("0.000000", 2)

    # t-2 ends unanswered: its slice is free again, and t-1's next update takes it. The
    # duration is stated because the time since the start is counted in whole seconds of
    # the clock: a second boundary crossed since t-2 began would charge it a minute.
    status, stopped = await app.post("/v1/calls/t-2/stop", {"duration": 0})
    assert status == 200, stopped
    status, update = await app.post("/v1/calls/t-1/update", {"used": 120})
    assert (update["granted"], update["remaining"], update["final"]) == (180, 60, False)
    status, stopped = await app.post("/v1/calls/t-1/stop", {"duration": 400})
    assert status == 200
    view = await account(app, "trunk")
    assert micro(view["balance"]) >= 0 and view["reserved"] == "0.000000"


async def test_the_policy_is_set_with_the_plan_policy(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK)
    pool = app.services.pool
    assert (await plan_policy(pool, "retail")).reservation_policy == "whole"
    await set_plan_policy(pool, "retail", PlanPolicy(reservation_policy="slice", slice_seconds=30))
    stored = await plan_policy(pool, "retail")
    assert (stored.reservation_policy, stored.slice_seconds) == ("slice", 30)
    await app.services.catalog.reload()
    plan = app.services.catalog.snapshot.plan("retail")
    assert plan is not None and (plan.reservation_policy, plan.slice_seconds) == ("slice", 30)
    for bad, field in (
        (PlanPolicy(reservation_policy="half"), "reservation_policy"),
        (PlanPolicy(slice_seconds=0), "slice_seconds"),
    ):
        with pytest.raises(OcsError) as refused:
            await set_plan_policy(pool, "retail", bad)
        assert refused.value.field == field
    # And at creation, through the API.
    status, body = await app.post(
        "/v1/plans",
        {"id": "pbx", "currency": "EUR", "reservation_policy": "share"},
    )
    assert status == 201, body
    assert (body["reservation_policy"], body["slice_seconds"]) == ("share", 60)
    status, body = await app.post(
        "/v1/plans", {"id": "bad", "currency": "EUR", "reservation_policy": "most"}
    )
    assert (status, body["error"]["field"]) == (400, "reservation_policy")


async def add_sliced_plan(app: RunningApp) -> None:
    """The plan ``sliced``: Germany, calls of 600 s at most, 5 lines, slices of 60 s."""
    await add_plan(
        app.services,
        plan_id="sliced",
        deck=FLAT_DECK,
        max_call_duration=600,
        max_lines=5,
        reservation_policy="slice",
        slice_seconds=60,
    )


Attributes = list[tuple[str, str]]


async def sliced_account(
    rig: CutRig, account_id: str, session_id: str
) -> tuple[Attributes, Attributes]:
    """``account_id`` opened on the sliced plan with 0.03: its RADIUS session's attributes
    (``session_id``) and those of an Access-Request of it to Germany."""
    await rig.app.post("/v1/accounts", {"id": account_id, "plan": "sliced", "balance": "0.03"})
    session = [("User-Name", account_id), ("Acct-Session-Id", session_id)]
    access = [("NAS-IP-Address", "127.0.0.1"), *session, ("Called-Station-Id", GERMANY)]
    return session, access


async def accepted(rig: CutRig, access: Attributes) -> RadiusReply:
    """Send the Access-Request; asserts it is accepted. The reply."""
    reply = await radclient("auth", rig.server.auth_port, NAS_SECRET, access)
    assert reply.code == "Access-Accept", reply
    return reply


async def started(rig: CutRig, session: Attributes) -> None:
    """Send the session's Accounting Start; asserts it is answered."""
    assert await radius(rig, "acct", [("Acct-Status-Type", "Start"), *session]) == (
        "Accounting-Response"
    )


async def started_sliced_call(rig: CutRig, account_id: str, session_id: str) -> None:
    """A sliced RADIUS call of ``account_id`` (0.03, one slice 0.01 held), started."""
    session, access = await sliced_account(rig, account_id, session_id)
    await accepted(rig, access)
    await started(rig, session)


def past_one_slice(app: RunningApp) -> int:
    """A moment (Unix seconds) past a call's one slice and its grace, from now."""
    return int(time.time()) + 60 + app.services.settings.call_expiry_grace + 5


async def charged_its_slice(app: RunningApp, account_id: str) -> None:
    """Asserts the account paid one slice of its 0.03 (0.02 left) and holds nothing."""
    view = await account(app, account_id)
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == (
        "0.020000",
        "0.000000",
        0,
    ), account_id


async def disconnect_sent(rig: CutRig, session_id: str) -> None:
    """Waits for the NAS's one Disconnect-Request; asserts it names ``session_id``."""

    async def cut_sent() -> bool:
        return len(rig.nas.received) == 1

    await eventually(cut_sent, what="a Disconnect-Request")
    assert rig.nas.received[0][0] == 40  # Disconnect-Request
    assert rig.nas.decoded(0)["Acct-Session-Id"] == [session_id]


async def test_a_radius_call_is_cut_when_its_slices_run_out(rig: CutRig) -> None:
    app = rig.app
    await add_sliced_plan(app)
    session, access = await sliced_account(rig, "3100", "SLICE-1")
    reply = await accepted(rig, access)
    # The NAS is told what the funds could pay for now (180 s), and to report each slice.
    assert reply.attributes["Session-Timeout"] == ["180"]
    assert reply.attributes["Acct-Interim-Interval"] == ["60"]
    await started(rig, session)
    interim = [("Acct-Status-Type", "Interim-Update"), *session]
    assert await radius(rig, "acct", [*interim, ("Acct-Session-Time", "60")]) == (
        "Accounting-Response"
    )
    assert rig.nas.received == []  # extended: 120 s are held
    # Another call takes what is left (0.01); the next interim cannot extend: the NAS
    # is told to end the call now.
    other = await app.services.calls.authorize(AuthorizeRequest("3100", GERMANY, call_id="other"))
    assert (other.max_duration, other.reserved) == (60, 10_000)
    assert await radius(rig, "acct", [*interim, ("Acct-Session-Time", "120")]) == (
        "Accounting-Response"
    )
    await disconnect_sent(rig, "SLICE-1")
    stop = [("Acct-Status-Type", "Stop"), *session, ("Acct-Session-Time", "121")]
    assert await radius(rig, "acct", stop) == "Accounting-Response"
    view = await account(app, "3100")
    assert micro(view["balance"]) >= 0


async def test_a_repeated_access_request_of_a_sliced_call_is_answered_as_the_first(
    rig: CutRig,
) -> None:
    # The first Access-Accept was lost: the NAS asks again for the same session. Before,
    # the repeat said one slice (60 s) as Session-Timeout and no Acct-Interim-Interval,
    # so the NAS cut the call after a minute.
    app = rig.app
    await add_sliced_plan(app)
    _, access = await sliced_account(rig, "3200", "SLICE-AGAIN")
    first = await radclient("auth", rig.server.auth_port, NAS_SECRET, access)
    again = await radclient("auth", rig.server.auth_port, NAS_SECRET, access)
    assert (first.code, again.code) == ("Access-Accept", "Access-Accept"), (first, again)
    for reply in (first, again):
        # What the funds could pay for (180 s), reported slice by slice.
        assert reply.attributes["Session-Timeout"] == ["180"], reply
        assert reply.attributes["Acct-Interim-Interval"] == ["60"], reply
    answered = {k: v for k, v in first.attributes.items() if k != "Message-Authenticator"}
    repeated = {k: v for k, v in again.attributes.items() if k != "Message-Authenticator"}
    assert repeated == answered
    # One call holds one slice (0.01): the repeat reserved nothing more.
    view = await account(app, "3200")
    assert (view["reserved"], view["lines_in_use"]) == ("0.010000", 1)


async def test_a_sliced_radius_call_whose_interims_stop_is_cut_when_it_expires(
    rig: CutRig,
) -> None:
    # The NAS was told 180 s (the funds' ceiling) but sends no interim: the call expires
    # after its one slice plus grace and is charged that slice. Before, the NAS was not
    # told, ran the call on to 180 s, and its late Stop was charged only as far as the
    # account could pay. Now the janitor that closes it sends a Disconnect-Request.
    app = rig.app
    await add_sliced_plan(app)
    session, access = await sliced_account(rig, "3300", "SLICE-MUTE")
    reply = await accepted(rig, access)
    assert reply.attributes["Session-Timeout"] == ["180"]
    await started(rig, session)
    janitor = Janitor(
        app.services.calls, app.services.store, disconnect=janitor_disconnect(app.services)
    )
    expiry = past_one_slice(app)
    assert await janitor.sweep(now=expiry) == 1
    # Charged its slice (full_grant), and its NAS told to end it.
    await charged_its_slice(app, "3300")
    await disconnect_sent(rig, "SLICE-MUTE")
    # The NAS ends the call and reports it: the rest is charged as a late stop.
    stop = [("Acct-Status-Type", "Stop"), *session, ("Acct-Session-Time", "95")]
    assert await radius(rig, "acct", stop) == "Accounting-Response"
    view = await account(app, "3300")
    assert view["balance"] == "0.010000"  # 95 s, billed per minute: 0.02
    # Only one sweep closes it: the NAS is told once.
    assert await janitor.sweep(now=expiry + 60) == 0
    assert len(rig.nas.received) == 1


async def test_a_nas_that_does_not_answer_holds_up_no_sweep(rig: CutRig) -> None:
    # The NAS is down: it takes the Disconnect-Requests and answers none, and each waits
    # out its retries (here 30 s per try). Before, the sweep waited for them: the calls
    # expiring meanwhile stayed open, their funds held, until the NAS's retries ran out.
    app = rig.app
    rig.nas.silent = True
    await add_sliced_plan(app)

    async def slow_disconnect(record: CallRecord) -> DisconnectOutcome | None:
        return await disconnect_call(rig.server.clients, record, 30.0)

    janitor = Janitor(app.services.calls, app.services.store, disconnect=slow_disconnect)
    try:
        first = ["3400", "3401", "3402"]
        for account_id in first:
            await started_sliced_call(rig, account_id, f"MUTE-{account_id}")
        expiry = past_one_slice(app)
        sweeping = asyncio.create_task(janitor.sweep(now=expiry))

        async def swept() -> bool:
            return sweeping.done()

        await eventually(swept, what="the sweep to end while its NAS says nothing")
        assert sweeping.result() == 3
        for account_id in first:
            # Charged its slice, nothing held any more.
            await charged_its_slice(app, account_id)

        # The NAS was asked to end each of them, and none has answered yet.
        async def all_asked() -> bool:
            return len(rig.nas.received) >= 3

        await eventually(all_asked, what="three Disconnect-Requests")
        asked = {rig.nas.decoded(n)["Acct-Session-Id"][0] for n in range(len(rig.nas.received))}
        assert asked == {f"MUTE-{account_id}" for account_id in first}
        assert all(datagram[0] == 40 for datagram in rig.nas.received)
        assert janitor.disconnects_pending == 3

        # A call that expires while they wait is closed by the next sweep all the same.
        await started_sliced_call(rig, "3403", "MUTE-3403")
        later = past_one_slice(app)
        assert await asyncio.wait_for(janitor.sweep(now=later), timeout=10) == 1
        view = await account(app, "3403")
        assert (view["balance"], view["reserved"]) == ("0.020000", "0.000000")
        assert janitor.disconnects_pending == 4
    finally:
        # Shutdown gives up the requests still waiting on the NAS.
        given_up = await janitor.close()
    assert given_up == 4
    assert janitor.disconnects_pending == 0
