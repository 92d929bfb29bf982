"""Fixed-rate RADIUS Access-Request latency: p50/p99 and loss at one rate, any server.

    python benchmarks/peers/rad_latency.py PORT RATE SECONDS

Sends RATE Access-Requests a second for SECONDS to 127.0.0.1:PORT (secret
testing123, users u1..u1000 with password pw), then waits 2 s for late replies
and prints one JSON object: p50/p90/p99 and max latency, packets sent, replies,
lost, and replies by code. The same packets go to ocs and to the FreeRADIUS
peers (README.md beside this file), so their figures compare.

Packets are built here (RFC 2865/3579): Message-Authenticator, User-Name,
User-Password, Called-Station-Id, Calling-Station-Id and Cisco h323-conf-id
(each request a new call). Requests are spread over 32 client sockets so that
each socket's 256 RADIUS identifiers are not reused while still in flight.
"""

import asyncio
import functools
import hashlib
import hmac
import json
import os
import struct
import sys
import time
import uuid

import uvloop

SECRET = b"testing123"
SOCKETS = 32
# How long replies are awaited after the last request is sent.
DRAIN_SECONDS = 2.0


def attribute(kind: int, value: bytes) -> bytes:
    """One RADIUS attribute: type, length, value."""
    return bytes([kind, len(value) + 2]) + value


def vendor_attribute(vendor: int, kind: int, value: bytes) -> bytes:
    """One Vendor-Specific attribute (26) holding a single vendor attribute."""
    inner = bytes([kind, len(value) + 2]) + value
    return bytes([26, len(inner) + 6]) + struct.pack("!I", vendor) + inner


def build(identifier: int, n: int, run: str) -> bytes:
    """Access-Request number ``n`` of this run, signed with a Message-Authenticator."""
    authenticator = os.urandom(16)
    password = b"pw".ljust(16, b"\0")
    key = hashlib.md5(SECRET + authenticator).digest()
    hidden = bytes(a ^ b for a, b in zip(password, key, strict=True))
    body = (
        attribute(80, b"\0" * 16)
        + attribute(1, f"u{n % 1000 + 1}".encode())
        + attribute(2, hidden)
        + attribute(30, b"447700900123")
        + attribute(31, b"4930123456")
        + vendor_attribute(9, 24, f"h323-conf-id={run}-{n}".encode())
    )
    packet = bytearray(struct.pack("!BBH", 1, identifier, 20 + len(body)) + authenticator + body)
    # The Message-Authenticator is the first attribute: its value is at bytes 22..38.
    packet[22:38] = hmac.new(SECRET, bytes(packet), hashlib.md5).digest()
    return bytes(packet)


class Replies(asyncio.DatagramProtocol):
    """Receives one client socket's replies and records each one's latency and code."""

    def __init__(
        self,
        socket_index: int,
        sent: dict[tuple[int, int], float],
        latencies: list[float],
        codes: dict[int, int],
    ) -> None:
        self.socket_index = socket_index
        self.sent = sent
        self.latencies = latencies
        self.codes = codes

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        received = time.perf_counter()
        started = self.sent.pop((self.socket_index, data[1]), None)
        if started is not None:
            self.latencies.append(received - started)
            self.codes[data[0]] = self.codes.get(data[0], 0) + 1


async def run(port: int, rate: int, seconds: float) -> dict[str, object]:
    """Send at ``rate`` a second for ``seconds``; the figures as a JSON-ready dict."""
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    run_id = uuid.uuid4().hex[:8]
    # Built ahead, so that building does not slow the sending down.
    packets = [build((i // SOCKETS) % 256, i, run_id) for i in range(total)]
    sent: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    codes: dict[int, int] = {}
    transports = []
    for k in range(SOCKETS):
        transport, _ = await loop.create_datagram_endpoint(
            functools.partial(Replies, k, sent, latencies, codes),
            remote_addr=("127.0.0.1", port),
        )
        transports.append(transport)
    start = time.perf_counter()
    i = 0
    collisions = 0
    while i < total:
        due = min(total, int((time.perf_counter() - start) * rate))
        while i < due:
            key = (i % SOCKETS, (i // SOCKETS) % 256)
            if key in sent:
                collisions += 1
            sent[key] = time.perf_counter()
            transports[i % SOCKETS].sendto(packets[i])
            i += 1
        await asyncio.sleep(0.0005)
    send_elapsed = time.perf_counter() - start
    await asyncio.sleep(DRAIN_SECONDS)
    for transport in transports:
        transport.close()
    latencies.sort()

    def quantile_ms(q: float) -> float:
        if not latencies:
            return float("nan")
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    return {
        "port": port,
        "rate": rate,
        "sent": total,
        "send_rate": round(total / send_elapsed),
        "replies": len(latencies),
        "lost": total - len(latencies),
        "codes": codes,
        "p50_ms": quantile_ms(0.5),
        "p90_ms": quantile_ms(0.9),
        "p99_ms": quantile_ms(0.99),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "id_reuse_in_flight": collisions,
    }


if __name__ == "__main__":
    print(json.dumps(uvloop.run(run(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))))
