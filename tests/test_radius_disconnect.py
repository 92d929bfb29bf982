"""RFC 5176 Disconnect-Request sender against a NAS emulator on 127.0.0.1.

The emulator checks the request's Request Authenticator and
Message-Authenticator with its own hashlib/hmac code (not the module's),
decodes the attributes with pyrad, and answers as told: ACK, NAK with an
Error-Cause, a reply signed with the wrong secret, or nothing at all.
"""

import asyncio
import hashlib
import hmac
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import pytest
from pyrad import packet as rp

from ocs.radius.dictionary import radius_dictionary
from ocs.radius.disconnect import DisconnectOutcome, send_disconnect

SECRET = b"dae-s3cret-7f2c"
WRONG_SECRET = b"not-the-secret"
SESSION = "1A2B3C4D-0001@sbc1"
PIN = "998877665544"
ZERO16 = bytes(16)
FAST = {"timeout": 0.2, "attempts": 3}

# Reply = what the NAS answers to one request: (datagram, request) -> datagrams to send.
Reply = Callable[[bytes, rp.Packet], list[bytes]]
# StartNas = the ``start_nas`` fixture: start(reply, drop_first=0) -> a listening emulator.
StartNas = Callable[..., Awaitable["Nas"]]


# --- RFC arithmetic, written out independently of ocs.radius.disconnect -----


def _attributes(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, type, value) of each attribute of a well-formed packet."""
    found, pos, length = [], 20, struct.unpack("!H", data[2:4])[0]
    while pos < length:
        kind, size = data[pos], data[pos + 1]
        assert size >= 2 and pos + size <= length, "malformed attribute"
        found.append((pos, kind, data[pos + 2 : pos + size]))
        pos += size
    return found


def _zero_message_authenticator(data: bytes) -> bytes:
    for pos, kind, _ in _attributes(data):
        if kind == 80:
            return data[: pos + 2] + ZERO16 + data[pos + 18 :]
    return data


def request_authenticator_ok(data: bytes, secret: bytes) -> bool:
    """RFC 5176 section 3.3 (as RFC 2866 section 3): MD5 over the packet with
    16 zero octets in place of the authenticator, then the secret."""
    expected = hashlib.md5(data[:4] + ZERO16 + data[20:] + secret).digest()
    return hmac.compare_digest(expected, data[4:20])


def request_message_authenticator_ok(data: bytes, secret: bytes) -> bool:
    """RFC 5176 section 3.3: HMAC-MD5 with the Request Authenticator field and
    the Message-Authenticator value zeroed."""
    values = [value for _, kind, value in _attributes(data) if kind == 80]
    if len(values) != 1:
        return False
    zeroed = _zero_message_authenticator(data)
    expected = hmac.new(secret, zeroed[:4] + ZERO16 + zeroed[20:], "md5").digest()
    return hmac.compare_digest(expected, values[0])


def build_reply(
    code: int,
    identifier: int,
    request_authenticator: bytes,
    secret: bytes,
    *,
    error_cause: int | None = None,
    message_authenticator: bool = True,
    mac_secret: bytes | None = None,
) -> bytes:
    """A Disconnect-ACK/NAK as a NAS signs it (RFC 5176 section 3.3).

    ``mac_secret`` signs the Message-Authenticator with another key than the
    Response Authenticator, to forge a reply that only the HMAC gives away."""
    attrs = b""
    if message_authenticator:
        attrs += bytes((80, 18)) + ZERO16
    if error_cause is not None:
        attrs += bytes((101, 6)) + struct.pack("!I", error_cause)
    header = struct.pack("!BBH", code, identifier, 20 + len(attrs))
    if message_authenticator:
        key = secret if mac_secret is None else mac_secret
        mac = hmac.new(key, header + request_authenticator + attrs, "md5").digest()
        attrs = attrs[:2] + mac + attrs[18:]
    response = hashlib.md5(header + request_authenticator + attrs + secret).digest()
    return header + response + attrs


# --- the NAS emulator --------------------------------------------------------


@dataclass
class Received:
    data: bytes
    identifier: int
    request_authenticator_ok: bool
    message_authenticator_ok: bool
    first_attribute: int
    attributes: dict[str, list[object]]


@dataclass
class Nas:
    """What the emulated NAS saw; ``reply`` decides what it answers."""

    secret: bytes
    reply: Reply
    drop_first: int = 0
    received: list[Received] = field(default_factory=list)
    port: int = 0


class _NasProtocol(asyncio.DatagramProtocol):
    def __init__(self, nas: Nas) -> None:
        self.nas = nas
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not a subclass of asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        nas = self.nas
        request = rp.CoAPacket(packet=data, secret=nas.secret, dict=radius_dictionary())
        names = ("Acct-Session-Id", "User-Name", "NAS-IP-Address", "Event-Timestamp")
        nas.received.append(
            Received(
                data=data,
                identifier=data[1],
                request_authenticator_ok=request_authenticator_ok(data, nas.secret),
                message_authenticator_ok=request_message_authenticator_ok(data, nas.secret),
                first_attribute=data[20],
                attributes={name: request[name] for name in names if name in request},
            )
        )
        if len(nas.received) <= nas.drop_first:
            return  # lost on the way: the sender must retransmit
        for answer in nas.reply(data, request):
            if self.transport is not None:
                self.transport.sendto(answer, addr)


@pytest.fixture
async def start_nas() -> AsyncIterator[StartNas]:
    """Starts NAS emulators on 127.0.0.1, port 0: ``start(reply, drop_first=0)``."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []

    async def start(reply: Reply, *, drop_first: int = 0) -> Nas:
        emulator = Nas(SECRET, reply, drop_first)
        # Bound when create_datagram_endpoint returns: no readiness wait needed.
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _NasProtocol(emulator), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        emulator.port = transport.get_extra_info("sockname")[1]
        return emulator

    yield start
    for transport in transports:
        transport.close()


