"""Cutting a live call (DELETE /v1/calls/{id}), the Disconnect-Request it sends to a
RADIUS NAS, and the janitor's close of calls whose stop never came.

A cut charges the time since the call's start with cause "cut"; the switch's own
stop that follows is charged only for what it adds, as "late-stop". A NAS
emulator on 127.0.0.1 (tests/nas_emulator.py, the approach of
tests/test_radius_disconnect.py, its checks written here again) answers
Disconnect-Requests with a signed ACK; conftest's ``rig`` fixture wires it.

Rates (tests/conftest.py RETAIL_DECK): UK Mobile 0.06 a minute, 0.15 connect fee,
30/6 billing; Germany 0.012 a minute, 1/1 billing.
"""

import asyncio
import hashlib
import hmac
import time
from typing import Any

import pytest

from ocs.charging.janitor import Janitor
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.config import with_overrides
from ocs.rating.rates import Rate, cost
from tests.conftest import CutRig, RunningApp, account, add_plan, eventually
from tests.helpers import radius
from tests.nas_emulator import NAS_SECRET, ZERO16

UK_MOBILE = "447700900123"
GERMANY = "4930901820"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def with_clock(app: RunningApp) -> Clock:
    """The app's call service, on a clock the test controls."""
    clock = Clock()
    services = app.services
    services.calls = CallService(
        services.catalog, services.store, services.settings, services.digests, clock=clock
    )
    return clock


def rate_of(app: RunningApp, destination: str) -> Rate:
    match = app.services.catalog.snapshot.tariff_for("retail", destination)
    assert match is not None
    return match[1].rate


async def cut(app: RunningApp, call_id: str) -> tuple[int, dict[str, Any]]:
    response = await app.client.delete(f"/v1/calls/{call_id}")
    return response.status, await response.json()


def money(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    return f"{sign}{micro // 1_000_000}.{micro % 1_000_000:06d}"


async def cdrs_of(app: RunningApp, call_id: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def written() -> bool:
        async with app.services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT termination_cause, duration, rated_cost, charged, nas FROM cdrs"
                " WHERE call_id = $1 ORDER BY stopped_at, entry_id",
                call_id,
            )
        found[:] = [dict(r) for r in rows]
        return len(found) >= count

    await eventually(written, what=f"{count} CDR(s) of {call_id}")
    assert len(found) == count, found
    return found


async def ledger_total(app: RunningApp, call_id: str) -> int:
    async with app.services.pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM ledger WHERE reference = $1", call_id
        )


# -- cut over HTTP ----------------------------------------------------------------------


async def test_a_cut_charges_the_elapsed_time_and_a_later_stop_only_the_rest(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "cut1", "plan": "retail", "balance": "1.00"})
    clock = with_clock(app)
    rate = rate_of(app, UK_MOBILE)
    status, grant = await app.post(
        "/v1/calls", {"account": "cut1", "destination": UK_MOBILE, "call_id": "cut-1"}
    )
    assert status == 201, grant

    clock.now += 125
    status, body = await cut(app, "cut-1")
    assert status == 200, body
    assert cost(rate, 125) == 276_000
    assert body == {
        "call_id": "cut-1",
        "account": "cut1",
        "duration": 125,
        "cost": "0.276000",
        "balance": "0.724000",
        "cause": "cut",
        "disconnect": None,  # not a RADIUS call: no NAS to tell
    }
    view = await account(app, "cut1")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == ("0.724000", "0.000000", 0)

    status, again = await cut(app, "cut-1")
    assert (status, again["error"]["reason"]) == (404, "call_not_found")
    assert (await account(app, "cut1"))["balance"] == "0.724000"

    # The switch's stop reports 200 s: only what they add to the cut is charged.
    status, stopped = await app.post("/v1/calls/cut-1/stop", {"duration": 200})
    assert status == 200, stopped
    assert (stopped["cost"], stopped["balance"], stopped["repeated"]) == (
        money(cost(rate, 200)),
        money(1_000_000 - cost(rate, 200)),
        False,
    )
    status, repeated = await app.post("/v1/calls/cut-1/stop", {"duration": 200})
    assert (status, repeated["repeated"]) == (200, True)
    assert (await account(app, "cut1"))["balance"] == money(1_000_000 - cost(rate, 200))

    # The late stop's CDR amends the cut's: together they are the one 200 s call.
    cdrs = await cdrs_of(app, "cut-1", 2)
    assert [(c["termination_cause"], c["duration"], c["charged"]) for c in cdrs] == [
        ("cut", 125, cost(rate, 125)),
        ("late-stop", 75, cost(rate, 200) - cost(rate, 125)),
    ]
    assert await ledger_total(app, "cut-1") == -cost(rate, 200)


