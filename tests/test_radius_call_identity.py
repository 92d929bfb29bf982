"""Whose call a RADIUS request names (decision 0048).

Two gateways of one operator each number their sessions from 00000001, as RFC 2866
allows; a second NAS client may send accounting for any call id it likes; and a
client is often a whole network of NASes. Each test sends exact packets from
loopback sockets of its own: 127.0.0.1 is client ``gw-a``, 127.0.0.2 client
``gw-b``, each with its own secret, and ``NAS-IP-Address`` tells the NASes of one
client apart.

Rates (tests/conftest.py RETAIL_DECK, EUR): Germany (49) 0.012 a minute, by the second.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import ip_network
from urllib.parse import quote

import pytest

from ocs.charging.lifecycle import MAX_CALL_ID, CallService
from ocs.charging.values import AuthorizeRequest, Origin
from ocs.config import RadiusClientConfig
from ocs.radius.call_identity import nas_node, radius_call_id
from ocs.radius.clients import NasClient
from ocs.radius.server import RadiusServer
from tests.conftest import RunningApp, account, add_plan, eventually, started_radius
from tests.helpers import Pairs, new_account
from tests.radius_udp import (
    UdpClient,
    access_request,
    accounting_request,
    decode_reply,
    sample,
    wire,
)

GERMANY = "4930901820"
SECRET_A = "secret-of-gw-a"
SECRET_B = "secret-of-gw-b"


@dataclass
class TwoClients:
    """A RADIUS server that trusts two NAS clients, and a socket on each one's address."""

    app: RunningApp
    server: RadiusServer
    gw_a: UdpClient
    gw_b: UdpClient

    async def access(self, sender: UdpClient, secret: str, pairs: Pairs) -> str:
        """Send an Access-Request; the reply's code name (and a refusal's message)."""
        request = access_request(secret, pairs)
        data = await sender.exchange(wire(request), self.server.auth_port)
        assert data is not None, "no answer to an Access-Request"
        reply = decode_reply(request, data)
        if reply.code == 2:
            return "Access-Accept"
        return f"Access-Reject: {reply.get('Reply-Message')}"

    async def accounting(self, sender: UdpClient, secret: str, status: str, pairs: Pairs) -> None:
        """Send an Accounting-Request, which must be answered."""
        request = accounting_request(secret, [("Acct-Status-Type", status), *pairs])
        data = await sender.exchange(wire(request), self.server.acct_port)
        assert data is not None, f"no Accounting-Response to a {status}"


@pytest.fixture
async def rig(app: RunningApp) -> AsyncIterator[TwoClients]:
    await add_plan(app.services)
    server = await started_radius(
        app.services,
        (
            RadiusClientConfig(name="gw-a", network="127.0.0.1/32", secret=SECRET_A),
            RadiusClientConfig(name="gw-b", network="127.0.0.2/32", secret=SECRET_B),
        ),
    )
    gw_a = await UdpClient.open("127.0.0.1")
    gw_b = await UdpClient.open("127.0.0.2")
    try:
        yield TwoClients(app, server, gw_a, gw_b)
    finally:
        gw_a.close()
        gw_b.close()
        server.close_listeners()
        await server.drain(5)


def call(user: str, nas_ip: str, session: str) -> Pairs:
    """What identifies a call in each of its requests: account, NAS, session id."""
    return [("User-Name", user), ("NAS-IP-Address", nas_ip), ("Acct-Session-Id", session)]


