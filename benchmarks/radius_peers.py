"""RADIUS side by side: one `ocs serve` against the FreeRADIUS peers, in one run.

Starts one `ocs serve` process (embedded Redis and PostgreSQL in a temporary
data dir, or the servers named by --redis-url/--database-url) with accounts
u1..u1000 (password pw) and the NAS 127.0.0.1 (secret testing123), and the
FreeRADIUS + Redis peer (benchmarks/peers/freeradius_redis_peer.sh, auth port
18120; with --sql also the FreeRADIUS + SQL peer, port 18121). Then, for
--rounds rounds, the targets take turns (ocs first in odd rounds, last in even
ones, so that neither always runs first), after --warmup requests to each
(not counted):

- throughput: radclient -p 128 sends --requests distinct Access-Requests (each
  a new call: its own h323-conf-id, a Message-Authenticator, User-Password pw;
  one file per round, the same for every target) and the Access-Requests/s
  of each target is printed, with the ratio ocs/peer. For ocs each request is
  a full authorization: password, tariff match, funds and a line reserved in
  Redis, call registered. radclient loses packets of its own at -p 256 against
  FreeRADIUS, hence 128 for every target. ocs's CPU per Access-Request in each
  run is printed too (the serving process and its children: the embedded Redis
  and PostgreSQL without --redis-url), and its split by program (``ocs``, the
  serving process; ``redis-server``; ``postgres``): on a machine shared with the
  load generator it moves less than the rate does. So are radclient's own CPU per
  request and how often it slept: it polls its socket without sleeping (a few
  dozen sleeps a run), so it takes a whole core whatever the server, and the
  server, its Redis and PostgreSQL share the rest.
- what the rate measures: radclient works in passes over the requests not yet
  answered. A pass sends new requests only among the first -p of them, and
  walks the rest with one zero-timeout select() each, taking in at most one
  reply per step. So a pass sends as many new requests as the previous one
  saw answered, and lasts as long as the list still to answer. Early in a run
  the passes are long and radclient bounds every server alike. Once a pass is
  shorter than the server needs to answer -p requests, the server bounds the
  rate. The more --requests, the later that comes: the ratio moves with
  --requests (RESULTS.md, session 15), so compare only runs of one size.
- latency, with --rates: the fixed-rate client benchmarks/peers/rad_latency.py
  at each rate for --seconds, p50/p99/max and packets lost per target.

With ``--trees A,B`` two ocs servers run, checkout A's and checkout B's (``git
worktree add /tmp/before HEAD~1``), each with its own embedded Redis and PostgreSQL,
and take their turns beside the peers in every round: a change's effect on the ratio,
measured in one run (ratios of "ocs A" and "ocs B" to each peer). Both run throughout,
so each one's background work (its live-state sampler over the calls left live) also
runs during the other targets' turns: compare A with B, not with a run of one tree.
``--workers N`` runs each ocs with N workers (the goal is for one process), and
``--set OCS_NAME=VALUE`` gives every ocs a setting.

``--client-cpu N`` pins the load generator (radclient, rad_latency.py) to CPU N and
every server (each ocs with its Redis and PostgreSQL, each peer with its Redis) to the
other CPUs, as a load generator on a machine of its own would leave them. Without it the
kernel places them: radclient polls its socket without sleeping, so whichever server
shares its core with radclient gets part of a core, and the rate then measures the
placement as much as the server (RESULTS.md, session 27).

The peers need Debian's freeradius, freeradius-redis (and freeradius-postgresql
for --sql) and freeradius-utils: see benchmarks/peers/README.md. A --database-url
must name a fresh database: in one another run used, the accounts exist with their
earlier state and ocs may refuse every request (the rows then say "rejected").

    python benchmarks/radius_peers.py --rounds 3 --requests 20000 --rates 2000,4000
    python benchmarks/radius_peers.py --sql --rounds 1 --requests 5000
    python benchmarks/radius_peers.py --trees /tmp/before,. --rounds 4
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.http_calls import free_port, start_server, wait_healthy
from benchmarks.machine import describe
from benchmarks.radius_auth import cpu_seconds
from benchmarks.radius_latency import CLIENT, SECRET, drops, metrics_text, radius_env, setup
from ocs.radius.radclient_hint import radclient_input

PEERS = Path(__file__).resolve().parent / "peers"
# The FreeRADIUS + Redis peer's processes (freeradius_redis_peer.sh): its pid file, and
# the port its own Redis listens on.
REDIS_PEER_PID = Path("/tmp/fr-peer-redis/pid")
REDIS_PEER_REDIS_PORT = "6390"
# The peers' users are u1..u1000: ocs gets the same accounts.
ACCOUNTS = 1000


@dataclass(frozen=True)
class Target:
    """A RADIUS server under load: its name in the output and its auth port."""

    name: str
    port: int


@dataclass(frozen=True)
class Throughput:
    """One radclient run against one target."""

    requests: int
    seconds: float
    accepted: int
    rejected: int
    lost: int
    client_cpu_us: float  # radclient's own CPU (user + system) per request
    # radclient's voluntary context switches over the run: it polls its socket without
    # sleeping, so its CPU is its wall time, and the server has the other cores.
    client_sleeps: int

    @property
    def per_second(self) -> float:
        """Access-Requests answered per second, over radclient's whole run."""
        return self.requests / self.seconds


