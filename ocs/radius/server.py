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

Overload and loss are never silent. Each socket asks for a receive buffer of
``radius_receive_buffer`` bytes (the kernel caps it at net.core.rmem_max; a
smaller grant is logged once) and is read with ``recvmsg``, several datagrams
per wake-up, each with the kernel's receive time (SO_TIMESTAMPNS) and the
socket's count of datagrams the kernel dropped (SO_RXQ_OVFL, published as
``ocs_radius_socket_drops``). Above saturation ocs sheds early rather than
queueing into seconds: a request is dropped, counted as ``overload``, when
``radius_max_in_flight`` decisions are already running, and as ``late`` when it
waited (in the socket buffer and the loop) longer than ``radius_queue_budget``
before its decision would start, or longer than ``radius_queue_target`` while the
queue stays that long (ocs/radius/queue_delay.py); the NAS retransmits or fails over.
"""

import asyncio
import hashlib
import logging
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from pyrad import packet as rp
from redis.exceptions import RedisError

from ocs import backend_health, metrics
from ocs.balances.pin_guard import PinGuard
from ocs.charging.lifecycle import CallService
from ocs.charging.values import CallRecord
from ocs.config import Settings
from ocs.db.listener import ChannelListener
from ocs.errors import OcsError
from ocs.listen_sockets import bind_udp
from ocs.log_limit import LogLimiter
from ocs.radius.access import answer_access_request
from ocs.radius.accounting import handle_accounting
from ocs.radius.clients import NAS_CHANNEL, ClientTable, NasClient, load_client_table
from ocs.radius.dedupe import ReplyCache, RequestKey
from ocs.radius.dictionary import radius_dictionary
from ocs.radius.disconnect import DisconnectOutcome, disconnect_call
from ocs.radius.lean.request import LeanCodec, LeanRequest, Refused
from ocs.radius.queue_delay import QueueDelay

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

# Datagrams read per wake-up before the loop gets to run the decisions they started.
_READ_BATCH = 64
_DROP_LOG_EVERY_S = 10.0
# Linux socket options Python's socket module does not name (asm-generic/socket.h).
_SO_TIMESTAMPNS = 35
_SO_RXQ_OVFL = 40
_TIMESPEC = struct.Struct("@ll")
_DROPCOUNT = struct.Struct("@I")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_DROPCOUNT.size)
_LINUX = sys.platform.startswith("linux")


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


def size_receive_buffer(sock: socket.socket, wanted: int) -> int:
    """Ask for a receive buffer of ``wanted`` bytes; the bytes the kernel granted.

    Linux caps SO_RCVBUF at net.core.rmem_max (SO_RCVBUFFORCE, which needs
    CAP_NET_ADMIN, does not) and reports twice the usable size, its bookkeeping
    included: the grant is that report halved.
    """
    if wanted <= 0:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, wanted)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return granted // 2 if _LINUX else granted


class RadiusListener:
    """One listening UDP socket, read with ``recvmsg`` straight from the event loop.

    Several datagrams per wake-up, each with the time the kernel received it (so
    the time spent waiting in the socket buffer counts against the queue budget)
    and the socket's drop count (so a full buffer shows in a metric).
    """

    def __init__(self, server: "RadiusServer", port: _Port, sock: socket.socket) -> None:
        self._server = server
        self.port = port
        self.sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drops = metrics.RADIUS_SOCKET_DROPS.labels(port.kind)
        self._dropped = 0
        self._logged_at = -_DROP_LOG_EVERY_S
        # Reading stops first (shutdown's first stage); the socket closes only once the
        # requests in flight have been answered through it (RadiusServer.drain).
        self.reading = False
        self.closed = False

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading the socket on ``loop``."""
        self.sock.setblocking(False)
        if _LINUX:
            for option in (_SO_TIMESTAMPNS, _SO_RXQ_OVFL):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, option, 1)
                except OSError:
                    log.warning("radius socket option unavailable", extra={"option": option})
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)
        self.reading = True

    def _readable(self) -> None:
        receive = self._server.receive
        for _ in range(_READ_BATCH):
            try:
                data, ancillary, _flags, addr = self.sock.recvmsg(MAX_LENGTH, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # An ICMP error from an earlier reply, reported on this socket: not fatal.
                log.warning("radius socket error", extra={"error": str(exc)})
                return
            waited = 0.0
            for level, kind, value in ancillary:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == _SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                    waited = max(0.0, time.time() - seconds - nanoseconds / 1e9)
                elif kind == _SO_RXQ_OVFL and len(value) >= _DROPCOUNT.size:
                    self._count_drops(_DROPCOUNT.unpack_from(value)[0])
            receive(self, data, addr, waited)

    def _count_drops(self, dropped: int) -> None:
        if dropped == self._dropped:
            return
        # Logged at most every _DROP_LOG_EVERY_S: under overload the count moves with
        # nearly every datagram read, and the metric carries the exact figure.
        now = time.monotonic()
        if dropped > self._dropped and now - self._logged_at >= _DROP_LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "radius receive buffer overflowed: datagrams dropped by the kernel",
                extra={"port": self.port.kind, "dropped_since_bound": dropped},
            )
        self._dropped = dropped
        self._drops.set(dropped)

    def sendto(self, wire: bytes, addr: Address) -> None:
        """Send a reply; one that cannot go out (a full send buffer, the socket already
        closed) is lost, counted as ``send_failed`` (the NAS retransmits)."""
        if self.closed:
            metrics.RADIUS_DROPS.labels("send_failed").inc()
            return
        try:
            self.sock.sendto(wire, addr)
        except OSError:
            metrics.RADIUS_DROPS.labels("send_failed").inc()

    def stop_reading(self) -> None:
        """Read no more datagrams; the socket stays open for the replies still due."""
        if not self.reading:
            return
        self.reading = False
        if self._loop is not None and not self._loop.is_closed():
            # Through Any: typeshed says remove_reader returns a bool, uvloop's returns
            # None, and a mypyc build (decision 0038) checks what the declaration says.
            loop: Any = self._loop
            loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        """Stop reading and close the socket."""
        if self.closed:
            return
        self.stop_reading()
        self.closed = True
        self.sock.close()


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
        # Packets not answered for an error no outage explains: one line per reason a while.
        self._unanswered = LogLimiter("radius")
        self._tasks: set[asyncio.Task[None]] = set()
        self.listeners: list[RadiusListener] = []
        # The shedding rule (module docstring), from the settings; plain attributes, so a
        # test can narrow them.
        self.max_in_flight = settings.radius_max_in_flight
        self.queue_delay = QueueDelay(settings.radius_queue_budget, settings.radius_queue_target)
        self.auth_port = 0
        self.acct_port = 0
        self._listener: ChannelListener | None = None
        self._pool: asyncpg.Pool | None = None
        # A failed reload of the client table is tried again after this many seconds,
        # doubled after each further failure up to client_retry_max_s (a test narrows them).
        self.client_retry_s = 1.0
        self.client_retry_max_s = 60.0
        self._client_failures = 0
        self._client_retry: asyncio.TimerHandle | None = None
        self._client_lock = asyncio.Lock()
        # The loop the listeners read on, kept: asyncio's get_running_loop is a getpid()
        # call, once per datagram otherwise.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def disconnect(self, record: CallRecord) -> DisconnectOutcome | None:
        """Ask the NAS that carries a call to end it (RFC 5176); None if it takes no such
        request (no dynamic-authorization port configured, or not a RADIUS call)."""
        return await disconnect_call(self.clients, record, self._settings.disconnect_timeout)

    async def start(
        self, auth_sock: socket.socket | None = None, acct_sock: socket.socket | None = None
    ) -> None:
        """Listen on the given bound sockets, or bind the configured ports (never shared:
        a taken port raises ``AddressInUse``)."""
        loop = self._loop = asyncio.get_running_loop()
        host = self._settings.radius_host
        if auth_sock is None:
            auth_sock = bind_udp(host, self._settings.radius_auth_port, "radius_auth_port")
        if acct_sock is None:
            try:
                acct_sock = bind_udp(host, self._settings.radius_acct_port, "radius_acct_port")
            except BaseException:
                auth_sock.close()
                raise
        wanted = self._settings.radius_receive_buffer
        for port, sock in ((AUTH, auth_sock), (ACCT, acct_sock)):
            granted = size_receive_buffer(sock, wanted)
            if granted < wanted and port is AUTH:
                log.warning(
                    "radius receive buffer smaller than asked: raise net.core.rmem_max",
                    extra={"wanted": wanted, "granted": granted},
                )
            listener = RadiusListener(self, port, sock)
            listener.listen(loop)
            self.listeners.append(listener)
            bound = sock.getsockname()[1]
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

    @property
    def client_listener(self) -> ChannelListener | None:
        """What listens for client table changes (None: not watching)."""
        return self._listener

    async def watch_clients(self, pool: asyncpg.Pool) -> None:
        """Reload the client table whenever the admin API changes it (LISTEN/NOTIFY); a
        LISTEN connection PostgreSQL drops is replaced and the table reloaded.

        Once LISTEN runs, the table is loaded once more: a NAS added after the table the
        server was built with was read, and before LISTEN, is notified to no one and was
        dropped until some later change (decision 0013). A failure of that load is
        retried on the timer, the table the server has serving meanwhile.
        """
        self._pool = pool
        listener = ChannelListener(
            pool, NAS_CHANNEL, "nas_clients", self._clients_changed, self._reload_soon
        )
        await listener.start()
        self._listener = listener
        await self._reload_clients()

    def _clients_changed(self, *_: object) -> None:
        self._reload_soon()

    def _reload_soon(self) -> None:
        """Start a reload of the client table (also a retry's, when its time comes)."""
        if self._client_retry is not None:
            self._client_retry.cancel()  # this reload is the retry's
            self._client_retry = None
        task = asyncio.get_running_loop().create_task(self._reload_clients())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_clients(self) -> None:
        """Reload the client table; one reload at a time, in the order they were asked
        for (asyncio.Lock is fair): two at once could end out of order, the older table
        read replacing the newer (watch_clients' own load and a notification's)."""
        async with self._client_lock:
            await self._reload_clients_now()

    async def _reload_clients_now(self) -> None:
        """``_reload_clients`` with the lock held; a failure is retried on a timer."""
        # The LISTEN this reload begins on: once it is in, nothing missed while the
        # listener's connection was lost is missing (/readyz).
        listener = self._listener
        epoch = None if listener is None else listener.epoch
        try:
            self.clients = await load_client_table(self._pool, self._settings)
        except Exception:
            # Tried again on a timer: no later change may come to start another reload.
            self._client_failures += 1
            log.exception(
                "radius client reload failed; the previous table stays",
                extra={"failures": self._client_failures},
            )
            if self._client_retry is None:
                delay = min(
                    self.client_retry_s * 2 ** min(self._client_failures - 1, 16),
                    self.client_retry_max_s,
                )
                loop = asyncio.get_running_loop()
                self._client_retry = loop.call_later(delay, self._reload_soon)
            return
        self._client_failures = 0
        if listener is not None and epoch is not None:
            listener.reloaded(epoch)
        log.info("radius clients reloaded", extra={"clients": len(self.clients)})

    async def stop_watching(self) -> None:
        """Stop listening for NAS client table changes."""
        if self._client_retry is not None:
            self._client_retry.cancel()
            self._client_retry = None
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    def stop_listening(self) -> None:
        """Take no new request (shutdown's first stage): every socket stops being read,
        and stays open so that the requests in flight can still be answered."""
        for listener in self.listeners:
            listener.stop_reading()

    def close_listeners(self) -> None:
        """Close every listening socket now; a request still running loses its reply
        (counted as ``send_failed``). A shutdown calls ``stop_listening``, then ``drain``."""
        for listener in self.listeners:
            listener.close()

    async def drain(self, within: float) -> None:
        """Let requests in flight finish (their answers go out), cancel those still running
        after ``within`` seconds, then close the sockets."""
        try:
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=within)
                for task in pending:
                    task.cancel()
        finally:
            self.close_listeners()

    # -- per packet ---------------------------------------------------------------

    def receive(
        self, listener: RadiusListener, data: bytes, addr: Address, waited: float = 0.0
    ) -> None:
        """Admit, deduplicate and start answering one datagram that waited ``waited``
        seconds in the socket buffer; drops are counted, not raised."""
        now = time.perf_counter()
        started = now - waited
        # Shed first, before any work: under overload every microsecond spent on a
        # request that will be dropped delays the ones that can still be answered.
        if not self.queue_delay.admit(waited, now):
            metrics.RADIUS_DROPS.labels("late").inc()
            return
        if len(self._tasks) >= self.max_in_flight:
            metrics.RADIUS_DROPS.labels("overload").inc()
            return
        # Verified first, the reply cache after: a packet that fails any check is dropped
        # and counted even when it reuses an answered request's identifier and
        # authenticator.
        try:
            client, length = self._admit(listener.port, data, addr)
            request = self._decode(listener.port, data, client)
        except Drop as drop:
            metrics.RADIUS_DROPS.labels(str(drop)).inc()
            return
        key = _request_key(data, length, addr)
        cached = self._cache.begin(key)
        if cached is not None:
            metrics.RADIUS_DUPLICATES.labels(listener.port.kind).inc()
            if cached:
                listener.sendto(cached, addr)
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(self._answer(listener, request, client, addr, key, started))
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
        listener: RadiusListener,
        request: rp.Packet | LeanRequest,
        client: NasClient,
        addr: Address,
        key: RequestKey,
        started: float,
    ) -> None:
        kind = listener.port.kind
        # Waited in the loop behind other work: shed by the same rule as at receipt, since
        # the decisions already running (up to radius_max_in_flight) are a queue too.
        now = time.perf_counter()
        if not self.queue_delay.admit(now - started, now):
            self._cache.forget(key)
            metrics.RADIUS_DROPS.labels("late").inc()
            return
        # Where a later Disconnect-Request may go, and the NAS when it does not say.
        request.source = addr
        try:
            if kind == "auth":
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
            # A lost backend (or a Redis refusing writes) is logged once by the health
            # tracker, not once per packet; any other error once per reason a while.
            if isinstance(exc, OcsError) or not backend_health.default().report_request(
                exc, default=backend_health.POSTGRESQL
            ):
                reason = exc.reason.value if isinstance(exc, OcsError) else type(exc).__name__
                held = self._unanswered.admit(reason)
                if held is not None:
                    log.error(
                        "radius request not answered: backend unavailable",
                        extra={
                            "client": client.name,
                            "reason": reason,
                            "error": str(exc)[:300],
                            "held_back": held,
                        },
                    )
            return
        except Exception:
            self._cache.forget(key)
            metrics.RADIUS_DROPS.labels("internal_error").inc()
            log.exception("radius request failed", extra={"client": client.name})
            return
        self._cache.finish(key, wire)
        listener.sendto(wire, addr)
        elapsed = time.perf_counter() - started
        metrics.RADIUS_PACKET_CHILDREN.get(label, result).inc()
        metrics.RADIUS_LATENCY_CHILDREN.get(label).observe(elapsed)
        query = kind == "auth" and answer.reason == "balance"
        step = "query" if query else _KINDS.get(label, "other")
        metrics.request_latency("radius", step).observe(elapsed)