def ack(data: bytes, request: rp.Packet) -> list[bytes]:
    return [build_reply(41, data[1], data[4:20], SECRET)]


def nak_503(data: bytes, request: rp.Packet) -> list[bytes]:
    return [build_reply(42, data[1], data[4:20], SECRET, error_cause=503)]


def signed_with_wrong_secret(data: bytes, request: rp.Packet) -> list[bytes]:
    return [build_reply(41, data[1], data[4:20], WRONG_SECRET)]


def silent(data: bytes, request: rp.Packet) -> list[bytes]:
    return []


async def disconnect(nas: Nas, **kwargs: object) -> DisconnectOutcome:
    options: dict = {"user_name": PIN, "session_id": SESSION, **FAST, **kwargs}
    return await send_disconnect("127.0.0.1", nas.port, SECRET, **options)


# --- the emulator's own checks against a captured packet ----------------------


def test_emulator_checks_accept_a_captured_disconnect_request() -> None:
    # A Disconnect-Request from tcpdump's tests/RADIUS-RFC5176.pcap (a real
    # NAS exchange, shared secret "testing123"): proves the emulator's
    # independent arithmetic matches what deployed implementations send.
    captured = bytes.fromhex(
        "28010026e1792d2b4ab349f1a4c0fcc733d091c1501258513d662847e5f8734a30dbdac8e4af"
    )
    assert request_authenticator_ok(captured, b"testing123")
    assert request_message_authenticator_ok(captured, b"testing123")
    assert not request_authenticator_ok(captured, SECRET)
    assert not request_message_authenticator_ok(captured, SECRET)


# --- the sender ----------------------------------------------------------------


