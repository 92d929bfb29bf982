"""Scale-out: RADIUS Access-Requests/s and full HTTP calls/s by worker count, on a standalone
Redis and on a 3-master Redis Cluster (issue 17, decision 0033).

For each backend and each worker count: a fresh Redis (one redis-server, or three
started as a cluster the way the tests start theirs, tests/redis_cluster.py; both
with AOF, ``appendfsync everysec``), a fresh PostgreSQL database, and
``ocs serve --workers N`` configured only through its environment. The RADIUS load
is radclient's (as benchmarks/radius_auth.py: each request a new call, funds and a
line reserved); the HTTP load is wrk's full calls, authorize then stop (as
benchmarks/http_calls.py), or Python clients with ``--client aiohttp``. Prints one
row per run and the machine it ran on.

    python benchmarks/scale.py                                  # 1 and 2 workers
    python benchmarks/scale.py --workers-list 1,2,4,8 --requests 200000 --seconds 20
    python benchmarks/scale.py --backends cluster --database-url postgresql://...

The load generators run on the same machine: on a small machine they take cores
the workers would use.
"""

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.http_calls import free_port, run_load, run_wrk, setup, start_server, wait_healthy
from benchmarks.machine import describe
from benchmarks.radius_auth import SECRET, run_radclient, write_requests
from tests.redis_cluster import RedisClusterProcess, redis_binary


@dataclass(frozen=True)
class Row:
    """One run's figures."""

    backend: str
    workers: int
    radius_per_s: float
    radius_accepted: int
    http_calls_per_s: float
    http_errors: int