async def test_a_stop_reporting_less_than_the_cut_gives_back_the_difference(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "cut2", "plan": "retail", "balance": "1.00"})
    clock = with_clock(app)
    calls = app.services.calls
    await calls.authorize(AuthorizeRequest("cut2", UK_MOBILE, call_id="cut-2"))
    clock.now += 60
    charge, _ = await calls.cut("cut-2")
    assert (charge.duration, charge.charged, charge.cause) == (60, 210_000, "cut")
    # The switch reports the call it carried: 45 s, 0.198 (0.15 connect + 48 s at 0.06).
    stopped = await calls.stop("cut-2", 45)
    assert (stopped.charged, stopped.cause, stopped.repeated) == (198_000, "late-stop", False)
    assert (await account(app, "cut2"))["balance"] == "0.802000"
    again = await calls.stop("cut-2", 45)
    assert (again.charged, again.repeated) == (198_000, True)
    assert (await account(app, "cut2"))["balance"] == "0.802000"
    cdrs = await cdrs_of(app, "cut-2", 2)
    assert [(c["termination_cause"], c["duration"], c["charged"]) for c in cdrs] == [
        ("cut", 60, 210_000),
        ("late-stop", -15, -12_000),
    ]
    assert await ledger_total(app, "cut-2") == -198_000


async def test_a_cut_before_the_answer_is_free_and_the_answered_stop_is_charged(
    app: RunningApp,
) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "cut3", "plan": "retail", "balance": "1.00"})
    clock = with_clock(app)
    calls = app.services.calls
    await calls.authorize(
        AuthorizeRequest("cut3", UK_MOBILE, call_id="cut-3"), Origin(wait_for_start=True)
    )
    clock.now += 40  # still ringing: no Start yet
    status, body = await cut(app, "cut-3")
    assert status == 200, body
    assert (body["duration"], body["cost"], body["balance"]) == (0, "0.000000", "1.000000")
    charge = await calls.stop("cut-3", 45)
    assert (charge.charged, charge.cause, charge.repeated) == (198_000, "late-stop", False)
    assert (await account(app, "cut3"))["balance"] == "0.802000"


async def test_cutting_an_unknown_call_is_404(app: RunningApp) -> None:
    status, body = await cut(app, "never-was")
    assert (status, body["error"]["reason"]) == (404, "call_not_found")


# -- cut of a RADIUS call: Disconnect-Request to its NAS ---------------------------------


def _attributes(data: bytes) -> list[tuple[int, int]]:
    """(offset, type) of each attribute."""
    found, pos = [], 20
    while pos < len(data):
        found.append((pos, data[pos]))
        pos += data[pos + 1]
    return found


def request_authenticator_ok(data: bytes, secret: bytes) -> bool:
    """RFC 5176 section 3.3: MD5(Code+Identifier+Length+16 zero octets+Attributes+Secret)."""
    expected = hashlib.md5(data[:4] + ZERO16 + data[20:] + secret).digest()
    return hmac.compare_digest(expected, data[4:20])


def message_authenticator_ok(data: bytes, secret: bytes) -> bool:
    for pos, kind in _attributes(data):
        if kind == 80:
            zeroed = data[: pos + 2] + ZERO16 + data[pos + 18 :]
            mac = hmac.new(secret, zeroed[:4] + ZERO16 + zeroed[20:], "md5").digest()
            return hmac.compare_digest(mac, data[pos + 2 : pos + 18])
    return False


