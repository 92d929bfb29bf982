"""The CPU one Access-Request costs ocs, measured in-process: trees compared A/B.

radclient and the UDP sockets share the machine with the server, so throughput
and even the server's CPU time move with whatever else runs. This drives the
server's own request path in one process instead: ``RadiusServer.receive`` is
handed the datagrams a socket read would hand it (64 per wake-up, at most
--window in flight, as radclient -p keeps them), and each reply is taken where it
would be sent. Everything else is real: the lean codec, the lifecycle, the Lua
scripts on a real Redis, the catalog from PostgreSQL, the garbage collector settled
as ``ocs serve`` settles it once started. The figure is this
process's CPU time (user + system) per Access-Request: its ceiling is 1 s / that
figure on one core.

    python benchmarks/radius_path.py --redis-url redis://127.0.0.1:6379/5 \\
        --database-url postgresql://postgres@127.0.0.1:5432/path_bench

``--read-batch N --window 2N`` hands the datagrams over N at a time instead of 64, as
a socket read finds them under a lighter load: each batch takes one Redis round trip,
so the difference from 64 is what a batch costs whatever its size.

With ``--full-calls`` each call is then started and stopped (an Accounting-Request
Start, then a Stop of 45 s, each phase after the last), and the CPU of each phase is
printed, and of a whole call: the ceiling of full calls a second on one core. The
ledger writer runs in this process as ``ocs serve`` makes it
(``ocs.housekeeping.ledger_writer``, ``ocs.server.ledger_writer`` in older trees),
and the Stop phase ends once it has written every stop's entries to PostgreSQL.

With ``--trees A,B`` each round measures checkout A's ``ocs`` and then checkout B's
(``git worktree add /tmp/before HEAD~1``), alternating for --rounds rounds, each
on a fresh Redis database and PostgreSQL schema state made by that tree's own
``ocs serve``. The accounts are u1..u1000 with password pw and the benchmark deck.
"""

import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECRET = "testing123"
READ_BATCH = 64  # datagrams one socket read hands over at most (ocs.radius.server's batch)


class Replies:
    """Stands for the socket a RADIUS listener sends from: counts replies by code.

    Handed to the tree's own ``RadiusListener`` as its socket, so that the server gets
    the listener its signature names (a build compiled with mypyc, decision 0038,
    refuses anything else); a tree without that class gets this object as the listener.
    """

    def __init__(self, port: Any) -> None:
        self.port = port
        self.closed = False
        self.codes: dict[int, int] = {}
        self.count = 0
        self._wanted = 0
        self._reached = asyncio.Event()

    def sendto(self, wire: bytes, addr: Any) -> None:
        """A reply the server would send."""
        self.codes[wire[0]] = self.codes.get(wire[0], 0) + 1
        self.count += 1
        if self.count >= self._wanted:
            self._reached.set()

    async def until(self, count: int) -> None:
        """Return once ``count`` replies have been sent."""
        if self.count >= count:
            return
        self._wanted = count
        self._reached.clear()
        await self._reached.wait()