async def test_ack_is_acked_and_request_is_signed_per_rfc5176(start_nas: StartNas) -> None:
    emulator = await start_nas(ack)
    before = int(time.time())
    outcome = await disconnect(emulator, nas_ip="192.0.2.10")
    assert outcome == DisconnectOutcome(acked=True, reason="ack")

    [got] = emulator.received
    assert got.data[0] == 40  # Disconnect-Request
    assert got.request_authenticator_ok
    assert got.message_authenticator_ok
    assert got.first_attribute == 80  # Message-Authenticator first (BlastRADIUS advice)
    assert got.attributes["Acct-Session-Id"] == [SESSION]
    assert got.attributes["User-Name"] == [PIN]
    assert got.attributes["NAS-IP-Address"] == ["192.0.2.10"]
    [stamp] = got.attributes["Event-Timestamp"]
    assert before <= cast(int, stamp) <= int(time.time())


async def test_optional_attributes_are_left_out(start_nas: StartNas) -> None:
    emulator = await start_nas(ack)
    outcome = await disconnect(emulator, user_name=None)
    assert outcome.acked
    [got] = emulator.received
    assert got.request_authenticator_ok and got.message_authenticator_ok
    assert set(got.attributes) == {"Acct-Session-Id", "Event-Timestamp"}


async def test_nak_reports_error_cause(start_nas: StartNas) -> None:
    emulator = await start_nas(nak_503)
    outcome = await disconnect(emulator)
    assert outcome == DisconnectOutcome(acked=False, reason="nak:503")
    assert len(emulator.received) == 1  # a NAK is an answer: no retransmission


async def test_nak_without_error_cause(start_nas: StartNas) -> None:
    emulator = await start_nas(lambda data, _: [build_reply(42, data[1], data[4:20], SECRET)])
    assert await disconnect(emulator) == DisconnectOutcome(acked=False, reason="nak")


async def test_ack_without_message_authenticator_is_accepted(start_nas: StartNas) -> None:
    emulator = await start_nas(
        lambda data, _: [build_reply(41, data[1], data[4:20], SECRET, message_authenticator=False)]
    )
    assert (await disconnect(emulator)).acked


async def test_pyrad_built_ack_is_accepted(start_nas: StartNas) -> None:
    # Interoperability with a pyrad-based NAS / radclient-style peer.
    def pyrad_ack(data: bytes, request: rp.Packet) -> list[bytes]:
        reply = cast(rp.CoAPacket, request).CreateReply()
        reply.add_message_authenticator()
        return [reply.ReplyPacket()]

    emulator = await start_nas(pyrad_ack)
    assert await disconnect(emulator) == DisconnectOutcome(acked=True, reason="ack")


async def test_reply_signed_with_wrong_secret_is_not_accepted(start_nas: StartNas) -> None:
    emulator = await start_nas(signed_with_wrong_secret)
    outcome = await disconnect(emulator)
    assert outcome == DisconnectOutcome(acked=False, reason="bad-reply")
    # Ignored, so the request went out on every attempt.
    assert len(emulator.received) == FAST["attempts"]


def _forged_nak(code: int = 42, **kwargs: object) -> Callable[[bytes], bytes]:
    """A forgery that would read as "nak:506" if it were (wrongly) accepted."""

    def forge(data: bytes) -> bytes:
        options: dict = {
            "identifier": data[1],
            "request_authenticator": data[4:20],
            "secret": SECRET,
            **kwargs,
        }
        return build_reply(code, error_cause=506, **options)

    return forge


@pytest.mark.parametrize(
    "forge",
    [
        # a good Response Authenticator over a wrong Message-Authenticator
        _forged_nak(mac_secret=WRONG_SECRET),
        # signed with another secret altogether
        lambda data: build_reply(42, data[1], data[4:20], WRONG_SECRET, error_cause=506),
        # no Message-Authenticator: only the Response Authenticator gives it away
        _forged_nak(secret=WRONG_SECRET, message_authenticator=False),
        # a changed octet: the Response Authenticator no longer matches
        lambda data: _forged_nak()(data)[:-1] + b"\x00",
        # another Identifier
        lambda data: _forged_nak(identifier=(data[1] + 1) % 256)(data),
        # a CoA-NAK, not a Disconnect-NAK
        _forged_nak(code=45),
        # signed against another Request Authenticator
        _forged_nak(request_authenticator=ZERO16),
        # shorter than its Length field says
        lambda data: _forged_nak()(data)[:-1],
    ],
    ids=[
        "bad-hmac",
        "wrong-secret",
        "wrong-secret-no-hmac",
        "tampered",
        "other-id",
        "coa-nak",
        "other-request",
        "short",
    ],
)
async def test_invalid_reply_is_ignored_and_a_later_valid_one_wins(
    start_nas: StartNas, forge: Callable[[bytes], bytes]
) -> None:
    # Each request is answered with a forged NAK first, then the NAS's genuine ACK:
    # accepting the forgery would end the exchange with "nak:506".
    emulator = await start_nas(lambda data, request: [forge(data), *ack(data, request)])
    assert await disconnect(emulator) == DisconnectOutcome(acked=True, reason="ack")
    assert len(emulator.received) == 1