async def test_cutting_a_radius_call_sends_a_disconnect_request_to_its_nas(rig: CutRig) -> None:
    app = rig.app
    await app.post("/v1/accounts", {"id": "2500", "plan": "retail", "balance": "1.00"})
    session = [("User-Name", "2500"), ("Acct-Session-Id", "SESS-2500-1")]
    access = [("NAS-IP-Address", "127.0.0.1"), *session, ("Called-Station-Id", GERMANY)]
    before = int(time.time())
    assert await radius(rig, "auth", access) == "Access-Accept"
    assert await radius(rig, "acct", [("Acct-Status-Type", "Start"), *session]) == (
        "Accounting-Response"
    )

    # The call's id: the NAS's session id, qualified by its client and NAS (decision 0048).
    status, body = await cut(app, "SESS-2500-1@cut-nas:127.0.0.1")
    assert status == 200, body
    assert (body["cause"], body["disconnect"]) == ("cut", "ack")
    # Started a moment ago, on the real clock: at most the seconds since the request.
    assert 0 <= body["duration"] <= int(time.time()) - before
    assert len(rig.nas.received) == 1
    data = rig.nas.received[0]
    assert data[0] == 40  # Disconnect-Request
    assert request_authenticator_ok(data, NAS_SECRET.encode())
    assert message_authenticator_ok(data, NAS_SECRET.encode())
    request = rig.nas.decoded(0)
    assert request["Acct-Session-Id"] == ["SESS-2500-1"]
    assert "User-Name" not in request
    view = await account(app, "2500")
    assert (view["lines_in_use"], view["reserved"]) == (0, "0.000000")

    # The NAS ends the call and reports 45 s: the account pays 45 s in all (0.009).
    stop = [("Acct-Status-Type", "Stop"), *session, ("Acct-Session-Time", "45")]
    assert await radius(rig, "acct", stop) == "Accounting-Response"
    assert (await account(app, "2500"))["balance"] == "0.991000"
    cdrs = await cdrs_of(app, "SESS-2500-1@cut-nas:127.0.0.1", 2)
    assert [c["termination_cause"] for c in cdrs] == ["cut", "late-stop"]
    assert {c["nas"] for c in cdrs} == {"cut-nas"}
    assert sum(c["charged"] for c in cdrs) == 9_000
    assert len(rig.nas.received) == 1  # one cut, one request


async def test_the_disconnect_names_the_session_the_nas_knows(rig: CutRig) -> None:
    """A Cisco gateway keys ocs's call by h323-conf-id, yet knows the call by its
    Acct-Session-Id: that is the session a Disconnect-Request must name (RFC 5176 3.)."""
    app = rig.app
    await app.post("/v1/accounts", {"id": "2501", "plan": "retail", "balance": "1.00"})
    session = [
        ("User-Name", "2501"),
        ("Acct-Session-Id", "0000004F"),
        ("h323-conf-id", "h323-conf-id=CONF-2501"),
    ]
    access = [("NAS-IP-Address", "127.0.0.1"), *session, ("Called-Station-Id", GERMANY)]
    assert await radius(rig, "auth", access) == "Access-Accept"
    assert await radius(rig, "acct", [("Acct-Status-Type", "Start"), *session]) == (
        "Accounting-Response"
    )
    status, body = await cut(app, "CONF-2501")
    assert status == 200, body
    assert len(rig.nas.received) == 1
    assert rig.nas.decoded(0)["Acct-Session-Id"] == ["0000004F"]


# -- the janitor: calls whose stop never came ----------------------------------------------


@pytest.mark.parametrize(
    ("policy", "duration", "charged"),
    [
        ("last_reported", 30, 180_000),  # the interim's 30 s: 0.15 + 0.03
        ("full_grant", 846, 996_000),  # the whole grant the 1.00 paid for
    ],
)
async def test_the_janitor_closes_a_stale_call_once_by_policy(
    app: RunningApp, policy: str, duration: int, charged: int
) -> None:
    await add_plan(app.services)
    for account_id in ("stale", "ringing"):
        await app.post("/v1/accounts", {"id": account_id, "plan": "retail", "balance": "1.00"})
    services = app.services
    settings = with_overrides(services.settings, stale_call_policy=policy)
    calls = CallService(services.catalog, services.store, settings, services.digests)
    grant = await calls.authorize(AuthorizeRequest("stale", UK_MOBILE, call_id="gone"))
    assert grant.max_duration == 846
    await calls.update("gone", 30)
    # An accept never answered: released free under either policy.
    await calls.authorize(
        AuthorizeRequest("ringing", UK_MOBILE, call_id="rang"), Origin(wait_for_start=True)
    )

    later = 2_000_000_000  # far past every expiry
    closed = await asyncio.gather(
        Janitor(calls, services.store).sweep(now=later),
        Janitor(calls, services.store).sweep(now=later),
    )
    assert sum(closed) == 2  # each call closed by one of the two janitors, once
    assert await Janitor(calls, services.store).sweep(now=later) == 0
    view = await account(app, "stale")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == (
        money(1_000_000 - charged),
        "0.000000",
        0,
    )
    [gone] = await cdrs_of(app, "gone", 1)
    assert (gone["termination_cause"], gone["duration"], gone["charged"]) == (
        "expired",
        duration,
        charged,
    )
    view = await account(app, "ringing")
    assert (view["balance"], view["reserved"], view["lines_in_use"]) == ("1.000000", "0.000000", 0)
    [rang] = await cdrs_of(app, "rang", 1)
    assert (rang["termination_cause"], rang["charged"]) == ("start-timeout", 0)
    assert await ledger_total(app, "gone") == -charged
