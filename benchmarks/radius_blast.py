"""RADIUS throughput with a load generator that leaves the machine to the server.

radclient costs 90-130 us of CPU per request: on a 2-core machine it takes one
core and bounds what any server beside it can show (RESULTS.md, issue 19). Here
the packets are built beforehand and sent by ``benchmarks/peers/radblast.c``
(compiled on first use with the machine's C compiler), a batch per system call,
PARALLEL in flight, each answered one matched by its identifier; an unanswered
one is sent again after 2 s, twice at most, and then its call counts as failed.

Two loads, on one `ocs serve` (embedded Redis and PostgreSQL, or the servers of
--redis-url/--database-url; accounts u1..u1000, password pw, NAS 127.0.0.1):

- ``--calls`` (the default): full calls as a switch makes them, each an
  Access-Request, then, once accepted, an Accounting Start, then a Stop of 45 s:
  full calls/s is calls stopped and charged over the wall time;
- ``--access``: distinct Access-Requests, each a new call. With ``--peer`` the
  FreeRADIUS + Redis peer (benchmarks/peers/) takes its turn beside ocs in every
  round, on the same packets: the ratio of the two without radclient's cost.

With ``--rates R1,R2`` each round ends with fixed-rate runs of --seconds each, every
target in turn: packets a second, sent at their times whether or not earlier ones were
answered (with ``--access`` Access-Requests; with the full-calls load each call's
Access-Request, Start and Stop as packets of their own, a third of the rate each),
over --sockets client sockets; p50/p99/p99.9/max latency and losses, the tenths of a
second that held a reply slower than 5 ms (when the tail happened), and ocs's CPU per
request at that rate. The client costs a few microseconds a request,
so the latency is the server's, not the client's own (rad_latency.py's Python loop
adds its own delays).

With ``--trees A,B`` one `ocs serve` runs from each checkout (its own embedded Redis and
PostgreSQL), and they take their turns in every round like the peer: an A/B of two
builds in one run. A checkout built with mypyc (decision 0038) is made with
``git worktree add /tmp/ocs-compiled HEAD`` and, in it, ``OCS_MYPYC=1 python setup.py
build_ext --inplace``; each server's line says how many hot modules it runs compiled.

Each round uses new call ids. The server's CPU per call (its processes: the
workers of ``--workers N`` and the embedded Redis and PostgreSQL) is printed with
each round.

    python benchmarks/radius_blast.py --rounds 3 --calls 30000
    python benchmarks/radius_blast.py --access --peer --rounds 3 --calls 30000
    python benchmarks/radius_blast.py --access --peer --rounds 2 --rates 2000,4000
    python benchmarks/radius_blast.py --access --peer --trees .,/tmp/ocs-compiled
"""

import argparse
import asyncio
import hashlib
import json
import math
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.http_calls import free_port, start_server, wait_healthy
from benchmarks.machine import describe
from benchmarks.peers.rad_latency import SECRET, attribute, build, vendor_attribute
from benchmarks.radius_auth import cpu_seconds
from benchmarks.radius_latency import drops, metrics_text, radius_env, setup
from benchmarks.radius_peers import ACCOUNTS, peer

PEERS = Path(__file__).resolve().parent / "peers"
SOURCE = PEERS / "radblast.c"
PEER_AUTH_PORT = 18120
PEER_SCRIPT = "freeradius_redis_peer.sh"
# Full calls at a fixed rate: calls between a call's Access-Request and its Start, and
# between its Start and its Stop (at 1,000 calls/s, 64 ms).
RATE_LAG = 64


def accounting_request(identifier: int, user: str, call: str, stop: bool) -> bytes:
    """An Accounting-Request Start, or Stop after 45 s, signed as RFC 2866 says."""
    body = (
        attribute(40, struct.pack("!I", 2 if stop else 1))
        + attribute(1, user.encode())
        + attribute(44, call.encode())
        + vendor_attribute(9, 24, f"h323-conf-id={call}".encode())
    )
    if stop:
        body += attribute(46, struct.pack("!I", 45))
    header = struct.pack("!BBH", 4, identifier, 20 + len(body))
    authenticator = hashlib.md5(header + b"\0" * 16 + body + SECRET).digest()
    return header + authenticator + body