async def test_two_nases_counting_the_same_session_ids_charge_their_own_accounts(
    rig: TwoClients,
) -> None:
    # Both gateways of client gw-a number their first call 00000001, for two accounts.
    # Keyed by the session id alone, the second grant took the first's place: the first
    # gateway's Stop charged the second account, and the first call was never charged.
    await new_account(rig.app, "ci-1")
    await new_account(rig.app, "ci-2")
    first, second = call("ci-1", "10.0.0.1", "00000001"), call("ci-2", "10.0.0.2", "00000001")
    for pairs in (first, second):
        assert await rig.access(rig.gw_a, SECRET_A, [*pairs, ("Called-Station-Id", GERMANY)]) == (
            "Access-Accept"
        )
        await rig.accounting(rig.gw_a, SECRET_A, "Start", pairs)
    await rig.accounting(rig.gw_a, SECRET_A, "Stop", [*first, ("Acct-Session-Time", "60")])
    await rig.accounting(rig.gw_a, SECRET_A, "Stop", [*second, ("Acct-Session-Time", "120")])
    one, two = await account(rig.app, "ci-1"), await account(rig.app, "ci-2")
    assert (one["balance"], one["lines_in_use"]) == ("0.988000", 0)  # 60 s at 0.012 a minute
    assert (two["balance"], two["lines_in_use"]) == ("0.976000", 0)  # 120 s
    expected = [("00000001@gw-a:10.0.0.1", "ci-1", 60), ("00000001@gw-a:10.0.0.2", "ci-2", 120)]

    async def recorded() -> bool:
        async with rig.app.services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT call_id, account_id, duration FROM cdrs ORDER BY duration"
            )
        return [tuple(r) for r in rows] == expected

    await eventually(recorded, within=10, what="each call's CDR under its own id and account")


async def test_another_client_can_neither_stop_nor_report_a_call(rig: TwoClients) -> None:
    # gw-b sent a Stop of 0 s for gw-a's call, which then cost nothing however long it ran.
    await new_account(rig.app, "ci-3")
    conference = [("User-Name", "ci-3"), ("h323-conf-id", "h323-conf-id=AB12 CD34 0 EF56")]
    granted = await rig.access(rig.gw_a, SECRET_A, [*conference, ("Called-Station-Id", GERMANY)])
    assert granted == "Access-Accept"
    await rig.accounting(rig.gw_a, SECRET_A, "Start", conference)
    unknown = sample("ocs_radius_packets_total", type="accounting-stop", result="unknown_call")
    # gw-b is answered, so it stops retransmitting, and nothing changes.
    await rig.accounting(
        rig.gw_b, SECRET_B, "Interim-Update", [*conference, ("Acct-Session-Time", "5")]
    )
    await rig.accounting(rig.gw_b, SECRET_B, "Stop", [*conference, ("Acct-Session-Time", "0")])
    assert (
        sample("ocs_radius_packets_total", type="accounting-stop", result="unknown_call")
        == unknown + 1
    )
    live = await rig.app.services.store.live_calls_of("ci-3")
    assert list(live) == ["AB12 CD34 0 EF56"]
    assert live["AB12 CD34 0 EF56"].used == 0  # gw-b's report of 5 s was not taken
    # The gateway that carries the call stops it after ten minutes: 0.12 charged.
    await rig.accounting(rig.gw_a, SECRET_A, "Stop", [*conference, ("Acct-Session-Time", "600")])
    view = await account(rig.app, "ci-3")
    assert (view["balance"], view["lines_in_use"]) == ("0.880000", 0)


async def test_two_clients_sharing_a_conference_id_each_charge_their_own_account(
    rig: TwoClients,
) -> None:
    # gw-a and gw-b both carry conference SHARED-1, each for an account of its own. The
    # second grant replaced the first's reference: gw-a's Stop then found gw-b's call,
    # was answered as unknown, and gw-a's caller was never charged (decision 0052).
    await new_account(rig.app, "ci-11")
    await new_account(rig.app, "ci-12")
    conference = ("h323-conf-id", "h323-conf-id=SHARED-1")
    legs = ((rig.gw_a, SECRET_A, "ci-11", "60"), (rig.gw_b, SECRET_B, "ci-12", "120"))
    for sender, secret, user, _ in legs:
        pairs = [("User-Name", user), conference]
        granted = await rig.access(sender, secret, [*pairs, ("Called-Station-Id", GERMANY)])
        assert granted == "Access-Accept"
        await rig.accounting(sender, secret, "Start", pairs)
    unknown = sample("ocs_radius_packets_total", type="accounting-stop", result="unknown_call")
    for sender, secret, user, seconds in legs:
        pairs = [("User-Name", user), conference, ("Acct-Session-Time", seconds)]
        await rig.accounting(sender, secret, "Stop", pairs)
    assert (
        sample("ocs_radius_packets_total", type="accounting-stop", result="unknown_call") == unknown
    )
    one, two = await account(rig.app, "ci-11"), await account(rig.app, "ci-12")
    assert (one["balance"], one["lines_in_use"]) == ("0.988000", 0)  # 60 s at 0.012 a minute
    assert (two["balance"], two["lines_in_use"]) == ("0.976000", 0)  # 120 s

    async def recorded() -> bool:
        async with rig.app.services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT call_id, account_id, duration FROM cdrs"
                " WHERE call_id = 'SHARED-1' ORDER BY duration"
            )
        return [tuple(r) for r in rows] == [("SHARED-1", "ci-11", 60), ("SHARED-1", "ci-12", 120)]

    await eventually(recorded, within=10, what="each client's CDR on its own account")