def write_requests(path: Path, count: int, run: str) -> None:
    """``count`` distinct Access-Requests for radclient, as rad_latency.py builds them."""
    with path.open("w") as out:
        for n in range(count):
            out.write(
                radclient_input(
                    [
                        ("User-Name", f"u{n % ACCOUNTS + 1}"),
                        ("User-Password", "pw"),
                        ("Called-Station-Id", "447700900123"),
                        ("Calling-Station-Id", "4930123456"),
                        ("h323-conf-id", f"h323-conf-id={run}-{n}"),
                    ]
                )
            )
            out.write("\n")


def redis_peer_cpu_seconds() -> float:
    """CPU (user + system) of the FreeRADIUS + Redis peer so far: FreeRADIUS and its Redis."""
    pids = [int(REDIS_PEER_PID.read_text())] if REDIS_PEER_PID.exists() else []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "redis-server" and any(
            part.endswith(":" + REDIS_PEER_REDIS_PORT) for part in process.info["cmdline"] or []
        ):
            pids.append(process.pid)
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def target_cpu_seconds(target: Target, server: "OcsServer | None") -> float | None:
    """CPU so far of an ocs server (with its children) or of the FreeRADIUS + Redis peer;
    None for a target whose processes are not known here (the SQL peer)."""
    if server is not None:
        return cpu_seconds(server.process.pid)
    if target.name == "FreeRADIUS+Redis":
        return redis_peer_cpu_seconds()
    return None


def cpu_by_program(pid: int) -> dict[str, float]:
    """CPU (user + system) so far of ``pid`` and its children, by program: the serving
    process ("ocs"), its embedded Redis ("redis-server"), PostgreSQL ("postgres")."""
    root = psutil.Process(pid)
    found: dict[str, float] = {}
    for one in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = one.cpu_times()
            name = "ocs" if one.pid == pid else one.name()
            found[name] = found.get(name, 0.0) + times.user + times.system
    return found


def split_line(before: dict[str, float], after: dict[str, float], requests: int) -> str:
    """Each program's CPU a request between two ``cpu_by_program`` readings."""
    parts = [
        f"{name} {(seconds - before.get(name, 0.0)) / requests * 1e6:.0f}"
        for name, seconds in sorted(after.items(), key=lambda item: -item[1])
        if seconds - before.get(name, 0.0) > 0
    ]
    return ", ".join(parts)


def summary_count(text: str, name: str) -> int:
    """A count from radclient's -s packet summary (``Accepted      : 123``)."""
    found = re.search(rf"^\s*{name}\s*:\s*(\d+)", text, re.MULTILINE)
    return int(found[1]) if found else 0


