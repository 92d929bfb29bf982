"""RFC 5176 Disconnect-Request sender: ocs asks a NAS to cut a live call.

ocs is the Dynamic Authorization *client* here: it sends a Disconnect-Request
(code 40) to the NAS's dynamic-authorization port (3799 by default) and waits
for a Disconnect-ACK (41) or Disconnect-NAK (42).

Wire rules this module follows (RFC 5176 section 3, RFC 3579 section 3.2):

* The Request Authenticator is computed like an Accounting-Request's:
  ``MD5(Code + Identifier + Length + 16 zero octets + Attributes + Secret)``.
* The Message-Authenticator is ``HMAC-MD5(Secret, packet)`` over the packet
  with the Message-Authenticator value *and* the Request Authenticator field
  set to zeros. It is computed first, then the Request Authenticator over the
  packet that contains it.
* A reply's Response Authenticator is
  ``MD5(Code + Identifier + Length + Request Authenticator + Attributes + Secret)``
  and its Message-Authenticator, when present, is the HMAC over the reply with
  the Request Authenticator in the authenticator field.

pyrad encodes the attributes (by name, with the ocs dictionary); both
authenticators are computed here with hashlib/hmac so that the result does
not depend on how a given pyrad release handles code 40 packets.

A retransmission re-sends the very same datagram (same Identifier, same
Request Authenticator, same Event-Timestamp), so that the NAS can recognise it
as a duplicate (RFC 5080 section 2.2.1). Each call uses its own ephemeral,
connected UDP socket: the kernel only delivers datagrams from the NAS's
address and port, and Identifiers of concurrent calls never collide.
"""

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pyrad import packet as rp

from ocs import metrics
from ocs.charging.values import CallRecord
from ocs.radius.clients import ClientTable
from ocs.radius.dictionary import radius_dictionary

log = logging.getLogger("ocs.radius.disconnect")

DISCONNECT_PORT = 3799

_DISCONNECT_REQUEST = 40
_DISCONNECT_ACK = 41
_DISCONNECT_NAK = 42
_MESSAGE_AUTHENTICATOR = 80
_ERROR_CAUSE = 101
_HEADER = struct.Struct("!BBH")
_ZERO16 = bytes(16)
_MAX_LENGTH = 4096  # RFC 2865 section 3


@dataclass(frozen=True)
class DisconnectOutcome:
    """What became of a Disconnect-Request.

    ``reason`` is ``"ack"``, ``"nak"`` or ``"nak:<Error-Cause>"`` (e.g.
    ``"nak:503"``, Session-Context-Not-Found: the NAS no longer has the
    call), ``"timeout"`` (no reply at all), ``"bad-reply"`` (only replies that
    failed validation, typically a shared-secret mismatch) or
    ``"unreachable"`` (the socket reported a network error).
    """

    acked: bool
    reason: str


def _attributes(
    user_name: str | None, session_id: str, nas_ip: str | None, event_time: int
) -> bytes:
    """The encoded attributes, Message-Authenticator first with a zero value.

    Message-Authenticator goes first, as RFC 3579 section 3.2 allows and the
    BlastRADIUS (CVE-2024-3596) guidance recommends for every packet type.
    """
    packet = rp.CoAPacket(code=_DISCONNECT_REQUEST, id=0, secret=b"", dict=radius_dictionary())
    packet.AddAttribute("Acct-Session-Id", session_id)
    if user_name is not None:
        packet.AddAttribute("User-Name", user_name)
    if nas_ip is not None:
        packet.AddAttribute("NAS-IP-Address", nas_ip)
    # Event-Timestamp lets the NAS reject a replayed request (RFC 5176 section 3.1).
    packet.AddAttribute("Event-Timestamp", event_time)
    # Only the attribute octets are taken from pyrad; the header and the
    # authenticators it computes with the empty secret are discarded.
    encoded: bytes = packet.RequestPacket()[20:]
    return bytes((_MESSAGE_AUTHENTICATOR, 18)) + _ZERO16 + encoded


