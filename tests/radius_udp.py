"""Raw RADIUS over UDP for tests: pyrad-built packets, exact bytes, short waits.

Not a test module. radclient is the real client the RADIUS tests speak
through; this is for what radclient cannot do: send the very same datagram
several times, send forged or broken bytes, read the raw reply to verify its
authenticators, and notice "no answer" without radclient's one-second wait
(a drop is counted synchronously when the datagram arrives, so a test polls
the drop counter instead of sleeping).
"""

import asyncio
import socket
from collections.abc import Iterable

from prometheus_client import REGISTRY
from pyrad import packet as rp

from ocs.radius.dictionary import radius_dictionary

DROPS = "ocs_radius_dropped_total"

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
    """One UDP socket on 127.0.0.1: send datagrams, collect what comes back."""

    def __init__(self, sock: socket.socket) -> None:
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()
        self._transport: asyncio.DatagramTransport | None = None
        # Sent through the socket itself: event-loop transports silently skip an empty
        # datagram, and an empty datagram is one of the things a server must survive.
        self._sock = sock

    @classmethod
    async def open(cls) -> "UdpClient":
        """A client on a fresh socket bound to a free port of 127.0.0.1."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
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
