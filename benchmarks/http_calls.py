"""Full calls over HTTP (authorize + stop) against a real `ocs serve` process.

Starts `ocs serve` (embedded Redis/PostgreSQL in a temporary data dir, or the
servers named by --redis-url/--database-url) and loads a plan and accounts.
Load comes from wrk (Debian package wrk, script wrk_full_call.lua: each
connection authorizes a call, then stops it) or, with --client aiohttp, from
Python clients. Prints full calls/s, latency, and the machine it ran on.

    python benchmarks/http_calls.py --seconds 20 --concurrency 64
    python benchmarks/http_calls.py --client aiohttp --calls 20000 --concurrency 128
    python benchmarks/http_calls.py --seconds 10 --set OCS_BACKGROUND_PROCESS=true
"""

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe

DECK = (
    "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    "447,UK Mobile,0.060,0.150,30,6\n44,UK Fixed,0.010,0,60,60\n49,Germany,0.012,0,1,1\n"
)


def start_server(
    data_dir: str,
    http_port: int,
    workers: int,
    redis_url: str | None,
    database_url: str | None,
    extra_env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """`ocs serve` in a child process, configured only by what is passed here; with
    ``cwd``, the ocs of that checkout (``python -m`` imports from the directory it runs in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    env.update(
        {
            "OCS_LOG_LEVEL": "WARNING",
            # The admin API needs a token from the first request: this one, for setup.
            "OCS_ADMIN_BOOTSTRAP_TOKEN": BENCH_ADMIN_TOKEN,
            **(extra_env or {}),
        }
    )
    if redis_url:
        env["OCS_REDIS_URL"] = redis_url
    if database_url:
        env["OCS_DATABASE_URL"] = database_url
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocs",
            "serve",
            "--data-dir",
            data_dir,
            "--workers",
            str(workers),
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(http_port),
        ],
        env=env,
        cwd=cwd,
    )


# The admin token `setup` sends (the server takes it as its bootstrap token).
BENCH_ADMIN_TOKEN = "ocs-benchmark-admin-token"
ADMIN = {"Authorization": f"Bearer {BENCH_ADMIN_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(session: aiohttp.ClientSession, base: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            async with session.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("ocs serve did not become healthy")
        await asyncio.sleep(0.1)


async def setup(session: aiohttp.ClientSession, base: str, accounts: int) -> None:
    async with session.post(
        f"{base}/v1/plans",
        json={"id": "bench", "currency": "EUR", "max_lines": 1000},
        headers=ADMIN,
    ) as r:
        assert r.status in (201, 409), await r.text()
    async with session.post(f"{base}/v1/plans/bench/tariffs", data=DECK, headers=ADMIN) as r:
        assert r.status == 200, await r.text()
    for n in range(accounts):
        async with session.post(
            f"{base}/v1/accounts",
            json={
                "id": f"b{n}",
                "plan": "bench",
                "balance": "1000000.00",
                "max_lines": 1000,
            },
            headers=ADMIN,
        ) as r:
            assert r.status in (201, 409), await r.text()


async def run_load(
    base: str, calls: int, concurrency: int, accounts: int
) -> tuple[float, list[float], list[float]]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    auth_latency: list[float] = []
    stop_latency: list[float] = []
    counter = iter(range(calls))
    run = uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for n in counter:
                call_id = f"bench-{run}-{n}"
                t0 = time.perf_counter()
                async with session.post(
                    f"{base}/v1/calls",
                    json={
                        "account": f"b{n % accounts}",
                        "destination": "447700900123",
                        "call_id": call_id,
                    },
                ) as r:
                    await r.read()
                    assert r.status == 201, r.status
                t1 = time.perf_counter()
                async with session.post(
                    f"{base}/v1/calls/{call_id}/stop", json={"duration": 45}
                ) as r:
                    await r.read()
                    assert r.status == 200, r.status
                t2 = time.perf_counter()
                auth_latency.append(t1 - t0)
                stop_latency.append(t2 - t1)

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    return elapsed, auth_latency, stop_latency


def run_wrk(base: str, seconds: int, concurrency: int, accounts: int) -> str:
    script = Path(__file__).resolve().parent / "wrk_full_call.lua"
    result = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(concurrency),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(script),
            base,
        ],
        env={**os.environ, "ACCOUNTS": str(accounts)},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--client", choices=["wrk", "aiohttp"], default="wrk")
    parser.add_argument("--seconds", type=int, default=20, help="wrk run length")
    parser.add_argument("--calls", type=int, default=20_000, help="aiohttp client calls")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="ocs serve processes")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OCS_NAME=VALUE",
        help="a setting for the server (e.g. OCS_BACKGROUND_PROCESS=true)",
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ocs-bench-", dir="/tmp") as data_dir:
        server = start_server(
            data_dir,
            port,
            args.workers,
            args.redis_url,
            args.database_url,
            extra_env=dict(item.split("=", 1) for item in args.set),
        )
        try:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, base, 120)
                await setup(session, base, args.accounts)
            await run_load(base, 2000, args.concurrency, args.accounts)  # warm up
            if args.client == "wrk":
                report = run_wrk(base, args.seconds, args.concurrency, args.accounts)
            else:
                elapsed, auth, stop = await run_load(
                    base, args.calls, args.concurrency, args.accounts
                )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    if args.client == "wrk":
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", report)[1])
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
        print(
            f"full calls (authorize + stop over HTTP, wrk -c {args.concurrency}): "
            f"{rate / 2:,.0f} calls/s ({rate:,.0f} requests/s, {args.workers} ocs process(es), "
            f"load generator on the same machine)"
        )
        print("non-2xx responses:", errors[1] if errors else 0)
        print(
            "\n".join(
                line
                for line in report.splitlines()
                if line.strip().startswith(("50%", "90%", "99%"))
            )
        )
        print(f"machine: {describe()}")
        return
    print(
        f"full calls (authorize + stop over HTTP): {args.calls / elapsed:,.0f} calls/s "
        f"({args.calls} calls, {args.concurrency} concurrent, {args.workers} ocs process(es), "
        f"client on the same machine)"
    )
    print(f"authorize latency ms: p50 {pct(auth, 50):.2f}  p99 {pct(auth, 99):.2f}")
    print(f"stop latency ms:      p50 {pct(stop, 50):.2f}  p99 {pct(stop, 99):.2f}")
    print(f"machine: {describe()}")


if __name__ == "__main__":
    asyncio.run(main())
