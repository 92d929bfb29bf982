"""The RADIUS server: two UDP listeners (authentication, accounting) over the call lifecycle.

Each datagram is checked before any work is done for it: size and declared
length, a known client, the expected packet code, the request authenticator
(accounting) and the Message-Authenticator (required on Access-Request by
default: the BlastRADIUS mitigation, CVE-2024-3596). Anything that fails is
dropped silently and counted by reason. Only then is the reply cache asked: a
retransmission, the identical packet from the same source, gets the cached
reply (RFC 5080); a packet that only reuses an identifier and authenticator is
not a retransmission. Every reply carries a Message-Authenticator. The ports
are never shared with another process (no SO_REUSEPORT): a taken one raises
``AddressInUse``.
"""

import asyncio
import hashlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from pyrad import packet as rp
from redis.exceptions import RedisError

from ocs import backend_health, metrics
from ocs.balances.pin_guard import PinGuard
from ocs.charging.lifecycle import CallRecord, CallService
from ocs.config import Settings
from ocs.errors import OcsError
from ocs.listen_sockets import bind_udp
from ocs.radius.access import answer_access_request
from ocs.radius.accounting import handle_accounting
from ocs.radius.clients import NAS_CHANNEL, ClientTable, NasClient, load_client_table
from ocs.radius.dedupe import ReplyCache, RequestKey
from ocs.radius.dictionary import radius_dictionary
from ocs.radius.disconnect import DisconnectOutcome, disconnect_call
from ocs.radius.lean.request import LeanCodec, LeanRequest, Refused

log = logging.getLogger("ocs.radius")

# A datagram's source as the socket gives it: (host, port), plus flow and scope for IPv6.
Address = tuple[Any, ...]

# Each packet type by the call lifecycle's step it is, for the latency histogram (an
# Access-Request without a destination is a balance query: "query").
_KINDS = {
    "access": "authorize",
    "accounting-start": "start",
    "accounting-interim": "update",
    "accounting-stop": "stop",
    "accounting-on": "nas",
    "accounting-off": "nas",
    "accounting-other": "other",
}

MIN_LENGTH = 20
MAX_LENGTH = 4096
_MESSAGE_AUTHENTICATOR = 80


class Drop(Exception):
    """A packet that gets no answer; the argument is the counted reason."""


@dataclass(frozen=True, slots=True)
class _Port:
    kind: str  # "auth" or "acct"
    code: int  # the request code this port accepts


AUTH = _Port("auth", rp.AccessRequest)
ACCT = _Port("acct", rp.AccountingRequest)


def _has_message_authenticator(data: bytes) -> bool:
    """Whether attribute 80 is present, read from the wire (pyrad decodes it lazily)."""
    pos, end = 20, len(data)
    while pos + 2 <= end:
        kind, length = data[pos], data[pos + 1]
        if length < 2:
            return False
        if kind == _MESSAGE_AUTHENTICATOR:
            return True
        pos += length
    return False


def check_attribute_lengths(data: bytes, length: int) -> None:
    """Every attribute must fit exactly in the declared length (RFC 2865 section 5)."""
    pos = 20
    while pos < length:
        if pos + 2 > length:
            raise Drop("malformed")
        attr_len = data[pos + 1]
        if attr_len < 2 or pos + attr_len > length:
            raise Drop("malformed")
        pos += attr_len


def _request_key(data: bytes, length: int, addr: Address) -> RequestKey:
    """The reply-cache key: source, identifier, and a digest of the whole packet.

    RFC 5080 duplicates are identical packets. Identifier and authenticator alone
    would let a packet with other attributes reuse an answered request's reply.
    """
    digest = hashlib.blake2b(data[:length], digest_size=16).digest()
    return addr[0], addr[1], data[1], data[4:20] + digest