def _sign_request(identifier: int, attributes: bytes, secret: bytes) -> bytes:
    """The Disconnect-Request datagram, both authenticators computed.

    ``attributes`` starts with the Message-Authenticator, its value zero.
    """
    header = _HEADER.pack(_DISCONNECT_REQUEST, identifier, 20 + len(attributes))
    # RFC 5176 section 3.3 / RFC 3579 section 3.2: for a Disconnect-Request the
    # HMAC is taken with the Request Authenticator field zeroed; the Request
    # Authenticator is then computed over the packet holding the final HMAC.
    mac = hmac.new(secret, header + _ZERO16 + attributes, hashlib.md5).digest()
    attributes = attributes[:2] + mac + attributes[18:]
    authenticator = hashlib.md5(header + _ZERO16 + attributes + secret).digest()
    return header + authenticator + attributes


def _check_reply(data: bytes, identifier: int, authenticator: bytes, secret: bytes) -> str | None:
    """The reason a valid reply gives ("ack", "nak", "nak:<cause>"), or None.

    None means the datagram is not a valid reply to this request: wrong code
    or Identifier, malformed, or not signed with this secret.
    """
    if len(data) < 20:
        return None
    code, reply_id, length = _HEADER.unpack_from(data)
    if code not in (_DISCONNECT_ACK, _DISCONNECT_NAK) or reply_id != identifier:
        return None
    if length < 20 or length > len(data) or length > _MAX_LENGTH:
        return None
    data = data[:length]  # octets past Length are padding (RFC 2865 section 3)

    mac_at: int | None = None
    cause: int | None = None
    pos = 20
    while pos < length:
        if pos + 2 > length:
            return None
        kind, size = data[pos], data[pos + 1]
        if size < 2 or pos + size > length:
            return None
        if kind == _MESSAGE_AUTHENTICATOR:
            if size != 18 or mac_at is not None:
                return None
            mac_at = pos
        elif kind == _ERROR_CAUSE and size == 6 and cause is None:
            cause = int.from_bytes(data[pos + 2 : pos + 6], "big")
        pos += size

    expected = hashlib.md5(data[:4] + authenticator + data[20:] + secret).digest()
    if not hmac.compare_digest(expected, data[4:20]):
        return None
    if mac_at is not None:
        # The reply's HMAC is taken with the Request Authenticator in the
        # authenticator field and its own value zeroed (RFC 5176 section 3.3).
        signed = data[:4] + authenticator + data[20 : mac_at + 2] + _ZERO16 + data[mac_at + 18 :]
        mac = hmac.new(secret, signed, hashlib.md5).digest()
        if not hmac.compare_digest(mac, data[mac_at + 2 : mac_at + 18]):
            return None

    if code == _DISCONNECT_ACK:
        return "ack"
    return "nak" if cause is None else f"nak:{cause}"


class _Exchange(asyncio.DatagramProtocol):
    """Collects the first valid reply; counts invalid ones and socket errors."""

    def __init__(self, check: Callable[[bytes], str | None]) -> None:
        self._check = check
        self.reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.invalid = 0
        self.error: OSError | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not a subclass of asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.reply.done():
            return  # a duplicate answer to a retransmission
        reason = self._check(data)
        if reason is None:
            # Ignored, not fatal: a forged or stray datagram must not stop us
            # from waiting for the NAS's real answer.
            self.invalid += 1
        else:
            self.reply.set_result(reason)

    def error_received(self, exc: Exception) -> None:
        # On a connected UDP socket this is e.g. ICMP port unreachable for a
        # previous datagram; the NAS may be restarting, so keep retrying.
        if isinstance(exc, OSError):
            self.error = exc


