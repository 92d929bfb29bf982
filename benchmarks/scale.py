"""Scale-out: RADIUS Access-Requests/s and full HTTP calls/s by worker count, on a standalone
Redis and on a 3-master Redis Cluster (issue 17, decision 0033).

For each backend and each worker count: a fresh Redis (one redis-server, or three
started as a cluster the way the tests start theirs, tests/redis_cluster.py; both
with AOF, ``appendfsync everysec``), a fresh PostgreSQL database, and
``ocs serve --workers N`` configured only through its environment. The databases are
created on the PostgreSQL named by ``--database-url`` or, without it, on one embedded
PostgreSQL (pgserver, as ``ocs`` starts its own) in the run's temporary directory.
The RADIUS load is radclient's (as benchmarks/radius_auth.py: each request a new call,
funds and a line reserved); the HTTP load is wrk's full calls, authorize then stop (as
benchmarks/http_calls.py), or Python clients with ``--client aiohttp``. Prints one
row per run and the machine it ran on.

The RADIUS rate is all requests over the time until the last radclient ends. One
radclient process and one wrk thread can each be slower than several workers: with
``--load-processes K`` the Access-Requests are split over K lanes of radclient run at
once (each ``-p --parallel``) and wrk runs K threads (``-t K``) over the
``--concurrency`` connections. radclient 3.2 walks its whole list of requests for each
packet it sends or receives (and busy-loops on a core meanwhile), so its CPU time a
request grows with its file (on the 2-core machine, -p 64: ~11,000 requests a
CPU-second from 2,500-request files, ~3,000 from 20,000): ``--chunk N`` gives each lane
files of at most N requests, one radclient after another.

Before the timed requests, bursts of Access-Requests wait until every worker has the
plan just set up (each loads it a moment later, on PostgreSQL's notification), then
``--radius-warm-up N`` sends N Access-Requests the way the timed ones go (the workers'
first requests load numba's compiled kernels and Redis's scripts). The HTTP load is
always warmed up by up to 2,000 Python-client calls.

radclient waits out lost requests one timeout (5 s) after another, so a run in which
ocs drops some would measure radclient's waiting: the radclients are stopped once
ocs's accepted count (``/metrics``, looked at every 0.25 s) has not grown for
``--radius-stall`` seconds, or at ``--radius-limit``, and such a row's RADIUS rate is
ocs's accepted count until it last grew, over that time. A row's notes count the
requests not accepted and those dropped by ocs or by the kernel.

radclient, wrk, redis-server and redis-cli are taken from PATH (the Redis ones also from
``OCS_TEST_REDIS_SERVER`` / ``OCS_TEST_REDIS_CLI``).

    python benchmarks/scale.py                                  # 1 and 2 workers
    python benchmarks/scale.py --workers-list 1,2,4,8 --requests 200000 --accounts 400 \
        --seconds 20 --load-processes 4 --parallel 128 --chunk 2000 --concurrency 256
    python benchmarks/scale.py --backends cluster --database-url postgresql://...

The load generators run on the same machine: on a small machine they take cores
the workers would use. With ``--pin`` each part gets cores of its own, so that the
curve measures ocs's own growth rather than its fight with the load for cores: the
ocs workers the first W cores (W: the largest worker count, whatever a run's count),
the Redis servers the next 3, and this script, radclient, wrk and PostgreSQL the
rest (at least 2). On a 16-core machine, 8 workers leave 5 cores to the load:

    python benchmarks/scale.py --pin --workers-list 1,2,4,8 --load-processes 4 ...
"""

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.http_calls import free_port, run_load, setup, start_server, wait_healthy
from benchmarks.machine import describe
from benchmarks.radius_auth import SECRET, write_requests
from tests.radius_udp import UdpClient, access_request, wire
from tests.redis_cluster import RedisClusterProcess, redis_binary


@dataclass(frozen=True)
class Row:
    """One run's figures."""

    backend: str
    workers: int
    radius_per_s: float
    radius_accepted: int
    # RADIUS packets ocs dropped unanswered, by reason (overload, late, ...), and datagrams
    # the kernel dropped on the socket, during the timed requests.
    radius_dropped: dict[str, int]
    radius_socket_drops: int
    # Why the radclients were stopped before they ended ("": they were not).
    radius_stopped: str
    http_calls_per_s: float
    http_errors: int