def start_standalone(directory: Path) -> tuple[str, Callable[[], None]]:
    """One redis-server with AOF (everysec) in ``directory``: its URL and how to stop it."""
    port = free_port()
    process = subprocess.Popen(
        [
            redis_binary("redis-server", "OCS_TEST_REDIS_SERVER"),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
            *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        probe = subprocess.run(
            [redis_binary("redis-cli", "OCS_TEST_REDIS_CLI"), "-p", str(port), "PING"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == "PONG":
            break
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)

    def stop() -> None:
        process.terminate()
        process.wait(timeout=30)

    return f"redis://127.0.0.1:{port}/0", stop


async def fresh_database(admin_url: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    """A new database on the PostgreSQL of ``admin_url``: its URL and how to drop it."""
    name = f"ocs_scale_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin_url.rpartition("/")

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    return f"{base}/{name}", drop


async def measure(
    args: argparse.Namespace, backend: str, workers: int, admin_url: str, tmp: Path
) -> Row:
    """One run: a fresh Redis (or cluster) and database, ocs with ``workers`` workers."""
    run_dir = tmp / f"{backend}-{workers}"
    run_dir.mkdir()
    cluster: RedisClusterProcess | None = None
    stop_redis: Callable[[], None]
    if backend == "cluster":
        cluster = RedisClusterProcess(masters=3, appendfsync="everysec")
        cluster.start()
        redis_url, stop_redis = cluster.url, cluster.stop
    else:
        redis_url, stop_redis = start_standalone(run_dir)
    database_url, drop_database = await fresh_database(admin_url)
    http_port, auth_port, acct_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    requests_file = run_dir / "requests.txt"
    write_requests(requests_file, args.requests, args.accounts, uuid.uuid4().hex[:8])
    server = start_server(
        str(run_dir / "var"),
        http_port,
        workers,
        redis_url,
        database_url,
        extra_env={
            "OCS_REDIS_CLUSTER": "true" if cluster is not None else "false",
            "OCS_RADIUS_AUTH_PORT": str(auth_port),
            "OCS_RADIUS_ACCT_PORT": str(acct_port),
            "OCS_RADIUS_CLIENTS": f'[{{"address": "127.0.0.1", "secret": "{SECRET}"}}]',
            "OCS_START_TIMEOUT": "3600",  # the RADIUS calls are never started
        },
    )
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, base, 180)
            await setup(session, base, args.accounts)
        started = time.perf_counter()
        run_radclient(requests_file, auth_port, "auth", args.parallel)
        radius_elapsed = time.perf_counter() - started
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as r:
            metrics_text = await r.text()
        accepted = int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics_text.splitlines()
                if line.startswith('ocs_radius_packets_total{result="accept",type="access"}')
            )
        )
        await run_load(base, min(2000, args.calls), args.concurrency, args.accounts)  # warm up
        if args.client == "wrk":
            report = run_wrk(base, args.seconds, args.concurrency, args.accounts)
            found = re.search(r"Requests/sec:\s+([\d.]+)", report)
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
            http_rate = float(found[1]) / 2 if found else 0.0
            http_errors = int(errors[1]) if errors else 0
        else:
            elapsed, _, _ = await run_load(base, args.calls, args.concurrency, args.accounts)
            http_rate, http_errors = args.calls / elapsed, 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        await drop_database()
        stop_redis()
    return Row(backend, workers, args.requests / radius_elapsed, accepted, http_rate, http_errors)


def print_rows(rows: list[Row], args: argparse.Namespace) -> None:
    """The table, each row against the same backend's first worker count."""
    print(
        f"{'backend':<11} {'workers':>7} {'RADIUS auth/s':>14} {'x':>5} "
        f"{'HTTP calls/s':>13} {'x':>5}  notes"
    )
    first: dict[str, Row] = {}
    for row in rows:
        one = first.setdefault(row.backend, row)
        notes = []
        if row.radius_accepted < args.requests:
            notes.append(f"{row.radius_accepted} of {args.requests} accepted")
        if row.http_errors:
            notes.append(f"{row.http_errors} HTTP errors")
        print(
            f"{row.backend:<11} {row.workers:>7} {row.radius_per_s:>14,.0f} "
            f"{row.radius_per_s / one.radius_per_s:>5.2f} {row.http_calls_per_s:>13,.0f} "
            f"{row.http_calls_per_s / max(one.http_calls_per_s, 1e-9):>5.2f}  {'; '.join(notes)}"
        )
    print(
        f"RADIUS: radclient -p {args.parallel}, {args.requests} Access-Requests a run; HTTP: "
        f"{args.client} -c {args.concurrency}, full calls (authorize + stop); "
        f"{args.accounts} accounts; cluster: 3 masters, no replicas; load on the same machine"
    )
    print(f"machine: {describe()}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers-list", default="1,2", help="worker counts, e.g. 1,2,4,8")
    parser.add_argument("--backends", default="standalone,cluster")
    parser.add_argument("--requests", type=int, default=50_000, help="RADIUS requests a run")
    parser.add_argument("--parallel", type=int, default=256, help="radclient -p")
    parser.add_argument("--client", choices=["wrk", "aiohttp"], default="wrk")
    parser.add_argument("--seconds", type=int, default=15, help="wrk run length")
    parser.add_argument("--calls", type=int, default=20_000, help="aiohttp client calls")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument(
        "--database-url", help="an external PostgreSQL (admin URL); default: an embedded one"
    )
    args = parser.parse_args()
    workers_list = [int(n) for n in args.workers_list.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    if not set(backends) <= {"standalone", "cluster"}:
        raise SystemExit("--backends: standalone, cluster")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ocs-scale-", dir="/tmp") as tmp:
        stop_postgres: Callable[[], None] | None = None
        admin_url = args.database_url
        if admin_url is None:
            from ocs import embedded

            pg = embedded.start_embedded_postgres(Path(tmp) / "pg")
            admin_url, stop_postgres = pg.url, pg.stop
        try:
            for backend in backends:
                for workers in workers_list:
                    row = await measure(args, backend, workers, admin_url, Path(tmp))
                    print(
                        f"  {backend}, {workers} worker(s): {row.radius_per_s:,.0f} "
                        f"Access-Requests/s, {row.http_calls_per_s:,.0f} calls/s",
                        flush=True,
                    )
                    rows.append(row)
        finally:
            if stop_postgres is not None:
                stop_postgres()
    print_rows(rows, args)


if __name__ == "__main__":
    asyncio.run(main())
