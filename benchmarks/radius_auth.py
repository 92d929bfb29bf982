"""RADIUS throughput of `ocs serve`: Access-Requests, and full calls (accept, start, stop).

The load is FreeRADIUS's radclient (freeradius-utils) with -p parallel
requests, as in the design card's measured facts for FreeRADIUS itself: N distinct
Access-Requests (each a new call with its own h323-conf-id, a Message-
Authenticator on each) read from a file. Accounts have lines and funds for
every call, so each request is a full authorization: tariff match, funds and
line reserved in Redis, call registered.

    python benchmarks/radius_auth.py --requests 50000 --parallel 256

With --full-calls, the same calls are then started and stopped (Accounting
Start, then Stop of 45 s), each phase a radclient run: full calls/s is the
number of calls over the three phases' total time.

Each phase also prints the CPU time ocs spent per request (its processes' user +
system time over the phase, divided by the requests): on a machine shared with the
load generator and Redis it moves far less than the throughput does, so it is the
figure to compare two trees by. Run from another checkout's root, the server is
that checkout's ocs (``python -m ocs`` imports from the working directory):

    (cd /tmp/before && python /path/to/benchmarks/radius_auth.py --requests 30000)
"""

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.http_calls import free_port, setup, start_server, wait_healthy
from benchmarks.machine import describe
from ocs.radius.radclient_hint import radclient_input

SECRET = "bench-secret"


def run_radclient(
    path: Path, port: int, kind: str, parallel: int
) -> subprocess.CompletedProcess[str]:
    """Send every request in ``path`` with radclient, ``parallel`` at a time, once each."""
    return subprocess.run(
        [
            "radclient",
            "-q",
            "-p",
            str(parallel),
            "-r",
            "1",
            "-t",
            "5",
            "-f",
            str(path),
            f"127.0.0.1:{port}",
            kind,
            SECRET,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def write_accounting(path: Path, count: int, accounts: int, run: str, status: str) -> None:
    with path.open("w") as out:
        for n in range(count):
            attributes = [
                ("Acct-Status-Type", status),
                ("User-Name", f"b{n % accounts}"),
                ("Acct-Session-Id", f"{run}-{n}"),
                ("h323-conf-id", f"h323-conf-id={run}-{n}"),
            ]
            if status == "Stop":
                attributes.append(("Acct-Session-Time", "45"))
            out.write(radclient_input(attributes))
            out.write("\n")


def write_requests(path: Path, count: int, accounts: int, run: str = "") -> None:
    run = run or uuid.uuid4().hex[:8]
    with path.open("w") as out:
        for n in range(count):
            out.write(
                radclient_input(
                    [
                        ("User-Name", f"b{n % accounts}"),
                        ("Called-Station-Id", "447700900123"),
                        ("Calling-Station-Id", "4930123456"),
                        ("h323-conf-id", f"h323-conf-id={run}-{n}"),
                    ]
                )
            )
            out.write("\n")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children (the workers) so far."""
    process = psutil.Process(pid)
    total = 0.0
    for one in [process, *process.children(recursive=True)]:
        try:
            times = one.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--parallel", type=int, default=256)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument(
        "--full-calls",
        action="store_true",
        help="also start and stop every call (Accounting Start, Stop)",
    )
    parser.add_argument("--workers", type=int, default=1, help="ocs serve processes")
    parser.add_argument("--redis-url")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    http_port, auth_port, acct_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    with tempfile.TemporaryDirectory(prefix="ocs-bench-", dir="/tmp") as tmp:
        requests_file = Path(tmp) / "requests.txt"
        run = uuid.uuid4().hex[:8]
        write_requests(requests_file, args.requests, args.accounts, run)
        starts_file, stops_file = Path(tmp) / "starts.txt", Path(tmp) / "stops.txt"
        if args.full_calls:
            write_accounting(starts_file, args.requests, args.accounts, run, "Start")
            write_accounting(stops_file, args.requests, args.accounts, run, "Stop")
        server = start_server(
            str(Path(tmp) / "var"),
            http_port,
            args.workers,
            args.redis_url,
            args.database_url,
            extra_env={
                "OCS_RADIUS_AUTH_PORT": str(auth_port),
                "OCS_RADIUS_ACCT_PORT": str(acct_port),
                "OCS_RADIUS_CLIENTS": f'[{{"address": "127.0.0.1", "secret": "{SECRET}"}}]',
                # Unstarted accepts are released by the janitor after this long.
                "OCS_START_TIMEOUT": "3600",
            },
        )
        try:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, base, 120)
                await setup(session, base, args.accounts)
            cpu = cpu_seconds(server.pid)
            started = time.perf_counter()
            result = run_radclient(requests_file, auth_port, "auth", args.parallel)
            elapsed = time.perf_counter() - started
            cpu_per = {"Access-Request": cpu_seconds(server.pid) - cpu}
            accounting_elapsed = 0.0
            if args.full_calls:
                mark = time.perf_counter()
                for name, phase in (("Start", starts_file), ("Stop", stops_file)):
                    cpu = cpu_seconds(server.pid)
                    run_radclient(phase, acct_port, "acct", args.parallel)
                    cpu_per[f"Accounting {name}"] = cpu_seconds(server.pid) - cpu
                accounting_elapsed = time.perf_counter() - mark
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{base}/metrics") as response,
            ):
                text = await response.text()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    accepted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('ocs_radius_packets_total{result="accept",type="access"}')
    )
    print(
        f"RADIUS Access-Request -> Access-Accept: {args.requests / elapsed:,.0f} requests/s "
        f"({int(accepted)} of {args.requests} accepted in {elapsed:.2f} s, radclient "
        f"-p {args.parallel}, {args.workers} ocs process(es), load generator on the same machine)"
    )
    if args.full_calls:
        stopped = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('ocs_radius_packets_total{result="ok",type="accounting-stop"}')
        )
        total = elapsed + accounting_elapsed
        print(
            f"RADIUS full calls (Access-Request, Accounting Start, Stop): "
            f"{args.requests / total:,.0f} calls/s ({int(stopped)} of {args.requests} "
            f"stopped and charged in {total:.2f} s)"
        )
    print(
        "ocs CPU per request: "
        + ", ".join(f"{name} {1e6 * cpu / args.requests:.0f} us" for name, cpu in cpu_per.items())
    )
    if result.returncode != 0:
        print("radclient reported failures:", result.stderr.strip()[:500])
    print(f"machine: {describe()}")


if __name__ == "__main__":
    asyncio.run(main())