@dataclass(frozen=True)
class Cores:
    """Which cores each part runs on (``--pin``); None everywhere: wherever the OS puts it."""

    ocs: list[int] | None = None
    redis: list[int] | None = None
    load: list[int] | None = None

    @classmethod
    def split(cls, workers: int) -> "Cores":
        """The first ``workers`` cores to ocs, the next 3 to Redis, the rest to the load."""
        available = sorted(os.sched_getaffinity(0))
        if len(available) < workers + 3 + 2:
            raise SystemExit(
                f"--pin: {workers} workers, 3 Redis servers and the load need at least "
                f"{workers + 5} cores; this process may use {len(available)}"
            )
        return cls(available[:workers], available[workers : workers + 3], available[workers + 3 :])

    @staticmethod
    def pin(pid: int, cores: list[int] | None) -> None:
        """Keep process ``pid`` and every process under it on ``cores`` (None: leave it)."""
        if cores is None:
            return
        parent = psutil.Process(pid)
        for process in [parent, *parent.children(recursive=True)]:
            try:
                process.cpu_affinity(cores)
            except psutil.NoSuchProcess:
                continue


def start_standalone(
    directory: Path, cores: list[int] | None = None
) -> tuple[str, Callable[[], None]]:
    """One redis-server with AOF (everysec) in ``directory`` (on ``cores``, when given):
    its URL and how to stop it."""
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
    Cores.pin(process.pid, cores)
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

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    return with_database(admin_url, name), drop


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name``; its host, port and query are kept as they are."""
    # An embedded server's URL names its socket directory in the query
    # (postgresql://postgres@/postgres?host=/tmp/...): only the path may change.
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def write_request_files(
    run_dir: Path,
    count: int,
    accounts: int,
    processes: int,
    chunk: int = 0,
    name: str = "requests",
) -> list[list[Path]]:
    """``count`` Access-Requests split over ``processes`` lanes, each lane's share in files
    of at most ``chunk`` requests (0: one file a lane); every call id unique."""
    run = uuid.uuid4().hex[:8]
    lanes = []
    for index in range(processes):
        share = count // processes + (1 if index < count % processes else 0)
        sizes = [share] if chunk <= 0 else [min(chunk, share - n) for n in range(0, share, chunk)]
        lane = []
        for part, size in enumerate(sizes):
            path = run_dir / f"{name}-{index}-{part}.txt"
            write_requests(path, size, accounts, f"{run}p{index}c{part}")
            lane.append(path)
        lanes.append(lane)
    return lanes


class Lanes:
    """radclient lanes: all at once, each lane's files one radclient after another."""

    def __init__(self, lanes: list[list[Path]], port: int, parallel: int) -> None:
        self.lanes = lanes
        self.port = port
        self.parallel = parallel
        self._stopped = threading.Event()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def run(self) -> None:
        """Send every file's requests (in the calling thread, a thread for each lane)."""
        with ThreadPoolExecutor(max_workers=len(self.lanes)) as pool:
            list(pool.map(self._lane, self.lanes))

    def stop(self) -> None:
        """Kill the radclients running now and start no more."""
        with self._lock:
            self._stopped.set()
            for process in self._running:
                process.kill()

    def _lane(self, paths: list[Path]) -> None:
        for path in paths:
            log = path.with_suffix(".radclient.log")
            with self._lock, log.open("w") as stderr:
                if self._stopped.is_set():
                    return
                # The command of benchmarks/radius_auth.py's run_radclient (-r 1: each
                # request sent once).
                process = subprocess.Popen(
                    [
                        "radclient",
                        *("-q", "-p", str(self.parallel), "-r", "1", "-t", "5"),
                        *("-f", str(path), f"127.0.0.1:{self.port}", "auth", SECRET),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
                self._running.add(process)
            process.wait()
            with self._lock:
                self._running.discard(process)
            if process.returncode != 0 and not self._stopped.is_set():
                # Rejects and lost requests show in the row's notes; this says why.
                tail = " | ".join(log.read_text().strip().splitlines()[-3:]) or "rejected or lost"
                print(f"  radclient exited {process.returncode}: {tail}", file=sys.stderr)


@dataclass(frozen=True)
class RadiusRun:
    """What one round of radclient lanes did, by ocs's counters (all workers)."""

    elapsed: float  # seconds until the last radclient ended (or was stopped)
    accepted: int
    dropped: dict[str, int]  # by ocs, by reason: overload, late, ...
    socket_drops: int  # by the kernel: the socket's receive buffer was full
    # The accepted requests until the last time the count was seen to grow, and when.
    accepted_by_last_growth: int
    last_growth: float
    stopped: str  # why the radclients were stopped ("": they all ended by themselves)


async def send_requests(
    lanes: list[list[Path]],
    port: int,
    parallel: int,
    base: str,
    stall: float,
    limit: float | None = None,
) -> RadiusRun:
    """Send every file's requests with radclient lanes, watching ocs's accepted count.

    radclient 3.2 waits out its lost requests one timeout (5 s) after another: a run in
    which ocs dropped some would last that much longer and measure radclient's waiting.
    The radclients are stopped once the accepted count has not grown for ``stall``
    seconds (or at ``limit`` seconds).
    """
    runner = Lanes(lanes, port, parallel)
    first = await radius_counts(base)
    started = time.perf_counter()
    sending = asyncio.ensure_future(asyncio.to_thread(runner.run))
    last_growth, accepted = 0.0, first.accepted
    stopped = ""
    while not sending.done():
        await asyncio.wait({sending}, timeout=0.25)
        now = time.perf_counter() - started
        counted = (await radius_counts(base)).accepted
        if counted > accepted:
            last_growth, accepted = now, counted
        elif not stopped and now - last_growth > stall:
            stopped = f"no request accepted for {stall:g} s"
            runner.stop()
        if not stopped and limit is not None and now > limit:
            stopped = f"stopped at {limit:g} s"
            runner.stop()
    await sending
    elapsed = time.perf_counter() - started
    last = await radius_counts(base)
    if last.accepted > accepted:  # accepted after the last look, before the radclients ended
        last_growth, accepted = elapsed, last.accepted
    dropped = {
        reason: count - first.dropped.get(reason, 0) for reason, count in last.dropped.items()
    }
    return RadiusRun(
        elapsed=elapsed,
        accepted=last.accepted - first.accepted,
        dropped={reason: count for reason, count in dropped.items() if count},
        socket_drops=last.socket_drops - first.socket_drops,
        accepted_by_last_growth=accepted - first.accepted,
        last_growth=last_growth,
        stopped=stopped,
    )


# wrk runs each thread's copy of the full-call script in its own Lua state, whose
# math.random starts from the same seed: every thread would draw the same call-id tag
# (in the same second) and authorize, then stop, another thread's calls. This wrapper
# seeds each thread apart before the script's own init draws its tag.
WRK_THREAD_SEEDS = """-- written by benchmarks/scale.py: wrk_full_call.lua, each thread seeded apart
dofile(%s)
local full_call_setup, full_call_init = setup, init
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("scale_thread", threads)
  full_call_setup(thread)
end

function init(args)
  math.randomseed(os.time() + 7919 * scale_thread)
  full_call_init(args)
end
"""


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk_threads(
    run_dir: Path, base: str, seconds: int, threads: int, concurrency: int, accounts: int
) -> str:
    """wrk's report of ``seconds`` of full calls from ``threads`` threads."""
    script = run_dir / "wrk_full_call_threads.lua"
    full_call = Path(__file__).resolve().parent / "wrk_full_call.lua"
    script.write_text(WRK_THREAD_SEEDS % lua_string(str(full_call)))
    result = subprocess.run(
        [
            "wrk",
            *("-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s"),
            *("--latency", "-s", str(script), base),
        ],
        env={**os.environ, "ACCOUNTS": str(accounts)},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


async def wait_radius_ready(port: int, workers: int, accounts: int, within: float) -> int:
    """Bursts of Access-Requests until one is accepted whole: the rounds it took.

    Each worker loads the plan set up through one of them a moment later (its catalog
    reloads on PostgreSQL's notification); until then it drops the plan's requests, and
    radclient would wait out each of them. A burst of 32 a worker, on the socket all the
    workers read, reaches every one of them in all likelihood.
    """
    run = uuid.uuid4().hex[:8]
    burst = min(256, 32 * workers)  # at most one of each RADIUS identifier
    deadline = time.monotonic() + within
    rounds = 0
    while True:
        rounds += 1
        client = await UdpClient.open()  # a new source port: no reply of an earlier round
        try:
            for n in range(burst):
                request = access_request(
                    SECRET,
                    [
                        ("User-Name", f"b{n % accounts}"),
                        ("Called-Station-Id", "447700900123"),
                        ("Calling-Station-Id", "4930123456"),
                        ("h323-conf-id", f"h323-conf-id=ready-{run}-{rounds}-{n}"),
                    ],
                )
                client.send(wire(request), port)
            accepted = 0
            for _ in range(burst):
                reply = await client.receive(1.0)
                if reply is None:
                    break
                accepted += reply[0] == 2  # Access-Accept
        finally:
            client.close()
        if accepted == burst:
            return rounds
        if time.monotonic() > deadline:
            raise SystemExit(f"RADIUS: {accepted} of {burst} accepted after {within:g} s")


@dataclass(frozen=True)
class RadiusCounts:
    """ocs's RADIUS counters by ``/metrics`` (all workers), each since the start."""

    accepted: int  # Access-Requests accepted
    dropped: dict[str, int]  # RADIUS packets dropped unanswered, by reason
    socket_drops: int  # datagrams the kernel dropped on the Access-Request socket


async def radius_counts(base: str) -> RadiusCounts:
    """ocs's RADIUS counters now."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as r:
        metrics_text = await r.text()
    accepted = socket_drops = 0.0
    dropped: dict[str, int] = {}
    for line in metrics_text.splitlines():
        value = line.rsplit(" ", 1)[-1]
        if line.startswith('ocs_radius_packets_total{result="accept",type="access"}'):
            accepted += float(value)
        elif line.startswith('ocs_radius_socket_drops{port="auth"}'):
            socket_drops += float(value)
        elif found := re.match(r'ocs_radius_dropped_total\{reason="([^"]+)"\}', line):
            dropped[found[1]] = dropped.get(found[1], 0) + int(float(value))
    return RadiusCounts(int(accepted), dropped, int(socket_drops))


async def measure(
    args: argparse.Namespace,
    backend: str,
    workers: int,
    admin_url: str,
    tmp: Path,
    cores: Cores,
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
        for node in cluster.nodes:
            if node.process is not None:
                cores.pin(node.process.pid, cores.redis)
    else:
        redis_url, stop_redis = start_standalone(run_dir, cores.redis)
    database_url, drop_database = await fresh_database(admin_url)
    http_port, auth_port, acct_port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    request_files = write_request_files(
        run_dir, args.requests, args.accounts, args.load_processes, args.chunk
    )
    warm_up_files = (
        write_request_files(
            run_dir, args.radius_warm_up, args.accounts, args.load_processes, args.chunk, "warm-up"
        )
        if args.radius_warm_up
        else []
    )
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
            # Healthy: every worker runs; a worker restarted later inherits its parent's.
            cores.pin(server.pid, cores.ocs)
            await setup(session, base, args.accounts)
        rounds = await wait_radius_ready(auth_port, workers, args.accounts, 60)
        if rounds > 1:
            print(
                f"  {backend}, {workers} worker(s): every worker had the plan after {rounds} bursts"
            )
        if warm_up_files:
            await send_requests(
                warm_up_files, auth_port, args.parallel, base, args.radius_stall, args.radius_limit
            )
        radius = await send_requests(
            request_files, auth_port, args.parallel, base, args.radius_stall, args.radius_limit
        )
        await run_load(base, min(2000, args.calls), args.concurrency, args.accounts)  # warm up
        if args.client == "wrk":
            report = run_wrk_threads(
                run_dir, base, args.seconds, args.load_processes, args.concurrency, args.accounts
            )
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
    if radius.accepted == args.requests and not radius.stopped:
        radius_rate = args.requests / radius.elapsed
    else:
        # Requests lost or refused: radclient's time includes waiting for them; ocs's
        # count until it last grew is what it served.
        radius_rate = radius.accepted_by_last_growth / max(radius.last_growth, 1e-9)
    return Row(
        backend,
        workers,
        radius_rate,
        radius.accepted,
        radius.dropped,
        radius.socket_drops,
        radius.stopped,
        http_rate,
        http_errors,
    )


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
        if row.radius_accepted < args.requests or row.radius_stopped:
            notes.append(
                f"{row.radius_accepted} of {args.requests} accepted (RADIUS rate: ocs's "
                "accepted count until it last grew)"
            )
        if row.radius_dropped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(row.radius_dropped.items()))
            notes.append(f"dropped by ocs: {reasons}")
        if row.radius_socket_drops:
            notes.append(f"{row.radius_socket_drops} dropped by the kernel")
        if row.radius_stopped:
            notes.append(f"radclients stopped: {row.radius_stopped}")
        if row.http_errors:
            notes.append(f"{row.http_errors} HTTP errors")
        print(
            f"{row.backend:<11} {row.workers:>7} {row.radius_per_s:>14,.0f} "
            f"{row.radius_per_s / one.radius_per_s:>5.2f} {row.http_calls_per_s:>13,.0f} "
            f"{row.http_calls_per_s / max(one.http_calls_per_s, 1e-9):>5.2f}  {'; '.join(notes)}"
        )
    wrk_threads = f" -t {args.load_processes}" if args.client == "wrk" else ""
    print(
        f"RADIUS: {args.load_processes} x radclient -p {args.parallel}"
        f"{f' (files of {args.chunk})' if args.chunk else ''}, {args.requests} "
        f"Access-Requests a run after {args.radius_warm_up} not timed; HTTP: "
        f"{args.client}{wrk_threads} -c {args.concurrency}, full calls (authorize + stop); "
        f"{args.accounts} accounts; cluster: 3 masters, no replicas; load on the same machine"
        f"{', each part on cores of its own (--pin)' if args.pin else ''}"
    )
    print(f"machine: {describe()}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers-list", default="1,2", help="worker counts, e.g. 1,2,4,8")
    parser.add_argument("--backends", default="standalone,cluster")
    parser.add_argument("--requests", type=int, default=50_000, help="RADIUS requests a run")
    parser.add_argument("--parallel", type=int, default=256, help="radclient -p (each)")
    parser.add_argument(
        "--load-processes",
        type=int,
        default=1,
        help="radclient processes at once, and wrk threads (-t)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="Access-Requests a radclient run at most (0: a process's whole share)",
    )
    parser.add_argument(
        "--radius-warm-up",
        type=int,
        default=0,
        help="Access-Requests sent (and not timed) before the timed ones",
    )
    parser.add_argument(
        "--radius-stall",
        type=float,
        default=3.0,
        help="seconds without a request accepted after which the radclients are stopped",
    )
    parser.add_argument(
        "--radius-limit", type=float, help="seconds after which the radclients are stopped"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="cores of their own for ocs, Redis and the load (see the module's text)",
    )
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
    if args.load_processes < 1:
        raise SystemExit("--load-processes: at least 1")
    if args.chunk < 0:
        raise SystemExit("--chunk: 0 (no chunks) or more")
    if args.client == "wrk" and args.concurrency < args.load_processes:
        raise SystemExit("--concurrency: at least one connection for each wrk thread")
    cores = Cores.split(max(workers_list)) if args.pin else Cores()
    if cores.load is not None:
        # This process first: radclient, wrk and PostgreSQL inherit it.
        os.sched_setaffinity(0, cores.load)
        print(f"cores: ocs {cores.ocs}, Redis {cores.redis}, load {cores.load}", flush=True)
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
                    row = await measure(args, backend, workers, admin_url, Path(tmp), cores)
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