async def test_a_nas_restart_closes_its_own_calls_not_its_neighbours(rig: TwoClients) -> None:
    # Client gw-a is a network of two gateways. One restarts and sends Accounting-On: it
    # closed the calls of both, and the other's callers were charged as if cut off.
    await new_account(rig.app, "ci-4", balance="10.00", max_lines=2)
    restarted = [("User-Name", "ci-4"), ("NAS-IP-Address", "10.0.0.1"), ("h323-conf-id", "R-1")]
    running = [("User-Name", "ci-4"), ("NAS-IP-Address", "10.0.0.2"), ("h323-conf-id", "R-2")]
    for pairs in (restarted, running):
        assert await rig.access(rig.gw_a, SECRET_A, [*pairs, ("Called-Station-Id", GERMANY)]) == (
            "Access-Accept"
        )
        await rig.accounting(rig.gw_a, SECRET_A, "Start", pairs)
    # Answered once the calls are closed.
    await rig.accounting(rig.gw_a, SECRET_A, "Accounting-On", [("NAS-IP-Address", "10.0.0.1")])
    assert list(await rig.app.services.store.live_calls_of("ci-4")) == ["R-2"]

    async def recorded() -> bool:
        async with rig.app.services.pool.acquire() as conn:
            causes = await conn.fetch("SELECT call_id, termination_cause FROM cdrs")
        return [tuple(r) for r in causes] == [("R-1", "nas-reboot")]

    await eventually(recorded, within=10, what="the restarted gateway's call recorded")


def test_a_session_id_is_qualified_by_the_nas_it_states_else_by_where_it_came_from() -> None:
    client = NasClient("gw-a", ip_network("127.0.0.0/8"), b"s", require_message_authenticator=False)
    order = ("h323-conf-id", "Acct-Session-Id", "call-id")
    stated = access_request(SECRET_A, [("Acct-Session-Id", "7"), ("NAS-Identifier", "sbc-east")])
    assert radius_call_id(stated, order, client, nas_node(stated)) == "7@gw-a:sbc-east"
    unstated = access_request(SECRET_A, [("Acct-Session-Id", "7")])
    unstated.source = ("127.0.0.9", 1812)
    assert radius_call_id(unstated, order, client, nas_node(unstated)) == "7@gw-a:127.0.0.9"
    # A conference id is the same call whichever NAS reports it.
    conference = access_request(SECRET_A, [("h323-conf-id", "h323-conf-id=C0 FF EE")])
    assert radius_call_id(conference, order, client, nas_node(conference)) == "C0 FF EE"
    # A NAS-Identifier of 200 characters: the NAS is named by a digest, within the limit.
    long_name = access_request(SECRET_A, [("Acct-Session-Id", "7"), ("NAS-Identifier", "n" * 200)])
    qualified = radius_call_id(long_name, order, client, nas_node(long_name))
    assert qualified is not None and len(qualified) <= MAX_CALL_ID
    assert qualified.startswith("7@") and len(qualified) == len("7@") + 16, qualified
    other = access_request(SECRET_A, [("Acct-Session-Id", "7"), ("NAS-Identifier", "m" * 200)])
    assert radius_call_id(other, order, client, nas_node(other)) != qualified


