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

import pytest

from ocs.charging.lifecycle import MAX_CALL_ID
from ocs.config import RadiusClientConfig, with_overrides
from ocs.radius.call_identity import radius_call_id
from ocs.radius.clients import NasClient, load_client_table
from ocs.radius.server import RadiusServer
from tests.conftest import RunningApp, account, add_plan, eventually
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
    settings = with_overrides(
        app.services.settings,
        radius_host="127.0.0.1",
        radius_auth_port=0,
        radius_acct_port=0,
        radius_clients=(
            RadiusClientConfig(name="gw-a", network="127.0.0.1/32", secret=SECRET_A),
            RadiusClientConfig(name="gw-b", network="127.0.0.2/32", secret=SECRET_B),
        ),
    )
    server = RadiusServer(
        app.services.calls, settings, await load_client_table(app.services.pool, settings)
    )
    await server.start()
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
    assert radius_call_id(stated, order, client) == "7@gw-a:sbc-east"
    unstated = access_request(SECRET_A, [("Acct-Session-Id", "7")])
    unstated.source = ("127.0.0.9", 1812)
    assert radius_call_id(unstated, order, client) == "7@gw-a:127.0.0.9"
    # A conference id is the same call whichever NAS reports it.
    conference = access_request(SECRET_A, [("h323-conf-id", "h323-conf-id=C0 FF EE")])
    assert radius_call_id(conference, order, client) == "C0 FF EE"
    # A NAS-Identifier of 200 characters: the NAS is named by a digest, within the limit.
    long_name = access_request(SECRET_A, [("Acct-Session-Id", "7"), ("NAS-Identifier", "n" * 200)])
    qualified = radius_call_id(long_name, order, client)
    assert qualified is not None and len(qualified) <= MAX_CALL_ID
    assert qualified.startswith("7@") and len(qualified) == len("7@") + 16
    other = access_request(SECRET_A, [("Acct-Session-Id", "7"), ("NAS-Identifier", "m" * 200)])
    assert radius_call_id(other, order, client) != qualified