async def send_disconnect(
    host: str,
    port: int,
    secret: bytes,
    *,
    user_name: str | None,
    session_id: str,
    nas_ip: str | None = None,
    # Per attempt, not overall: asyncio.timeout cannot express retransmission.
    timeout: float = 1.0,  # noqa: ASYNC109
    attempts: int = 3,
) -> DisconnectOutcome:
    """Send a Disconnect-Request for ``session_id`` to the NAS at ``host``:``port``.

    The request carries Acct-Session-Id, User-Name and NAS-IP-Address (each
    when given), Event-Timestamp and Message-Authenticator. The same datagram
    is sent up to ``attempts`` times, ``timeout`` seconds apart, until a valid
    Disconnect-ACK or -NAK arrives; invalid replies are ignored.

    Never raises for network trouble (that is ``reason="unreachable"``);
    raises ValueError for arguments no packet can be built from (empty
    ``session_id``, a value over 253 octets, ``nas_ip`` not IPv4, ``attempts``
    below 1 or ``timeout`` not positive).
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    if not session_id:
        raise ValueError("session_id must not be empty")
    if nas_ip is not None:
        # NAS-IP-Address is IPv4 only (RFC 2865 section 5.4).
        ipaddress.IPv4Address(nas_ip)

    identifier = secrets.randbelow(256)
    attributes = _attributes(user_name, session_id, nas_ip, int(time.time()))
    datagram = _sign_request(identifier, attributes, secret)
    authenticator = datagram[4:20]

    # Logged context names the session, never the secret nor the User-Name
    # (for calling cards the User-Name is the PIN).
    context = {"nas": host, "nas_port": port, "session_id": session_id}
    loop = asyncio.get_running_loop()
    try:
        transport, exchange = await loop.create_datagram_endpoint(
            lambda: _Exchange(lambda data: _check_reply(data, identifier, authenticator, secret)),
            remote_addr=(host, port),
        )
    except OSError as exc:  # name resolution or socket failure
        log.warning("disconnect: nas unreachable", extra={**context, "error": str(exc)})
        return DisconnectOutcome(acked=False, reason="unreachable")

    try:
        for attempt in range(1, attempts + 1):
            try:
                transport.sendto(datagram)
            except OSError as exc:
                exchange.error = exc
            done, _ = await asyncio.wait({exchange.reply}, timeout=timeout)
            if done:
                reason = exchange.reply.result()
                outcome = DisconnectOutcome(acked=reason == "ack", reason=reason)
                level = logging.INFO if outcome.acked else logging.WARNING
                log.log(
                    level,
                    "disconnect answered",
                    extra={**context, "reason": reason, "attempt": attempt},
                )
                return outcome
    finally:
        transport.close()

    # Nothing valid came back. Invalid replies mean the NAS is there but does
    # not share our secret (or is confused): the most useful thing to report.
    if exchange.invalid:
        reason = "bad-reply"
    elif exchange.error is not None:
        reason = "unreachable"
    else:
        reason = "timeout"
    extra = {**context, "reason": reason, "attempts": attempts}
    if exchange.error is not None:
        extra["error"] = str(exchange.error)
    log.warning("disconnect not answered", extra=extra)
    return DisconnectOutcome(acked=False, reason=reason)


async def disconnect_call(
    clients: ClientTable, record: CallRecord, wait_s: float
) -> DisconnectOutcome | None:
    """Ask the NAS that carries a call to end it (RFC 5176), found in ``clients`` by the
    name the call record keeps; None if it takes no such request (no
    dynamic-authorization port configured, or not a RADIUS call). ``wait_s``: how long
    to wait for the NAS's answer."""
    client = None if record.nas is None else clients.named(record.nas)
    if client is None or client.coa_port is None or record.nas_address is None:
        return None
    outcome = await send_disconnect(
        record.nas_address,
        client.coa_port,
        client.secret,
        user_name=None,  # for a card it would be the PIN: never sent back out
        # The NAS knows the call by its own Acct-Session-Id, which may not be the
        # call id ocs chose (h323-conf-id comes first by default).
        session_id=record.nas_session or record.call_id,
        timeout=wait_s,
    )
    metrics.DISCONNECTS.labels(outcome.reason.partition(":")[0]).inc()
    return outcome