def test_a_nas_is_named_by_its_ipv6_address_and_without_a_trailing_nul() -> None:
    client = NasClient("gw-a", ip_network("::/0"), b"s", require_message_authenticator=False)
    order = ("Acct-Session-Id",)
    on_ipv6 = access_request(
        SECRET_A, [("Acct-Session-Id", "7"), ("NAS-IPv6-Address", "2001:db8::1")]
    )
    on_ipv6.source = ("2001:db8::99", 1812)
    assert radius_call_id(on_ipv6, order, client, nas_node(on_ipv6)) == "7@gw-a:2001:db8::1"
    # Some NASes end their strings with a NUL octet; a call id may hold none.
    terminated = access_request(SECRET_A, [("Acct-Session-Id", "7"), ("NAS-Identifier", "sbc\x00")])
    assert radius_call_id(terminated, order, client, nas_node(terminated)) == "7@gw-a:sbc"
    # A "|" or a control character no call id may hold: the NAS is named by its address.
    for odd in ("gw|east", "sbc\x01x", "sbc\tx"):
        stated = access_request(SECRET_A, [("Acct-Session-Id", "7"), ("NAS-Identifier", odd)])
        stated.source = ("127.0.0.9", 1812)
        assert radius_call_id(stated, order, client, nas_node(stated)) == "7@gw-a:127.0.0.9"


async def test_a_long_session_id_is_kept_apart_and_accounted(rig: TwoClients) -> None:
    # A SIP Call-ID as the Acct-Session-Id: 120 characters. Qualified, it was 137 and
    # the call was refused as an invalid call id.
    await new_account(rig.app, "ci-5")
    session = "a" * 110 + "@sbc.example"
    pairs = call("ci-5", "10.0.0.1", session)
    assert await rig.access(rig.gw_a, SECRET_A, [*pairs, ("Called-Station-Id", GERMANY)]) == (
        "Access-Accept"
    )
    (call_id,) = await rig.app.services.store.live_calls_of("ci-5")
    assert len(call_id) == MAX_CALL_ID and call_id.startswith(session[:100])
    await rig.accounting(rig.gw_a, SECRET_A, "Start", pairs)
    await rig.accounting(rig.gw_a, SECRET_A, "Stop", [*pairs, ("Acct-Session-Time", "60")])
    view = await account(rig.app, "ci-5")
    assert (view["balance"], view["lines_in_use"]) == ("0.988000", 0)


async def test_a_call_authorized_under_its_bare_session_id_is_still_accounted(
    rig: TwoClients,
) -> None:
    # Authorized before session ids were qualified (the record names no NAS within its
    # client), stopped after the upgrade: the Stop was unknown, and the janitor later
    # charged the whole grant.
    await new_account(rig.app, "ci-6")
    calls: CallService = rig.app.services.calls
    await calls.authorize(
        AuthorizeRequest("ci-6", GERMANY, call_id="00000042"),
        Origin(nas="gw-a", wait_for_start=True),
    )
    pairs = call("ci-6", "10.0.0.1", "00000042")
    unknown = sample("ocs_radius_packets_total", type="accounting-stop", result="unknown_call")
    # Another client's Stop of that session id still finds nothing.
    await rig.accounting(rig.gw_b, SECRET_B, "Stop", [*pairs, ("Acct-Session-Time", "0")])
    assert (
        sample("ocs_radius_packets_total", type="accounting-stop", result="unknown_call")
        == unknown + 1
    )
    await rig.accounting(rig.gw_a, SECRET_A, "Start", pairs)
    await rig.accounting(rig.gw_a, SECRET_A, "Stop", [*pairs, ("Acct-Session-Time", "60")])
    view = await account(rig.app, "ci-6")
    assert (view["balance"], view["lines_in_use"]) == ("0.988000", 0)


async def test_an_http_switch_cannot_stop_a_radius_call(rig: TwoClients) -> None:
    await new_account(rig.app, "ci-7")
    pairs = call("ci-7", "10.0.0.1", "00000007")
    assert await rig.access(rig.gw_a, SECRET_A, [*pairs, ("Called-Station-Id", GERMANY)]) == (
        "Access-Accept"
    )
    status, body = await rig.app.post(
        f"/v1/calls/{quote('00000007@gw-a:10.0.0.1')}/stop", {"duration": 0}
    )
    assert status == 404, body
    assert list(await rig.app.services.store.live_calls_of("ci-7")) == ["00000007@gw-a:10.0.0.1"]


