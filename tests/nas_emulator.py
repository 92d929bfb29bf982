"""A NAS emulator on 127.0.0.1 that answers RADIUS Disconnect-Requests (RFC 5176) with a
signed Disconnect-ACK, as a switch does when ocs cuts one of its calls.

Not a test module, and it imports nothing of the tests: tests/conftest.py builds its
``rig`` fixture (a RADIUS server that sends its Disconnect-Requests here) on it.
"""

import asyncio
import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from typing import cast

from pyrad import packet as rp

from ocs.radius.dictionary import radius_dictionary

# The secret ocs and the emulated NAS share (registered through the API as "cut-nas").
NAS_SECRET = "cut-nas-s3cret"
ZERO16 = bytes(16)


def signed_ack(request: bytes, secret: bytes) -> bytes:
    """A Disconnect-ACK with a Message-Authenticator, signed as a NAS signs it."""
    attrs = bytes((80, 18)) + ZERO16
    header = struct.pack("!BBH", 41, request[1], 20 + len(attrs))
    mac = hmac.new(secret, header + request[4:20] + attrs, "md5").digest()
    attrs = attrs[:2] + mac
    response = hashlib.md5(header + request[4:20] + attrs + secret).digest()
    return header + response + attrs


@dataclass
class Nas:
    """The emulated NAS: the UDP port it listens on and every datagram it received."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    # True: it records each request and answers none (a NAS that is down, or firewalled).
    silent: bool = False

    def decoded(self, n: int) -> rp.Packet:
        """The ``n``-th request received, decoded with the NAS's secret."""
        return rp.CoAPacket(
            packet=self.received[n], secret=NAS_SECRET.encode(), dict=radius_dictionary()
        )


class NasProtocol(asyncio.DatagramProtocol):
    """The NAS's socket: keeps each datagram in ``nas.received`` and answers it with a
    signed Disconnect-ACK."""

    def __init__(self, nas: Nas) -> None:
        """Listen for ``nas``."""
        self.nas = nas
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Record the request and ACK it (unless the NAS is silent)."""
        self.nas.received.append(data)
        if self.transport is not None and not self.nas.silent:
            self.transport.sendto(signed_ack(data, NAS_SECRET.encode()), addr)