async def test_silent_nas_times_out_after_all_attempts(start_nas: StartNas) -> None:
    emulator = await start_nas(silent)
    started = time.monotonic()
    outcome = await disconnect(emulator, timeout=0.2, attempts=3)
    elapsed = time.monotonic() - started
    assert outcome == DisconnectOutcome(acked=False, reason="timeout")
    assert len(emulator.received) == 3
    assert elapsed < 2.0  # bounded by attempts x timeout, not by anything longer


async def test_retransmission_resends_the_same_datagram(start_nas: StartNas) -> None:
    emulator = await start_nas(ack, drop_first=2)
    # 0.5 s an attempt: the third one's answer must be read before its timer fires, even on
    # a slow machine that pauses the test's process for a moment.
    outcome = await disconnect(emulator, timeout=0.5, attempts=3)
    assert outcome == DisconnectOutcome(acked=True, reason="ack")
    assert len(emulator.received) == 3
    first = emulator.received[0]
    for got in emulator.received:
        assert got.identifier == first.identifier
        assert got.data == first.data  # same Identifier, authenticator and timestamp
        assert got.request_authenticator_ok and got.message_authenticator_ok


async def test_too_few_attempts_for_the_losses_times_out(start_nas: StartNas) -> None:
    emulator = await start_nas(ack, drop_first=2)
    outcome = await disconnect(emulator, timeout=0.2, attempts=2)
    assert outcome == DisconnectOutcome(acked=False, reason="timeout")
    assert len(emulator.received) == 2


async def test_closed_port_is_unreachable_not_an_exception() -> None:
    # A port nothing listens on: Linux answers with ICMP port unreachable,
    # which the connected socket reports as ConnectionRefusedError.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = await send_disconnect(
        "127.0.0.1", port, SECRET, user_name=PIN, session_id=SESSION, timeout=0.1, attempts=2
    )
    assert outcome == DisconnectOutcome(acked=False, reason="unreachable")


async def test_secret_and_pin_are_never_logged(
    start_nas: StartNas, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ocs.radius.disconnect")
    for reply in (ack, nak_503, signed_with_wrong_secret, silent):
        await disconnect(await start_nas(reply), timeout=0.1, attempts=1)
    records = [r for r in caplog.records if r.name == "ocs.radius.disconnect"]
    assert len(records) == 4
    for record in records:
        text = repr(vars(record)) + record.getMessage()
        assert SECRET.decode() not in text
        assert PIN not in text
        assert SESSION in text  # the session is what the operator needs to see


@pytest.mark.parametrize(
    "bad",
    [
        {"attempts": 0},
        {"timeout": 0},
        {"session_id": ""},
        {"nas_ip": "2001:db8::1"},
        {"nas_ip": "not-an-ip"},
        {"user_name": "x" * 254},
    ],
    ids=["attempts", "timeout", "session", "nas-ipv6", "nas-garbage", "long-user"],
)
async def test_unbuildable_arguments_raise_value_error(bad: dict) -> None:
    options: dict = {"user_name": PIN, "session_id": SESSION, **FAST, **bad}
    with pytest.raises(ValueError):
        await send_disconnect("127.0.0.1", 9, SECRET, **options)
