"""Failover drill: a Redis Cluster master killed under load (issue 17).

A cluster of three masters with one replica each (``appendfsync always``), and ocs
on it with ``redis_wait_replicas = 1``: each batch of writes is answered once the
master's replica has it. Twelve switches charge accounts on every master over
HTTP (a top-up, then a call: authorize and stop), each retransmitting a request
until it is answered other than 503, as a switch does. Once all of them run, the
master holding the first account is killed with SIGKILL. Then:

- requests that reach the dead master's slots during the switch-over are answered
  503 ``unavailable``; once its replica has taken over, every switch charges again,
  with no restart of ocs;
- no acknowledged charge is lost: each balance is its opening plus its acknowledged
  top-ups minus its acknowledged calls, exactly, and so are its ledger rows in
  PostgreSQL, each once;
- ``ocs reconcile`` (the command, on the cluster) finds no drift.

A standalone Redis with ``redis_wait_replicas`` is waited for by its live replicas as
a cluster's master is: a paused replica leaves writes unacknowledged, and a server
whose replicas are gone (or that never had one) answers every write, the ledger
writer's too, instead of 503 for writes it applied.

Rates (tests/conftest.py RETAIL_DECK, EUR): UK Mobile 0.060 a minute, 30/6, connect
fee 0.150 (45 s: 0.198).
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from ocs import api_tokens
from ocs.balances import keys
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.reconcile import reconcile
from ocs.balances.slots import key_slot
from ocs.balances.wire import RedisWire, ReplicationUnconfirmed
from ocs.config import Settings, with_overrides
from ocs.housekeeping import ledger_writer
from ocs.http.app import create_app
from ocs.runtime import open_runtime
from tests.conftest import TEST_TOKEN_NAME, RunningApp, add_plan, bearer, eventually, reset_state
from tests.ports import free_port
from tests.redis_cluster import RedisClusterProcess, redis_binary

pytestmark = pytest.mark.cluster

UK_MOBILE = "447700900123"
OPENING = 50_000_000  # 50.00 EUR
TOPUP = 500_000  # 0.50 EUR
CALL = 198_000  # 45 s to UK Mobile
SWITCHES = 12
ROUNDS_AFTER = 3  # rounds each switch completes after the failover


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[RedisClusterProcess]:
    """Three masters with one replica each, for this module alone (a master dies here)."""
    cluster = RedisClusterProcess(masters=3, replicas=1, appendfsync="always")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def drill_app(
    replicated_cluster: RedisClusterProcess,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
    pepper_file: Path,
) -> AsyncIterator[RunningApp]:
    """The HTTP app on the replicated cluster, replicas waited for, with a ledger writer."""
    await reset_state(redis_url, database_url)
    replicated_cluster.flush()
    settings = Settings(
        pepper_file=pepper_file,
        redis_url=replicated_cluster.url,
        redis_cluster=True,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=500,
        database_url=database_url,
        data_dir=tmp_path / "var",
        http_host="127.0.0.1",
        http_port=0,
        log_format="text",
    )
    async with open_runtime(settings) as services:
        token = await api_tokens.create(services.pool, TEST_TOKEN_NAME, "admin")
        client = TestClient(TestServer(create_app(services)), headers=bearer(token))
        await client.start_server()
        writer = LedgerWriter(
            services.redis,
            services.pool,
            block_ms=50,
            claim_idle_ms=500,
            wait_replicas=1,
            wait_timeout_ms=500,
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(writer.run(stopping, claim_every=0.5))
        try:
            yield RunningApp(services=services, client=client, writer=writer, admin_token=token)
        finally:
            stopping.set()
            await asyncio.wait_for(task, timeout=15)
            await client.close()


@dataclass
class Log:
    """What the switches saw: acknowledged top-ups and calls, and the 503s."""

    topups: dict[str, int] = field(default_factory=dict)  # account -> acknowledged top-ups
    calls: dict[str, int] = field(default_factory=dict)  # account -> acknowledged calls
    unavailable: int = 0
    other_refusals: list[tuple[int, object]] = field(default_factory=list)


async def acknowledged(
    app: RunningApp, log: Log, path: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """POST until answered other than 503 (a switch retransmits); that answer."""
    for _ in range(3000):
        try:
            status, body = await app.post(path, payload)
        except aiohttp.ClientError:
            await asyncio.sleep(0.01)
            continue
        if status == 503:
            assert body["error"]["reason"] == "unavailable", body
            log.unavailable += 1
            await asyncio.sleep(0.01)
            continue
        if status not in (200, 201):
            log.other_refusals.append((status, body))
        return body
    raise AssertionError(f"{path}: unavailable for too long")


async def test_writes_their_replica_does_not_confirm_in_time_are_answered_unavailable(
    drill_app: RunningApp, replicated_cluster: RedisClusterProcess
) -> None:
    app = drill_app
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "waited", "plan": "retail", "balance": "1.00"})
    master = replicated_cluster.node_of_slot(key_slot(keys.account("waited")))
    replica = replicated_cluster.replica_of(master)
    replicated_cluster.pause(replica)
    try:
        status, body = await app.post(
            "/v1/accounts/waited/topups", {"amount": "0.50", "topup_id": "w-1"}
        )
    finally:
        replicated_cluster.resume(replica)
    # The master applied it, but its replica did not confirm within 500 ms: a failover
    # now could lose it, so it is not acknowledged. The switch's retry is answered
    # with the first result, charged once.
    assert (status, body["error"]["reason"]) == (503, "unavailable")
    status, body = await app.post(
        "/v1/accounts/waited/topups", {"amount": "0.50", "topup_id": "w-1"}
    )
    assert (status, body["repeated"], body["balance"]) == (200, True, "1.500000"), body


async def test_a_killed_master_fails_over_and_no_acknowledged_charge_is_lost(
    drill_app: RunningApp, replicated_cluster: RedisClusterProcess
) -> None:
    app = drill_app
    await add_plan(app.services, max_lines=2)
    accounts = [f"fo-{n}" for n in range(SWITCHES)]
    for account_id in accounts:
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "50.00"}
        )
        assert status == 201, body
    victim = replicated_cluster.node_of_slot(key_slot(keys.account(accounts[0])))
    on_victim = [
        a
        for a in accounts
        if replicated_cluster.node_of_slot(key_slot(keys.account(a))).port == victim.port
    ]
    log = Log(topups={a: 0 for a in accounts}, calls={a: 0 for a in accounts})
    failed_over = asyncio.Event()
    after: dict[str, int] = {a: 0 for a in accounts}

    async def switch(account_id: str) -> None:
        n = 0
        while not failed_over.is_set() or after[account_id] < ROUNDS_AFTER:
            recovered = failed_over.is_set()
            await acknowledged(
                app,
                log,
                f"/v1/accounts/{account_id}/topups",
                {"amount": "0.50", "topup_id": f"{account_id}-t{n}"},
            )
            log.topups[account_id] += 1
            call_id = f"{account_id}-c{n}"
            await acknowledged(
                app,
                log,
                "/v1/calls",
                {"account": account_id, "destination": UK_MOBILE, "call_id": call_id},
            )
            stopped = await acknowledged(app, log, f"/v1/calls/{call_id}/stop", {"duration": 45})
            assert stopped["cost"] == "0.198000", stopped
            log.calls[account_id] += 1
            if recovered:
                after[account_id] += 1
            n += 1

    switches = asyncio.gather(*(switch(a) for a in accounts))
    try:
        await eventually(
            lambda: asyncio.sleep(0, min(log.calls.values()) >= 2), what="every switch charging"
        )
        killed_at = asyncio.get_running_loop().time()
        replicated_cluster.kill(victim)
        await asyncio.to_thread(replicated_cluster.wait_ok, 60.0)
        failed_over.set()
        print(f"failover: {asyncio.get_running_loop().time() - killed_at:.1f} s")
    finally:
        failed_over.set()
        await asyncio.wait_for(switches, timeout=120)

    print(f"503 answers: {log.unavailable}; calls: {sum(log.calls.values())}")
    assert victim.port not in {m.port for m in replicated_cluster.masters()}
    assert on_victim and log.unavailable > 0  # the switch-over was seen, and answered 503
    assert log.other_refusals == []
    # Every switch charged again after the failover, those on the dead master's slots too.
    assert min(after.values()) >= ROUNDS_AFTER

    expected = {a: OPENING + log.topups[a] * TOPUP - log.calls[a] * CALL for a in accounts}
    for account_id in accounts:
        _, shown = await app.get(f"/v1/accounts/{account_id}")
        assert int(shown["balance"].replace(".", "")) == expected[account_id], account_id
        assert (shown["reserved"], shown["lines_in_use"]) == ("0.000000", 0)

    async def all_written() -> bool:
        async with app.services.pool.acquire() as conn:
            count = await conn.fetchval("SELECT count(*) FROM ledger")
        return int(count) == sum(1 + log.topups[a] + log.calls[a] for a in accounts)

    await eventually(all_written, within=30, what="every acknowledged charge in PostgreSQL")
    async with app.services.pool.acquire() as conn:
        totals = {
            r["account_id"]: int(r["total"])
            for r in await conn.fetch(
                "SELECT account_id, sum(amount) AS total FROM ledger GROUP BY account_id"
            )
        }
        cdrs = await conn.fetchval("SELECT count(DISTINCT call_id) FROM cdrs")
        cdr_rows = await conn.fetchval("SELECT count(*) FROM cdrs")
    assert totals == expected
    assert cdrs == cdr_rows == sum(log.calls.values())
    result = await reconcile(app.services.redis, app.services.pool)
    assert result.ok, result.mismatches

    settings = app.services.settings
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        "reconcile",
        "--redis-url",
        replicated_cluster.url,  # a live node: the one the app started from may be dead
        "--database-url",
        settings.database_url or "",
        "--log-format",
        "text",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OCS_REDIS_CLUSTER": "true"},
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert (report["ok"], report["accounts"], report["mismatches"]) == (True, SWITCHES, [])


@dataclass
class StandalonePair:
    """A standalone Redis master and its one replica, each a redis-server of this test."""

    master_port: int
    replica: subprocess.Popen[bytes]

    def online_replicas(self) -> int:
        """How many replicas the master lists online."""
        with SyncRedis(host="127.0.0.1", port=self.master_port, socket_timeout=5) as client:
            info = client.info("replication")
        return sum(1 for k, v in info.items() if k.startswith("slave") and v["state"] == "online")


@pytest.fixture
def standalone_pair(tmp_path: Path) -> Iterator[StandalonePair]:
    """A master and a replica following it, started for one test, stopped after it."""
    server = redis_binary("redis-server", "OCS_TEST_REDIS_SERVER")
    processes: list[subprocess.Popen[bytes]] = []

    def launch(port: int, *extra: str) -> subprocess.Popen[bytes]:
        directory = tmp_path / str(port)
        directory.mkdir()
        process = subprocess.Popen(
            [
                *(server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
                *("--save", "", "--appendonly", "no", "--protected-mode", "no", *extra),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        return process

    try:
        master_port, replica_port = free_port(), free_port()
        launch(master_port)
        replica = launch(replica_port, "--replicaof", "127.0.0.1", str(master_port))
        pair = StandalonePair(master_port, replica)
        deadline = time.monotonic() + 30
        while True:  # poll until the master lists its replica online
            with contextlib.suppress(RedisError):
                if pair.online_replicas() == 1:
                    break
            if time.monotonic() > deadline or replica.poll() is not None:
                raise RuntimeError("the replica did not come online")
            time.sleep(0.02)
        yield pair
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(timeout=10)


async def test_a_standalone_master_is_waited_for_by_its_live_replicas_only(
    standalone_pair: StandalonePair,
) -> None:
    pair = standalone_pair
    wire = RedisWire(f"redis://127.0.0.1:{pair.master_port}", wait_replicas=1, wait_timeout_ms=200)
    try:
        # Its replica is online: a write is answered once the replica confirmed it.
        assert await wire.execute_many([("SET", "k", "1")]) == [b"OK"]
        # A paused replica is still live: a write it does not confirm is not acknowledged.
        pair.replica.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(ReplicationUnconfirmed):
                await wire.execute_many([("SET", "k", "2")])
        finally:
            pair.replica.send_signal(signal.SIGCONT)
        assert await wire.execute_many([("SET", "k", "3")]) == [b"OK"]
        # The replica is gone: the master is not waited for, as a cluster's master whose
        # replicas are gone is not (before: every write applied, and answered 503).
        pair.replica.kill()
        pair.replica.wait(timeout=10)

        async def acknowledged_alone() -> bool:
            try:
                return await wire.execute_many([("SET", "k", "4")]) == [b"OK"]
            except ReplicationUnconfirmed:
                return False  # the replica's loss not seen yet

        await eventually(acknowledged_alone, what="a write acknowledged without the replica")
        assert pair.online_replicas() == 0
        assert await wire.execute_many([("GET", "k")]) == [b"4"]
    finally:
        await wire.close()


@pytest.fixture
async def waiting_app(settings: Settings) -> AsyncIterator[RunningApp]:
    """The HTTP app on the session's standalone Redis (no replica) with
    ``redis_wait_replicas = 1``, and a ledger writer waiting as ``ocs serve``'s does."""
    settings = with_overrides(settings, redis_wait_replicas=1, redis_wait_timeout_ms=50)
    await reset_state(settings.redis_url or "", settings.database_url or "")
    async with open_runtime(settings) as services:
        token = await api_tokens.create(services.pool, TEST_TOKEN_NAME, "admin")
        client = TestClient(TestServer(create_app(services)), headers=bearer(token))
        await client.start_server()
        writer = ledger_writer(settings, services)
        stopping = asyncio.Event()
        task = asyncio.create_task(writer.run(stopping))
        try:
            yield RunningApp(services=services, client=client, writer=writer, admin_token=token)
        finally:
            stopping.set()
            await asyncio.wait_for(task, timeout=10)
            await client.close()


async def test_a_standalone_redis_without_a_replica_answers_every_write(
    waiting_app: RunningApp,
) -> None:
    app = waiting_app
    await add_plan(app.services)
    status, body = await app.post(
        "/v1/accounts", {"id": "alone", "plan": "retail", "balance": "1.00"}
    )
    assert status == 201, body
    for n in range(2):
        status, body = await app.post(
            "/v1/accounts/alone/topups", {"amount": "5.00", "topup_id": f"alone-{n}"}
        )
        assert status == 201, body
    # Each top-up once, each acknowledged (before: 503 "retry", and 11.00 all the same).
    assert body["balance"] == "11.000000"

    async def in_postgresql() -> bool:
        async with app.services.pool.acquire() as conn:
            total = await conn.fetchval("SELECT sum(amount) FROM ledger WHERE account_id = 'alone'")
        return bool(total == 11_000_000)

    # The ledger writer waits too, and writes: before, its reads were refused as well.
    await eventually(in_postgresql, what="the account's ledger in PostgreSQL")