def client_affinity(cpu: int | None) -> Callable[[], None] | None:
    """What pins a load generator's process to ``cpu`` as it starts (None: not pinned)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def pin_servers(cpu: int | None) -> None:
    """Keep this process, and so every server it starts, off the load generator's CPU."""
    if cpu is None:
        return
    others = set(os.sched_getaffinity(0)) - {cpu}
    if not others:
        raise SystemExit(f"--client-cpu {cpu}: no other CPU is left for the servers")
    os.sched_setaffinity(0, others)


def throughput(
    path: Path, target: Target, requests: int, parallel: int, client_cpu: int | None = None
) -> Throughput:
    """Send every request in ``path`` to ``target`` with radclient, ``parallel`` at a time
    (pinned to ``client_cpu`` when given)."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [
            "radclient",
            "-q",
            "-s",
            "-p",
            str(parallel),
            "-r",
            "1",
            "-t",
            "5",
            "-f",
            str(path),
            f"127.0.0.1:{target.port}",
            "auth",
            SECRET,
        ],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=client_affinity(client_cpu),
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Throughput(
        requests=requests,
        seconds=elapsed,
        accepted=summary_count(result.stdout, "Accepted"),
        rejected=summary_count(result.stdout, "Rejected"),
        lost=summary_count(result.stdout, "Lost"),
        client_cpu_us=client_cpu / requests * 1e6,
        client_sleeps=after.ru_nvcsw - before.ru_nvcsw,
    )


async def latency(
    client: Path,
    target: Target,
    rate: int,
    seconds: float,
    ocs_base: str | None,
    client_cpu: int | None = None,
) -> dict[str, object]:
    """rad_latency.py at ``rate`` against ``target``; for ocs, also its own drop counts."""
    before = drops(await metrics_text(ocs_base)) if ocs_base else {}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(client),
        str(target.port),
        str(rate),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=client_affinity(client_cpu),
    )
    stdout, _ = await process.communicate()
    result: dict[str, object] = json.loads(stdout)
    if ocs_base:
        after = drops(await metrics_text(ocs_base))
        result["ocs_drops"] = {
            k: after[k] - before.get(k, 0.0)
            for k in after
            if k != "loop_lag_max_s" and after[k] != before.get(k, 0.0)
        }
    return result


def peer(script: str, action: str) -> None:
    """Start or stop one of the FreeRADIUS peers (benchmarks/peers/*.sh)."""
    result = subprocess.run(
        ["bash", str(PEERS / script), action], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"{script} {action} failed:\n{result.stdout}{result.stderr}")


def throughput_line(round_: int, target: Target, result: Throughput) -> str:
    failed = ""
    if result.rejected or result.lost or result.accepted != result.requests:
        failed = f"  ({result.rejected} rejected, {result.lost} lost)"
    return (
        f"round {round_} {target.name:>16}: {result.per_second:>7,.0f} Access-Requests/s  "
        f"({result.accepted}/{result.requests} accepted in {result.seconds:.2f} s; "
        f"radclient CPU {result.client_cpu_us:.0f} us a request, slept {result.client_sleeps}"
        f" times){failed}"
    )


def latency_line(round_: int, target: Target, result: dict[str, object]) -> str:
    extra = f"  ocs drops {result['ocs_drops']}" if result.get("ocs_drops") else ""
    return (
        f"round {round_} {target.name:>16} {result['rate']:>6}/s: p50 {result['p50_ms']:>6} ms  "
        f"p99 {result['p99_ms']:>7} ms  max {result['max_ms']:>7} ms  "
        f"lost {result['lost']}/{result['sent']}{extra}"
    )


@dataclass
class OcsServer:
    """One `ocs serve` under test: its RADIUS target, HTTP base and process."""

    target: Target
    base: str
    process: subprocess.Popen[bytes]
    cpu: list[float] = field(default_factory=list)  # us per Access-Request, by round


def start_ocs(name: str, tree: Path | None, tmp: Path, args: argparse.Namespace) -> OcsServer:
    """`ocs serve` of ``tree``'s own ocs (None: this checkout's), in its own data dir."""
    http_port, auth_port, acct_port = free_port(), free_port(), free_port()
    old = Path.cwd()
    if tree is not None:
        os.chdir(tree)  # `python -m ocs` imports the ocs of its working directory
    try:
        process = start_server(
            str(tmp / f"var-{name.replace(' ', '-')}"),
            http_port,
            args.workers,
            args.redis_url,
            args.database_url,
            extra_env={
                **radius_env(auth_port, acct_port),
                **dict(item.split("=", 1) for item in args.set),
            },
        )
    finally:
        os.chdir(old)
    return OcsServer(Target(name, auth_port), f"http://127.0.0.1:{http_port}", process)


def print_summary(
    args: argparse.Namespace,
    servers: list[OcsServer],
    peers: list[Target],
    rps: dict[str, list[float]],
) -> None:
    """Each target's rate, each ocs's CPU, and each ocs's ratio to each peer."""
    processes = "one ocs process" if args.workers == 1 else f"ocs --workers {args.workers}"
    placement = (
        "load generator on the same machine"
        if args.client_cpu is None
        else f"load generator pinned to CPU {args.client_cpu}, the servers to the others"
    )
    print(
        f"Access-Requests/s over {args.rounds} round(s), radclient -p {args.parallel}, "
        f"{args.requests} requests a round, {processes}, {placement}:"
    )
    for name, values in rps.items():
        if values:
            print(
                f"  {name:>16}: {min(values):,.0f}-{max(values):,.0f} "
                f"(median {statistics.median(values):,.0f})"
            )
    own = "" if args.redis_url else ", its embedded Redis and PostgreSQL included"
    for server in servers:
        if server.cpu:
            used = server.cpu
            print(
                f"  {server.target.name} CPU per Access-Request (the serving process{own}): "
                f"{min(used):.0f}-{max(used):.0f} us (median {statistics.median(used):.0f})"
            )
    for server in servers:
        name = server.target.name
        for target in peers:
            ratios = [o / p for o, p in zip(rps[name], rps[target.name], strict=True)]
            if ratios:
                print(
                    f"  {name}/{target.name}: {', '.join(f'{r:.2f}' for r in ratios)} "
                    f"(median {statistics.median(ratios):.2f})"
                )


def options() -> tuple[argparse.Namespace, list[int], list[Path | None]]:
    """The command line: the arguments, the fixed rates, the trees (None: this checkout)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--requests", type=int, default=20_000, help="per target and round")
    parser.add_argument("--parallel", type=int, default=128, help="radclient -p")
    parser.add_argument(
        "--warmup", type=int, default=2000, help="requests to each target first, not counted"
    )
    parser.add_argument(
        "--rates", default="", help="comma-separated fixed rates per second (none by default)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate and target")
    parser.add_argument("--sql", action="store_true", help="also the FreeRADIUS + SQL peer")
    parser.add_argument(
        "--workers", type=int, default=1, help="ocs serve --workers (the goal is for one)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OCS_NAME=VALUE",
        help="a setting for every ocs server (e.g. OCS_BACKGROUND_PROCESS=true)",
    )
    parser.add_argument("--client", type=Path, default=CLIENT, help="rad_latency.py")
    parser.add_argument("--trees", help="A,B: checkouts whose ocs to run, each beside the peers")
    parser.add_argument("--redis-url")
    parser.add_argument("--database-url")
    parser.add_argument(
        "--client-cpu",
        type=int,
        help="pin the load generator to this CPU and the servers to the others",
    )
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",") if rate.strip()]
    trees: list[Path | None] = (
        [Path(t).resolve() for t in args.trees.split(",")] if args.trees else [None]
    )
    if len(trees) > 1 and (args.redis_url or args.database_url):
        raise SystemExit("--trees: each ocs needs its own embedded Redis and PostgreSQL")
    return args, rates, trees


async def main() -> None:
    args, rates, trees = options()
    pin_servers(args.client_cpu)

    peers = [Target("FreeRADIUS+Redis", 18120)]
    scripts = ["freeradius_redis_peer.sh"]
    if args.sql:
        peers.append(Target("FreeRADIUS+SQL", 18121))
        scripts.append("freeradius_sql_peer.sh")
    with tempfile.TemporaryDirectory(prefix="ocs-bench-", dir="/tmp") as tmp:
        servers: list[OcsServer] = []
        started: list[str] = []
        try:
            for n, tree in enumerate(trees):
                name = "ocs" if tree is None else f"ocs {'AB'[n] if n < 2 else n + 1}"
                if tree is not None:
                    print(f"{name}: {tree}", flush=True)
                servers.append(start_ocs(name, tree, Path(tmp), args))
            async with aiohttp.ClientSession() as session:
                for server in servers:
                    await wait_healthy(session, server.base, 120)
                    await setup(session, server.base, ACCOUNTS)
            for script in scripts:
                peer(script, "start")
                started.append(script)
            await measure(args, rates, servers, peers, Path(tmp))
        finally:
            for script in reversed(started):
                peer(script, "stop")
            for server in servers:
                server.process.send_signal(signal.SIGTERM)
            for server in servers:
                server.process.wait(timeout=60)
    print(f"machine: {describe()}")


async def measure(
    args: argparse.Namespace,
    rates: list[int],
    servers: list[OcsServer],
    peers: list[Target],
    tmp: Path,
) -> None:
    """The rounds: every target in turn (the order reversed every other round), then
    the fixed rates; the summary at the end."""
    by_target = {server.target.name: server for server in servers}
    targets = [*(server.target for server in servers), *peers]
    rps: dict[str, list[float]] = {target.name: [] for target in targets}
    if args.warmup:
        # Connections, caches and code paths warmed on every target alike.
        warmup_file = tmp / "warmup.txt"
        write_requests(warmup_file, args.warmup, uuid.uuid4().hex[:8])
        for target in targets:
            throughput(warmup_file, target, args.warmup, args.parallel, args.client_cpu)
    for round_ in range(1, args.rounds + 1):
        order = targets if round_ % 2 else targets[::-1]
        requests_file = tmp / f"requests-{round_}.txt"
        # A new run id each round: ocs sees new calls, never a retransmission.
        write_requests(requests_file, args.requests, uuid.uuid4().hex[:8])
        for target in order:
            server = by_target.get(target.name)
            before = target_cpu_seconds(target, server)
            split_before = cpu_by_program(server.process.pid) if server else {}
            result = throughput(
                requests_file, target, args.requests, args.parallel, args.client_cpu
            )
            rps[target.name].append(result.per_second)
            print(throughput_line(round_, target, result), flush=True)
            after = target_cpu_seconds(target, server)
            split_after = cpu_by_program(server.process.pid) if server else {}
            if before is not None and after is not None:
                # Steadier than the rate, which moves with the load generator.
                used = (after - before) / args.requests * 1e6
                if server is not None:
                    server.cpu.append(used)
                split = split_line(split_before, split_after, args.requests)
                print(
                    f"round {round_} {target.name} CPU: {used:.0f} us a request"
                    + (f" ({split})" if split else ""),
                    flush=True,
                )
        for server in servers:
            for target in peers:
                ratio = rps[server.target.name][-1] / rps[target.name][-1]
                print(f"round {round_} {server.target.name}/{target.name}: {ratio:.2f}", flush=True)
        for rate in rates:
            for target in order:
                server = by_target.get(target.name)
                measured = await latency(
                    args.client,
                    target,
                    rate,
                    args.seconds,
                    server.base if server else None,
                    args.client_cpu,
                )
                print(latency_line(round_, target, measured), flush=True)
    print_summary(args, servers, peers, rps)


if __name__ == "__main__":
    asyncio.run(main())
