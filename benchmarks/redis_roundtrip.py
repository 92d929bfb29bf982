"""What one Redis round trip costs this process, by the way it is sent and awaited.

A RADIUS batch under a light load is a few requests and one Redis round trip, so
the round trip's own cost is most of what such a request costs (benchmarks/
RESULTS.md, session 10). This sends --count GETs one after another, each awaited
before the next, and prints this process's CPU and the wall time per round trip:

- ``auto-pipeline``: ``AutoPipeline.execute``, as the request path sends;
- ``wire``: ``RedisWire.execute_many`` with one command, the lean connection alone;
- ``blocking socket``: a plain socket, ``sendall`` then a blocking ``recv``;
- ``polling socket``: the same socket non-blocking, ``recv`` retried until the
  reply is there, so the process never sleeps while Redis answers.

    python benchmarks/redis_roundtrip.py --redis-url redis://127.0.0.1:6379/9
"""

import argparse
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe

GET = b"*2\r\n$3\r\nGET\r\n$19\r\nbench:roundtrip:key\r\n"


def report(name: str, count: int, cpu: float, wall: float) -> None:
    """One line: CPU and wall time per round trip, in microseconds."""
    print(f"{name:16s} {cpu / count * 1e6:6.1f} us CPU  {wall / count * 1e6:6.1f} us wall")


async def timed(count: int, one: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """CPU and wall seconds of ``count`` awaited calls of ``one``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        await one()
    return time.process_time() - cpu, time.perf_counter() - wall


def socket_round_trips(host: str, port: int, count: int, *, poll: bool) -> tuple[float, float]:
    """CPU and wall seconds of ``count`` GETs over a plain socket (database 0: the key
    is absent, so each reply is one ``$-1`` line)."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(not poll)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        sock.sendall(GET)
        while True:
            try:
                if sock.recv(64):
                    break
            except BlockingIOError:
                continue
    spent = time.process_time() - cpu, time.perf_counter() - wall
    sock.close()
    return spent


async def measure(url: str, count: int) -> None:
    """Each way in turn, twice, after a warm-up."""
    import redis.asyncio as redis_asyncio

    from ocs.balances.autopipeline import AutoPipeline
    from ocs.balances.wire import RedisWire

    client = redis_asyncio.from_url(url)
    pipe = AutoPipeline(client, url)
    wire = RedisWire(url)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    await timed(1000, lambda: pipe.execute("GET", "bench:roundtrip:key"))
    for _ in range(2):
        cpu, wall = await timed(count, lambda: pipe.execute("GET", "bench:roundtrip:key"))
        report("auto-pipeline", count, cpu, wall)
        cpu, wall = await timed(count, lambda: wire.execute_many([("GET", "bench:roundtrip:key")]))
        report("wire", count, cpu, wall)
        for poll in (False, True):
            cpu, wall = socket_round_trips(host, port, count, poll=poll)
            report("polling socket" if poll else "blocking socket", count, cpu, wall)
    await pipe.drain()
    await wire.close()
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    uvloop.run(measure(args.redis_url, args.count))
    print(f"machine: {describe()}")


if __name__ == "__main__":
    main()