def write_chains(
    path: Path,
    count: int,
    parallel: int,
    auth_port: int,
    acct_port: int,
    full: bool,
    fixed_rate: bool = False,
) -> None:
    """``count`` chains for radblast: a call (Access, Start, Stop) or one Access-Request.
    Chain c runs in slot c % parallel, and each of its packets carries that identifier;
    at a fixed rate chain c goes out on socket c % parallel with (c / parallel) % 256.

    Full calls at a fixed rate: every chain is one packet, ``count`` packets in all, a
    third of them Access-Requests; a call's Start goes RATE_LAG calls after its
    Access-Request and its Stop RATE_LAG calls after that, so that the server has
    answered the one before the next is sent."""
    run = uuid.uuid4().hex[:8]
    if full and fixed_rate:
        write_rate_calls(path, count // 3, parallel, auth_port, acct_port, run)
        return
    with path.open("wb") as out:
        out.write(b"RBL1" + struct.pack("<I", count))
        for n in range(count):
            identifier = (n // parallel) % 256 if fixed_rate else n % parallel
            # rad_latency's Access-Request n: user u{n % 1000 + 1}, call id {run}-{n}.
            user, call = f"u{n % ACCOUNTS + 1}", f"{run}-{n}"
            packets = [(auth_port, build(identifier, n, run))]
            if full:
                packets += [
                    (acct_port, accounting_request(identifier, user, call, stop=False)),
                    (acct_port, accounting_request(identifier, user, call, stop=True)),
                ]
            out.write(bytes([len(packets)]))
            for port, packet in packets:
                out.write(struct.pack("<HH", port, len(packet)) + packet)


def write_rate_calls(
    path: Path, calls: int, sockets: int, auth_port: int, acct_port: int, run: str
) -> None:
    """Full calls as single packets for a fixed-rate run (``write_chains``): Access-Requests,
    Starts and Stops interleaved, each call's next packet RATE_LAG calls later."""
    packets: list[tuple[int, int, str]] = []  # (kind 0 access / 1 start / 2 stop, call)
    for slot in range(calls + 2 * RATE_LAG):
        for kind in (0, 1, 2):
            n = slot - kind * RATE_LAG
            if 0 <= n < calls:
                packets.append((kind, n, f"u{n % ACCOUNTS + 1}"))
    with path.open("wb") as out:
        out.write(b"RBL1" + struct.pack("<I", len(packets)))
        for c, (kind, n, user) in enumerate(packets):
            identifier = (c // sockets) % 256
            if kind == 0:
                port, packet = auth_port, build(identifier, n, run)
            else:
                call = f"{run}-{n}"
                port = acct_port
                packet = accounting_request(identifier, user, call, stop=kind == 2)
            out.write(bytes([1]) + struct.pack("<HH", port, len(packet)) + packet)


def compiled(directory: Path) -> Path:
    """radblast, compiled from its source into ``directory``."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("radblast needs a C compiler (cc or gcc)")
    binary = directory / "radblast"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def blast(binary: Path, chains: Path, parallel: int, rate: int = 0) -> dict[str, object]:
    """Run radblast over ``chains`` (at ``rate`` a second when not 0); its JSON result."""
    at_rate = [str(rate)] if rate else []
    out = subprocess.run(
        [str(binary), str(chains), "127.0.0.1", str(parallel), "2000", "2", *at_rate],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--calls-load", dest="full", action="store_true", default=True)
    load.add_argument("--access", dest="full", action="store_false", help="Access-Requests")
    parser.add_argument("--calls", type=int, default=30_000, help="calls (chains) a round")
    parser.add_argument("--parallel", type=int, default=128, help="in flight, at most 256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3_000, help="calls first, not counted")
    parser.add_argument("--peer", action="store_true", help="with --access: the FreeRADIUS peer")
    parser.add_argument("--workers", type=int, default=1, help="ocs serve processes")
    parser.add_argument(
        "--rates", default="", help="comma-separated fixed rates a second, after each round"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per fixed rate")
    parser.add_argument(
        "--sockets", type=int, default=16, help="client sockets at a rate (more at high rates)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OCS_NAME=VALUE",
        help="a setting for the server (e.g. OCS_STALL_REPORT_MS=5: its stalls logged)",
    )
    parser.add_argument(
        "--set-b",
        action="append",
        default=[],
        metavar="OCS_NAME=VALUE",
        help="a setting for the second server of --trees only: --trees T,T --set-b X=1 is an"
        " A/B of one setting on one checkout",
    )
    parser.add_argument(
        "--trees",
        default="",
        help="comma-separated checkouts, one ocs serve from each (default: this interpreter's)",
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    if not 1 <= args.parallel <= 256:
        parser.error("--parallel must be 1..256 (one RADIUS identifier per slot)")
    if args.peer and args.full:
        parser.error("--peer compares Access-Requests: add --access")
    if not 1 <= args.sockets <= 256:
        parser.error("--sockets must be 1..256")
    if len(args.trees.split(",")) > 1 and (args.redis_url or args.database_url):
        parser.error("--trees runs each server on its own embedded Redis and PostgreSQL")
    return args


def report(name: str, round_: int, result: dict[str, object], full: bool, cpu: float) -> float:
    """Print one run's line; its rate (calls/s with full calls, else requests/s)."""
    elapsed = float(str(result["elapsed"]))
    done = int(str(result["done"]))
    rate = done / elapsed
    unit = "full calls/s" if full else "Access-Requests/s"
    cpu_part = f", server CPU {cpu * 1e6 / max(done, 1):.0f} us a call" if cpu else ""
    print(
        f"round {round_} {name}: {rate:,.0f} {unit} ({done} done, {result['failed']} failed,"
        f" {result['retransmits']} sent again, in {elapsed:.2f} s; replies by code"
        f" {result['codes']}; latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
        f"{cpu_part})",
        flush=True,
    )
    return rate


@dataclass
class Target:
    """A server the load goes to: an ``ocs serve`` (process and HTTP base) or the peer."""

    name: str
    auth_port: int
    acct_port: int
    server: subprocess.Popen[bytes] | None = None
    base: str = ""


def start_targets(args: argparse.Namespace, tmp: Path) -> list[Target]:
    """One ``ocs serve`` per checkout of --trees (or from this interpreter's ocs)."""
    trees = [tree for tree in args.trees.split(",") if tree] or [""]
    targets = []
    for n, tree in enumerate(trees):
        http_port, auth_port, acct_port = free_port(), free_port(), free_port()
        settings = [*args.set, *(args.set_b if n == 1 else [])]
        server = start_server(
            str(tmp / f"var{n}"),
            http_port,
            args.workers,
            args.redis_url,
            args.database_url,
            extra_env={
                **radius_env(auth_port, acct_port),
                **dict(item.split("=", 1) for item in settings),
            },
            cwd=tree or None,
        )
        name = f"ocs@{Path(tree).resolve().name}" if tree else "ocs"
        if n == 1 and args.set_b:
            name += "+" + ",".join(args.set_b)
        base = f"http://127.0.0.1:{http_port}"
        targets.append(Target(name, auth_port, acct_port, server, base))
    return targets


async def at_rate(
    binary: Path, chains: Path, args: argparse.Namespace, target: Target, rate: int, round_: int
) -> None:
    """One fixed-rate run on ``target``: its latency, losses and (ocs) CPU and sheds."""
    # An identifier comes back to a socket after 256 * sockets packets: only after the
    # 2 s a reply is awaited, or a late reply would be taken for a newer packet's.
    sockets = min(256, max(args.sockets, math.ceil(rate * 2.5 / 256)))
    count = int(rate * args.seconds)
    write_chains(chains, count, sockets, target.auth_port, target.acct_port, args.full, True)
    server = target.server
    shed = drops(await metrics_text(target.base)) if server else {}
    before = cpu_seconds(server.pid) if server else 0.0
    result = blast(binary, chains, sockets, rate)
    cpu = cpu_seconds(server.pid) - before if server else 0.0
    cpu_part = f" server CPU {cpu * 1e6 / count:.0f} us a request," if cpu else ""
    if server:
        # What ocs shed during this run, by its counted reason.
        after = drops(await metrics_text(target.base))
        counted = {
            reason: int(value - shed.get(reason, 0.0))
            for reason, value in after.items()
            if reason != "loop_lag_max_s" and value > shed.get(reason, 0.0)
        }
        cpu_part += f" shed by ocs {counted or 'none'},"
    print(
        f"round {round_} {target.name} at {rate}/s:{cpu_part}"
        f" p50 {result['p50_ms']} ms,"
        f" p99 {result['p99_ms']} ms, p99.9 {result['p999_ms']} ms,"
        f" max {result['max_ms']} ms, lost {result['lost']} of {count}"
        f" (replies by code {result['codes']}); tenths of a second with"
        f" a reply over 5 ms (s, ms): {result['slow_windows']}",
        flush=True,
    )


async def compiled_modules(base: str) -> str:
    """The server's ``ocs_compiled_modules`` gauge, as text ("?" from a build without it)."""
    for line in (await metrics_text(base)).splitlines():
        if line.startswith("ocs_compiled_modules "):
            return str(int(float(line.split()[1])))
    return "?"


async def run_rounds(args: argparse.Namespace, tmp: Path, targets: list[Target]) -> None:
    """Warm every target up, then the rounds: each target's throughput, then its rates."""
    binary = compiled(tmp)
    rates: dict[str, list[float]] = {target.name: [] for target in targets}
    chains = tmp / "chains.bin"
    for target in targets:
        write_chains(
            chains, args.warmup, args.parallel, target.auth_port, target.acct_port, args.full
        )
        blast(binary, chains, args.parallel)
    for round_ in range(1, args.rounds + 1):
        # Each target first in turn, so that none always runs first.
        order = targets if round_ % 2 else list(reversed(targets))
        for target in order:
            write_chains(
                chains, args.calls, args.parallel, target.auth_port, target.acct_port, args.full
            )
            server = target.server
            before = cpu_seconds(server.pid) if server else 0.0
            result = blast(binary, chains, args.parallel)
            cpu = cpu_seconds(server.pid) - before if server else 0.0
            rates[target.name].append(report(target.name, round_, result, args.full, cpu))
        for rate in [int(r) for r in args.rates.split(",") if r]:
            for target in order:
                await at_rate(binary, chains, args, target, rate, round_)
    unit = "full calls/s" if args.full else "Access-Requests/s"
    for name, values in rates.items():
        print(
            f"{name}: {min(values):,.0f}-{max(values):,.0f} {unit} "
            f"(median {statistics.median(values):,.0f}), radblast -p {args.parallel}"
        )
    if args.peer:
        peer_rates = rates["FreeRADIUS+Redis"]
        for target in targets[:-1]:
            ratios = [a / b for a, b in zip(rates[target.name], peer_rates, strict=True)]
            print(f"{target.name}/FreeRADIUS+Redis: " + ", ".join(f"{r:.2f}" for r in ratios))
    for target in targets:
        if target.server:
            print(f"{target.name}: {await compiled_modules(target.base)} modules compiled")


async def main() -> None:
    args = options()
    with tempfile.TemporaryDirectory(prefix="ocs-blast-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        targets = start_targets(args, tmp)
        peer_started = False
        try:
            async with aiohttp.ClientSession() as session:
                for target in targets:
                    await wait_healthy(session, target.base, 120)
                    await setup(session, target.base, ACCOUNTS)
            if args.peer:
                peer(PEER_SCRIPT, "start")
                peer_started = True
                targets.append(Target("FreeRADIUS+Redis", PEER_AUTH_PORT, 0))
            await run_rounds(args, tmp, targets)
        finally:
            if peer_started:
                peer(PEER_SCRIPT, "stop")
            for target in targets:
                if target.server:
                    target.server.send_signal(signal.SIGTERM)
                    target.server.wait(timeout=60)
    print(f"ocs serve --workers {args.workers}; machine: {describe()}")


if __name__ == "__main__":
    asyncio.run(main())
