"""The RADIUS reply cache answers only true retransmissions, and only after verification.

RFC 5080 duplicates are identical packets from the same source. Field trials
found a packet that reused an answered request's identifier and Request
Authenticator, with other attributes and a broken Message-Authenticator,
answered from the cache. Now every packet is verified first (a broken one is
dropped and counted by reason), and the cache key covers the whole packet.

Rates (tests/conftest.py RETAIL_DECK, EUR): Germany 0.012 a minute by the
second; UK Mobile 0.060 a minute, 30/6, connect fee 0.150.
"""

import hashlib

import pytest

from tests.conftest import RADIUS_SECRET, RunningRadius, eventually
from tests.helpers import new_account
from tests.radius_udp import (
    UdpClient,
    access_request,
    accounting_request,
    decode_reply,
    sample,
    verified,
    wire,
)

GERMANY = "4930901820"
UK_MOBILE = "447700900123"
DROPS = "ocs_radius_dropped_total"
DUPLICATES = "ocs_radius_duplicates_total"


@pytest.fixture
async def nas(nas: RunningRadius) -> RunningRadius:
    """The RADIUS server with the retail plan (conftest's ``nas``) and a funded account
    with two lines."""
    await new_account(nas.app, "3001", balance="1.00", max_lines=2)
    return nas


def _offset(data: bytes, kind: int) -> int:
    pos = 20
    while pos < len(data):
        if data[pos] == kind:
            return pos
        pos += data[pos + 1]
    raise AssertionError(f"attribute {kind} not in the packet")


def _break_message_authenticator(data: bytes) -> bytes:
    at = _offset(data, 80)
    return data[: at + 2] + bytes([data[at + 2] ^ 0x01]) + data[at + 3 :]


async def _dropped(reason: str, before: float) -> None:
    async def counted() -> bool:
        return sample(DROPS, reason=reason) >= before + 1

    await eventually(counted, within=5, what=f"a drop counted as {reason}")


async def _lines_in_use(nas: RunningRadius) -> int:
    status, body = await nas.app.get("/v1/accounts/3001")
    assert status == 200, body
    return int(body["lines_in_use"])


async def test_an_altered_request_with_a_broken_message_authenticator_is_dropped_not_answered(
    nas: RunningRadius, udp: UdpClient
) -> None:
    first = access_request(RADIUS_SECRET, [("User-Name", "3001"), ("Called-Station-Id", GERMANY)])
    first_wire = wire(first)
    reply = await udp.exchange(first_wire, nas.auth_port)
    assert reply is not None and reply[0] == 2 and verified(first, reply)

    # Same identifier and Request Authenticator, another destination, and a
    # Message-Authenticator that no longer matches: a forgery, not a retransmission.
    altered = access_request(
        RADIUS_SECRET, [("User-Name", "3001"), ("Called-Station-Id", UK_MOBILE)]
    )
    altered.id, altered.authenticator = first.id, first.authenticator
    forged = _break_message_authenticator(wire(altered))
    assert forged[1] == first_wire[1] and forged[4:20] == first_wire[4:20]
    drops = sample(DROPS, reason="bad_message_authenticator")
    duplicates = sample(DUPLICATES, type="auth")
    udp.send(forged, nas.auth_port)
    await _dropped("bad_message_authenticator", drops)
    assert udp.unread() == []  # the cached Access-Accept did not go out
    assert sample(DUPLICATES, type="auth") == duplicates
    assert await _lines_in_use(nas) == 1

    # The genuine retransmission still gets the cached reply, byte for byte.
    assert await udp.exchange(first_wire, nas.auth_port) == reply
    assert sample(DUPLICATES, type="auth") == duplicates + 1
    assert await _lines_in_use(nas) == 1


async def test_an_altered_request_with_a_valid_message_authenticator_is_a_new_request(
    nas: RunningRadius, udp: UdpClient
) -> None:
    first = access_request(RADIUS_SECRET, [("User-Name", "3001"), ("Called-Station-Id", GERMANY)])
    reply = await udp.exchange(wire(first), nas.auth_port)
    assert reply is not None and reply[0] == 2
    # 1.00 EUR at 0.012 a minute: 5000 s.
    assert decode_reply(first, reply)["Session-Timeout"] == [5000]

    # A NAS that reuses an identifier and authenticator for another request (it
    # signs it properly) gets that request's own answer, not the first one's.
    other = access_request(RADIUS_SECRET, [("User-Name", "3001"), ("Called-Station-Id", UK_MOBILE)])
    other.id, other.authenticator = first.id, first.authenticator
    duplicates = sample(DUPLICATES, type="auth")
    answer = await udp.exchange(wire(other), nas.auth_port)
    # Its own answer: the first call reserved the whole balance, so this one is
    # refused (a cached reply would have been the first call's Access-Accept).
    assert answer is not None and verified(other, answer)
    assert answer[0] == 3, decode_reply(other, answer)
    assert decode_reply(other, answer)["h323-return-code"] == ["h323-return-code=4"]
    assert sample(DUPLICATES, type="auth") == duplicates
    assert await _lines_in_use(nas) == 1


async def test_an_altered_accounting_stop_is_dropped_not_answered_from_the_cache(
    nas: RunningRadius, udp: UdpClient
) -> None:
    call = [("User-Name", "3001"), ("Acct-Session-Id", "CACHE-1")]
    granted = access_request(RADIUS_SECRET, [*call, ("Called-Station-Id", GERMANY)])
    assert (await udp.exchange(wire(granted), nas.auth_port) or b"\0")[0] == 2
    start = accounting_request(RADIUS_SECRET, [("Acct-Status-Type", "Start"), *call])
    assert await udp.exchange(wire(start), nas.acct_port) is not None
    stop_wire = wire(
        accounting_request(
            RADIUS_SECRET, [("Acct-Status-Type", "Stop"), *call, ("Acct-Session-Time", "60")]
        )
    )
    reply = await udp.exchange(stop_wire, nas.acct_port)
    assert reply is not None and reply[0] == 5

    # The same header with a longer session: the Request Authenticator (an MD5 over
    # the packet and the secret) no longer matches, so it is no retransmission.
    longer = accounting_request(
        RADIUS_SECRET, [("Acct-Status-Type", "Stop"), *call, ("Acct-Session-Time", "6000")]
    )
    body = wire(longer)[20:]
    forged = stop_wire[:2] + (20 + len(body)).to_bytes(2, "big") + stop_wire[4:20] + body
    assert (
        hashlib.md5(forged[:4] + bytes(16) + body + RADIUS_SECRET.encode()).digest()
        != (forged[4:20])
    )
    drops = sample(DROPS, reason="bad_authenticator")
    udp.send(forged, nas.acct_port)
    await _dropped("bad_authenticator", drops)
    assert udp.unread() == []
    status, view = await nas.app.get("/v1/accounts/3001")
    assert status == 200 and view["balance"] == "0.988000"  # 60 s at 0.012 a minute, once
