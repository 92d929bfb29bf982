"""Raw RADIUS over UDP for tests: pyrad-built packets, exact bytes, short waits.

Not a test module. radclient is the real client the RADIUS tests speak
through; this is for what radclient cannot do: send the very same datagram
several times, send forged or broken bytes, read the raw reply to verify its
authenticators, and notice "no answer" without radclient's one-second wait
(a drop is counted synchronously when the datagram arrives, so a test polls
the drop counter instead of sleeping).
"""

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY
from pyrad import packet as rp

from ocs.radius.dictionary import radius_dictionary

DROPS = "ocs_radius_dropped_total"
# Linux's SO_TIMESTAMPNS (the server asks for it by number too) and its struct timespec.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@ll")

Pairs = Iterable[tuple[str, str | int]]


def sample(name: str, **labels: str) -> float:
    """A Prometheus sample of this process's default registry (0 when never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def total_drops() -> float:
    """Dropped RADIUS packets, all reasons together."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == DROPS.removesuffix("_total"):
            total += sum(s.value for s in metric.samples if s.name == DROPS)
    return total


def access_request(
    secret: str, pairs: Pairs, *, message_authenticator: bool = True, password: str | None = None
) -> rp.AuthPacket:
    """An Access-Request as a NAS builds it (Message-Authenticator first when asked for)."""
    request = rp.AuthPacket(code=rp.AccessRequest, secret=secret.encode(), dict=radius_dictionary())
    if message_authenticator:
        request.add_message_authenticator()
    for name, value in pairs:
        request.AddAttribute(name, value)
    if password is not None:
        request["User-Password"] = request.PwCrypt(password)
    return request


def accounting_request(secret: str, pairs: Pairs) -> rp.AcctPacket:
    """An Accounting-Request signed with ``secret``, carrying ``pairs``."""
    request = rp.AcctPacket(secret=secret.encode(), dict=radius_dictionary())
    for name, value in pairs:
        request.AddAttribute(name, value)
    return request


def wire(request: rp.Packet) -> bytes:
    """The request's datagram (computes its authenticators once; call once per packet)."""
    return request.RequestPacket()


def decode_reply(request: rp.Packet, data: bytes) -> rp.Packet:
    """``data`` decoded as the reply to ``request``."""
    return request.CreateReply(packet=data)


def verified(request: rp.Packet, data: bytes) -> bool:
    """The reply belongs to the request: Response Authenticator and a valid
    Message-Authenticator (required: every ocs reply carries one)."""
    reply = decode_reply(request, data)
    if "Message-Authenticator" not in reply:
        return False
    return bool(request.VerifyReply(reply, data, enforce_ma=True))


class UdpClient(asyncio.DatagramProtocol):
    """One UDP socket on loopback: send datagrams to 127.0.0.1, collect what comes back."""

    def __init__(self, sock: socket.socket) -> None:
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()
        self._transport: asyncio.DatagramTransport | None = None
        # Sent through the socket itself: event-loop transports silently skip an empty
        # datagram, and an empty datagram is one of the things a server must survive.
        self._sock = sock

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> "UdpClient":
        """A client on a fresh socket bound to a free port of ``host`` (any loopback
        address: 127.0.0.2 is a second NAS to a server that trusts 127.0.0.1)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(lambda: cls(sock), sock=sock)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport, to close it."""
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Queue each datagram received for ``receive``."""
        self._replies.put_nowait(data)

    def send(self, data: bytes, port: int) -> None:
        """Send ``data`` as is (an empty datagram too) to ``port`` on 127.0.0.1."""
        self._sock.sendto(data, ("127.0.0.1", port))

    async def receive(self, within: float = 5.0) -> bytes | None:
        """The next datagram received, or None when nothing came within ``within`` s."""
        try:
            return await asyncio.wait_for(self._replies.get(), within)
        except TimeoutError:
            return None

    async def exchange(self, data: bytes, port: int, within: float = 5.0) -> bytes | None:
        """Send ``data`` and wait for the next datagram (None: nothing within ``within`` s)."""
        self.send(data, port)
        return await self.receive(within)

    def unread_count(self) -> int:
        """How many datagrams were received and not yet read."""
        return self._replies.qsize()

    def unread(self) -> list[bytes]:
        """Datagrams received and not yet read."""
        found = []
        while not self._replies.empty():
            found.append(self._replies.get_nowait())
        return found

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()


@contextlib.contextmanager
def arrival_timestamps(within: float = 5.0) -> Iterator[None]:
    """Hold the kernel's receive timestamps on, once they stamp datagrams on arrival.

    The server measures how long a datagram waited from its kernel timestamp. Linux
    turns timestamping on for the first socket that asks, through deferred work;
    until that has run, a datagram is stamped when it is read, so it seems not to have
    waited at all. Every server socket of a test closes at its end, so each test's first
    one asks again. A test of the wait first holds a socket of its own that asks, and
    polls until a datagram that sat 2 ms is stamped as having waited.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        probe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        deadline = time.monotonic() + within
        while True:
            probe.sendto(b"?", probe.getsockname())
            sat_until = time.perf_counter() + 0.002
            while time.perf_counter() < sat_until:
                pass
            _, ancillary, _, _ = probe.recvmsg(16, socket.CMSG_SPACE(_TIMESPEC.size))
            waited = 0.0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                    waited = time.time() - seconds - nanoseconds / 1e9
            if waited >= 0.0015:
                break
            if time.monotonic() > deadline:
                raise AssertionError("the kernel does not stamp datagrams on arrival")
        yield