async def test_a_call_cached_from_its_id_s_earlier_life_does_not_hide_the_current_one(
    rig: TwoClients,
) -> None:
    # This process cached gw-a's call CONF-1; another process stopped it, and gw-b's
    # call CONF-1 (a reused conference id) is live now. gw-b's Stop reaching this
    # process found the cached call, not gw-b's, and was answered as unknown.
    await new_account(rig.app, "ci-8")
    await new_account(rig.app, "ci-9")
    here: CallService = rig.app.services.calls
    services = rig.app.services
    elsewhere = CallService(services.catalog, services.store, services.settings, services.digests)
    await here.authorize(AuthorizeRequest("ci-8", GERMANY, call_id="CONF-1"), Origin(nas="gw-a"))
    await elsewhere.stop("CONF-1", 10)
    await elsewhere.authorize(
        AuthorizeRequest("ci-9", GERMANY, call_id="CONF-1"), Origin(nas="gw-b")
    )
    charge = await here.stop("CONF-1", 60, nas="gw-b")
    assert (charge.account_id, charge.charged) == ("ci-9", 12_000)
    assert (await account(rig.app, "ci-9"))["balance"] == "0.988000"


async def test_a_restarted_nas_s_reused_session_id_is_accounted_to_its_new_call_everywhere(
    rig: TwoClients,
) -> None:
    # gw-a's session 00000001 of ci-10 was authorized on this process, and started and
    # stopped on another. The NAS restarted and numbers its sessions from 00000001 again:
    # now a call of ci-11, authorized on the other process. Its Start, Interim and Stop
    # reach this process, which kept ci-10's call: the Start was refused as already
    # stopped, and the call never charged.
    await new_account(rig.app, "ci-10")
    await new_account(rig.app, "ci-11")
    here: CallService = rig.app.services.calls
    services = rig.app.services
    elsewhere = CallService(services.catalog, services.store, services.settings, services.digests)
    session = "00000001@gw-a:10.0.0.1"
    waits = Origin(nas="gw-a", wait_for_start=True)
    await here.authorize(AuthorizeRequest("ci-10", GERMANY, call_id=session), waits)
    await elsewhere.start(session, nas="gw-a")
    await elsewhere.stop(session, 10, nas="gw-a")
    await elsewhere.authorize(AuthorizeRequest("ci-11", GERMANY, call_id=session), waits)

    started = await here.start(session, nas="gw-a")
    assert started.account_id == "ci-11"
    progress = await here.update(session, 30, nas="gw-a")
    assert (progress.account_id, progress.used) == ("ci-11", 30)
    charge = await here.stop(session, 60, nas="gw-a")
    assert (charge.account_id, charge.charged, charge.repeated) == ("ci-11", 12_000, False)
    assert (await account(rig.app, "ci-10"))["balance"] == "0.998000"
    assert (await account(rig.app, "ci-11"))["balance"] == "0.988000"


async def test_a_nas_that_names_itself_only_in_its_accounting_is_found_by_its_address(
    rig: TwoClients,
) -> None:
    # The Access-Request states no NAS identity (the call is qualified by the source
    # address); the accounting states NAS-IP-Address 10.0.0.9. Qualified by that, the
    # Start and Stop named no call, and the janitor charged the whole grant later.
    await new_account(rig.app, "ci-10")
    session = [("User-Name", "ci-10"), ("Acct-Session-Id", "00000010")]
    assert await rig.access(rig.gw_a, SECRET_A, [*session, ("Called-Station-Id", GERMANY)]) == (
        "Access-Accept"
    )
    assert list(await rig.app.services.store.live_calls_of("ci-10")) == ["00000010@gw-a:127.0.0.1"]
    stated = [*session, ("NAS-IP-Address", "10.0.0.9")]
    await rig.accounting(rig.gw_a, SECRET_A, "Start", stated)
    await rig.accounting(rig.gw_a, SECRET_A, "Stop", [*stated, ("Acct-Session-Time", "60")])
    view = await account(rig.app, "ci-10")
    assert (view["balance"], view["lines_in_use"]) == ("0.988000", 0)