def accounting(n: int, run: str, status: int) -> bytes:
    """Accounting-Request ``status`` (1 Start, 2 Stop) of Access-Request ``n``'s call, as
    radclient sends them (benchmarks/radius_auth.py): the same h323-conf-id, signed with
    the Request Authenticator (RFC 2866)."""

    def attribute(kind: int, value: bytes) -> bytes:
        return bytes([kind, len(value) + 2]) + value

    conf_id = f"h323-conf-id={run}-{n}".encode()
    vsa = bytes([24, len(conf_id) + 2]) + conf_id
    body = (
        attribute(40, status.to_bytes(4, "big"))
        + attribute(1, f"u{n % 1000 + 1}".encode())
        + attribute(44, f"{run}-{n}".encode())
        + bytes([26, len(vsa) + 6])
        + (9).to_bytes(4, "big")
        + vsa
    )
    if status == 2:
        body += attribute(46, (45).to_bytes(4, "big"))
    header = bytes([4, (n // 32) % 256]) + (20 + len(body)).to_bytes(2, "big")
    authenticator = hashlib.md5(header + bytes(16) + body + SECRET.encode()).digest()
    return header + authenticator + body


async def ledger_written(redis: Any, writer: Any, expected: int, within: float = 120.0) -> None:
    """Return once no ledger stream holds an entry (the writer has written them all).

    The writer's own count is watched first, as it costs nothing: a look at all 1,024
    streams through redis-py takes ~10 ms of this process's CPU, which polled every
    50 ms was a quarter of the Stop phase's figure. The streams are read once it has
    written ``expected`` entries, to be sure.
    """
    from ocs.balances import keys

    for _ in range(int(within / 0.01)):
        if writer.written >= expected:
            break
        await asyncio.sleep(0.01)
    for _ in range(int(within / 0.05)):
        pipe = redis.pipeline(transaction=False)
        for bucket in range(keys.BUCKETS):
            pipe.xlen(keys.ledger(bucket))
        if not any(await pipe.execute()):
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"the ledger writer did not catch up within {within} s")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """In this process (ocs imported from the tree on sys.path): the CPU per request of
    each phase, by phase."""
    sys.path.insert(0, str(HERE / "peers"))
    from rad_latency import build  # type: ignore[import-not-found]  # the peers' packets

    from ocs.balances.ledger_writer import LedgerWriter
    from ocs.config import load_settings
    from ocs.radius.clients import load_client_table
    from ocs.radius.server import ACCT, AUTH, RadiusServer
    from ocs.runtime import open_runtime

    try:
        from ocs.radius.server import RadiusListener
    except ImportError:  # a tree from before the listener class
        RadiusListener = None  # type: ignore[assignment,misc]
    try:
        from ocs.housekeeping import ledger_writer
    except ImportError:  # a tree from before ocs.housekeeping (decision 0039)
        from ocs.server import ledger_writer  # type: ignore[attr-defined,no-redef]

    settings = load_settings(
        environ={
            "OCS_REDIS_URL": args.redis_url,
            "OCS_DATABASE_URL": args.database_url,
            "OCS_RADIUS_CLIENTS": f'[{{"address": "127.0.0.1", "secret": "{SECRET}"}}]',
            "OCS_START_TIMEOUT": "3600",
            "OCS_LOG_LEVEL": "WARNING",
            # Where the tree's ``ocs serve`` kept its state: its pepper (decision 0054).
            "OCS_DATA_DIR": os.environ["BENCH_DATA_DIR"],
        }
    )
    run = uuid.uuid4().hex[:8]
    total = args.requests + args.warm_up
    packets = [build((n // 32) % 256, n, run) for n in range(total)]
    phases: list[tuple[str, Any, list[bytes]]] = [
        ("warm-up", AUTH, packets[: args.warm_up]),
        ("Access-Request", AUTH, packets[args.warm_up :]),
    ]
    if args.full_calls:
        for name, status in (("Accounting Start", 1), ("Accounting Stop", 2)):
            phases.append(
                (name, ACCT, [accounting(n, run, status) for n in range(args.warm_up, total)])
            )
    async with open_runtime(settings) as services:
        server = RadiusServer(
            services.calls, settings, await load_client_table(services.pool, settings)
        )
        replies = {AUTH: Replies(AUTH), ACCT: Replies(ACCT)}
        listeners: dict[Any, Any] = dict(replies)
        if RadiusListener is not None:
            listeners = {port: RadiusListener(server, port, sent) for port, sent in replies.items()}
        if settings.gc_freeze:
            from ocs import loop_lag

            loop_lag.settle_gc()  # as `ocs serve` does once started
        stopping = asyncio.Event()
        writer_task: asyncio.Task[None] | None = None
        writer: LedgerWriter | None = None
        if args.full_calls:
            writer = ledger_writer(settings, services)
            writer_task = asyncio.create_task(writer.run(stopping))
        results: dict[str, Any] = {}
        for phase, port, chunk in phases:
            listener, sent = listeners[port], replies[port]
            sent.count = 0
            sent.codes = {}
            written = writer.written if writer is not None else 0
            wall, cpu = time.perf_counter(), time.process_time()
            batch = args.read_batch
            for start in range(0, len(chunk), batch):
                # A socket lets no more in than the client keeps in flight.
                await sent.until(start - args.window)
                for n in range(start, min(start + batch, len(chunk))):
                    # A distinct source port per 256 identifiers, as radclient's sockets.
                    server.receive(listener, chunk[n], ("127.0.0.1", 40000 + n // 256))
                await asyncio.sleep(0)
            await sent.until(len(chunk))
            if phase == "Accounting Stop":
                await ledger_written(services.redis, writer, written + len(chunk))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            results[phase] = {
                "requests": len(chunk),
                "cpu_us_per_request": round(cpu / len(chunk) * 1e6, 1),
                "per_second": round(len(chunk) / wall),
                "codes": dict(sent.codes),
            }
        await server.drain(5)
        stopping.set()
        if writer_task is not None:
            await writer_task
    del results["warm-up"]
    return results


def prepare(tree: Path, args: argparse.Namespace) -> None:
    """Fresh state made by ``tree``'s own ``ocs serve``: plan, deck, accounts."""
    sys.path.insert(0, str(HERE.parent))
    import aiohttp

    from benchmarks.http_calls import free_port, start_server, wait_healthy
    from benchmarks.radius_latency import setup

    subprocess.run(["redis-cli", "-u", args.redis_url, "flushdb"], check=True, capture_output=True)
    database = args.database_url.rsplit("/", 1)
    admin = f"{database[0]}/postgres"
    for statement in (
        f'DROP DATABASE IF EXISTS "{database[1]}"',
        f'CREATE DATABASE "{database[1]}"',
    ):
        subprocess.run(["psql", admin, "-qc", statement], check=True, capture_output=True)

    async def made() -> None:
        http_port = free_port()
        base = f"http://127.0.0.1:{http_port}"
        old = Path.cwd()
        os.chdir(tree)  # `python -m ocs` imports the tree's ocs
        try:
            server = start_server(
                os.environ["BENCH_DATA_DIR"],
                http_port,
                1,
                args.redis_url,
                args.database_url,
                extra_env={"OCS_RADIUS_AUTH_PORT": "0", "OCS_RADIUS_ACCT_PORT": "0"},
            )
        finally:
            os.chdir(old)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(session, base, 120)
                await setup(session, base, 1000)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

    asyncio.run(made())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True, help="a database this may flush")
    parser.add_argument("--database-url", required=True, help="a database this may recreate")
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--warm-up", type=int, default=3_000)
    parser.add_argument("--window", type=int, default=256, help="requests in flight at most")
    parser.add_argument(
        "--read-batch",
        type=int,
        default=READ_BATCH,
        help="datagrams handed over a wake-up (a lighter load reads fewer each time)",
    )
    parser.add_argument("--full-calls", action="store_true", help="also start and stop every call")
    parser.add_argument("--trees", help="A,B: checkouts whose ocs to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import uvloop

        print(json.dumps(uvloop.run(measure(args))))
        return
    trees = [Path(t).resolve() for t in args.trees.split(",")] if args.trees else [HERE.parent]
    # One state directory for the run, shared by each tree's ``ocs serve`` and the process
    # that measures it: a tree with a pepper (decision 0054) keeps it there.
    os.environ["BENCH_DATA_DIR"] = tempfile.mkdtemp(prefix="ocs-bench-", dir="/tmp")
    for round_ in range(1, args.rounds + 1):
        for tree in trees:
            prepare(tree, args)
            argv = [sys.executable, __file__, "--one", *sys.argv[1:]]
            env = {**os.environ, "PYTHONPATH": str(tree)}
            out = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
            results = json.loads(out.stdout.strip().splitlines()[-1])
            parts = [
                f"{phase} {result['cpu_us_per_request']} us CPU, {result['per_second']:,}/s "
                f"(replies {result['codes']})"
                for phase, result in results.items()
            ]
            if args.full_calls:
                call = sum(result["cpu_us_per_request"] for result in results.values())
                parts.append(f"a full call {call:.1f} us CPU: {1e6 / call:,.0f} calls/s a core")
            print(f"round {round_} {tree}: " + "; ".join(parts), flush=True)
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.machine import describe

    print(f"machine: {describe()}")


if __name__ == "__main__":
    main()