class RadiusProtocol(asyncio.DatagramProtocol):
    """One listening socket; decisions run as tasks so the socket never waits on Redis."""

    def __init__(self, server: "RadiusServer", port: _Port) -> None:
        self._server = server
        self._port = port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the socket's transport, to send replies on."""
        # uvloop's UDPTransport is not a subclass of asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Hand a received packet to the server."""
        self._server.receive(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        """Log a socket error; the socket keeps listening."""
        log.warning("radius socket error", extra={"error": str(exc)})


class RadiusServer:
    """Owns both listeners, the reply cache and the tasks answering requests."""

    def __init__(
        self,
        calls: CallService,
        settings: Settings,
        clients: ClientTable,
        pin_guard: PinGuard | None = None,
    ) -> None:
        self._calls = calls
        self._pin_guard = pin_guard
        self._settings = settings
        self.clients = clients
        self._dictionary = radius_dictionary()
        self._lean = LeanCodec(self._dictionary)
        self._cache = ReplyCache(settings.radius_dedupe_window)
        self._tasks: set[asyncio.Task[None]] = set()
        self._protocols: list[RadiusProtocol] = []
        self.auth_port = 0
        self.acct_port = 0
        self._listener: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None

    async def disconnect(self, record: CallRecord) -> DisconnectOutcome | None:
        """Ask the NAS that carries a call to end it (RFC 5176); None if it takes no such
        request (no dynamic-authorization port configured, or not a RADIUS call)."""
        return await disconnect_call(self.clients, record, self._settings.disconnect_timeout)

    async def start(
        self, auth_sock: socket.socket | None = None, acct_sock: socket.socket | None = None
    ) -> None:
        """Listen on the given bound sockets, or bind the configured ports (never shared:
        a taken port raises ``AddressInUse``)."""
        loop = asyncio.get_running_loop()
        host = self._settings.radius_host
        if auth_sock is None:
            auth_sock = bind_udp(host, self._settings.radius_auth_port, "radius_auth_port")
        if acct_sock is None:
            try:
                acct_sock = bind_udp(host, self._settings.radius_acct_port, "radius_acct_port")
            except BaseException:
                auth_sock.close()
                raise
        for port, sock in ((AUTH, auth_sock), (ACCT, acct_sock)):
            transport, protocol = await loop.create_datagram_endpoint(
                self._factory(port), sock=sock
            )
            self._protocols.append(protocol)
            bound = transport.get_extra_info("sockname")[1]
            if port is AUTH:
                self.auth_port = bound
            else:
                self.acct_port = bound
        log.info(
            "radius listening",
            extra={
                "host": host,
                "auth_port": self.auth_port,
                "acct_port": self.acct_port,
                "clients": len(self.clients),
            },
        )

    async def watch_clients(self, pool: asyncpg.Pool) -> None:
        """Reload the client table whenever the admin API changes it (LISTEN/NOTIFY)."""
        self._listener = await pool.acquire()
        self._pool = pool
        await self._listener.add_listener(NAS_CHANNEL, self._clients_changed)

    def _clients_changed(self, *_: object) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_clients())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_clients(self) -> None:
        try:
            self.clients = await load_client_table(self._pool, self._settings)
            log.info("radius clients reloaded", extra={"clients": len(self.clients)})
        except Exception:
            log.exception("radius client reload failed; the previous table stays")

    async def stop_watching(self) -> None:
        """Stop listening for NAS client table changes."""
        if self._listener is not None and self._pool is not None:
            await self._listener.remove_listener(NAS_CHANNEL, self._clients_changed)
            await self._pool.release(self._listener)
            self._listener = None

    def _factory(self, port: _Port) -> Callable[[], RadiusProtocol]:
        return lambda: RadiusProtocol(self, port)

    def close_listeners(self) -> None:
        """Close every listening socket; requests in flight still finish."""
        for protocol in self._protocols:
            if protocol.transport is not None:
                protocol.transport.close()

    async def drain(self, within: float) -> None:
        """Let requests in flight finish (their answers go out), then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=within)
            for task in pending:
                task.cancel()

    # -- per packet ---------------------------------------------------------------

    def receive(self, protocol: RadiusProtocol, data: bytes, addr: Address) -> None:
        """Admit, deduplicate and start answering one datagram; drops are counted, not raised."""
        started = time.perf_counter()
        # Verified first, the reply cache after: a packet that fails any check is dropped
        # and counted even when it reuses an answered request's identifier and
        # authenticator.
        try:
            client, length = self._admit(protocol._port, data, addr)
            request = self._decode(protocol._port, data, client)
        except Drop as drop:
            metrics.RADIUS_DROPS.labels(str(drop)).inc()
            return
        key = _request_key(data, length, addr)
        cached = self._cache.begin(key)
        if cached is not None:
            metrics.RADIUS_DUPLICATES.labels(protocol._port.kind).inc()
            if cached and protocol.transport is not None:
                protocol.transport.sendto(cached, addr)
            return
        task = asyncio.get_running_loop().create_task(
            self._answer(protocol, request, client, addr, key, started)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admit(self, port: _Port, data: bytes, addr: Address) -> tuple[NasClient, int]:
        """The client and the declared length, after the checks that need no secret."""
        if len(data) < MIN_LENGTH:
            raise Drop("malformed")
        length = int.from_bytes(data[2:4], "big")
        if not MIN_LENGTH <= length <= min(len(data), MAX_LENGTH):
            raise Drop("malformed")
        client = self.clients.lookup(addr[0])
        if client is None:
            raise Drop("unknown_client")
        if data[0] != port.code:
            raise Drop("unexpected_code")
        check_attribute_lengths(data, length)
        return client, length

    def _decode(self, port: _Port, data: bytes, client: NasClient) -> rp.Packet | LeanRequest:
        # Octets past the declared length are padding (RFC 2865 section 3): ignore them.
        data = data[: int.from_bytes(data[2:4], "big")]
        # The hot requests go through the lean codec (ocs/radius/lean), which refuses what
        # the checks below refuse, for the same reasons; it leaves the rest (None) to pyrad.
        try:
            lean = self._lean.decode(
                data,
                client.secret,
                require_message_authenticator=client.require_message_authenticator,
            )
        except Refused as refused:
            raise Drop(refused.reason) from None
        if lean is not None:
            return lean
        cls = rp.AuthPacket if port is AUTH else rp.AcctPacket
        try:
            request = cls(packet=data, secret=client.secret, dict=self._dictionary)
        except Exception:
            raise Drop("malformed") from None
        if port is ACCT:
            try:
                if not request.VerifyAcctRequest():
                    raise Drop("bad_authenticator")
            except Drop:
                raise
            except Exception:
                raise Drop("malformed") from None
        if _has_message_authenticator(data):
            try:
                valid = request.verify_message_authenticator()
            except Exception:
                valid = False
            if not valid:
                raise Drop("bad_message_authenticator")
        elif port is AUTH and client.require_message_authenticator:
            raise Drop("missing_message_authenticator")
        return request

    async def _answer(
        self,
        protocol: RadiusProtocol,
        request: rp.Packet | LeanRequest,
        client: NasClient,
        addr: Address,
        key: RequestKey,
        started: float,
    ) -> None:
        kind = protocol._port.kind
        try:
            if kind == "auth":
                request.source = addr  # where a later Disconnect-Request may go
                answer = await answer_access_request(
                    request, client, self._calls, self._settings, self._pin_guard
                )
                reply = request.CreateReply()
                reply.code = rp.AccessAccept if answer.accept else rp.AccessReject
                for name, value in answer.attributes:
                    reply.AddAttribute(name, value)
                label = "access"
                result = "accept" if answer.accept else "reject"
                if not answer.accept:
                    metrics.RADIUS_REJECTS.labels(str(answer.return_code), answer.reason).inc()
            else:
                outcome = await handle_accounting(request, client, self._calls, self._settings)
                reply = request.CreateReply()
                label = (
                    outcome.kind
                    if outcome.kind.startswith("accounting")
                    else f"accounting-{outcome.kind}"
                )
                result = outcome.result
            if _MESSAGE_AUTHENTICATOR not in reply:
                reply.add_message_authenticator()
            wire = reply.ReplyPacket()
        except (RedisError, OSError, OcsError) as exc:
            # No answer: the NAS retransmits or fails over, and the retransmission is
            # handled anew rather than from the cache.
            self._cache.forget(key)
            metrics.RADIUS_DROPS.labels("backend_unavailable").inc()
            # A lost backend is logged once by the health tracker, not once per packet.
            if isinstance(exc, OcsError) or not backend_health.default().report(
                exc, default=backend_health.POSTGRESQL
            ):
                log.error(
                    "radius request not answered: backend unavailable",
                    extra={"client": client.name, "error": str(exc)},
                )
            return
        except Exception:
            self._cache.forget(key)
            metrics.RADIUS_DROPS.labels("internal_error").inc()
            log.exception("radius request failed", extra={"client": client.name})
            return
        self._cache.finish(key, wire)
        if protocol.transport is not None and not protocol.transport.is_closing():
            protocol.transport.sendto(wire, addr)
        elapsed = time.perf_counter() - started
        metrics.RADIUS_PACKET_CHILDREN.get(label, result).inc()
        metrics.RADIUS_LATENCY_CHILDREN.get(label).observe(elapsed)
        query = kind == "auth" and answer.reason == "balance"
        step = "query" if query else _KINDS.get(label, "other")
        metrics.request_latency("radius", step).observe(elapsed)
