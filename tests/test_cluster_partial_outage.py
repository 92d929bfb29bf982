"""One Redis Cluster master down: the janitor and the ledger writer serve the others.

A cluster of three masters without replicas, ``cluster-require-full-coverage no``:
when one master dies, the other two keep serving their slots. Calls on every master
are lost (answered, never stopped) and expire; then the master holding two of them is
killed. Before, the janitor's look for expired calls failed as a whole and the ledger
writer's every pass did too: no call was closed on any master (their reservations
and lines stayed held) and nothing reached PostgreSQL from any master. Now:

- a sweep closes the calls of the masters that answer, charged as always, and then
  fails with the dead master's error; its calls stay live, untouched;
- the ledger writer stores those closes' ledger and CDR rows in PostgreSQL at once
  (not after ``claim_idle_ms``: nothing is left pending on the live masters);
- the outage is a handful of log lines, no traceback, not one per bucket or stream;
- once the master is back, the janitor closes its calls and the writer stores them.

Rates: France 0.600 a minute, 1/1 s: a 0.10 balance grants 10 s, charged 0.10 whole.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs import api_tokens, backend_health
from ocs.balances import keys
from ocs.balances.autopipeline import AutoPipeline
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.slots import key_slot
from ocs.balances.wire import ReconnectPaused, RedisWire
from ocs.charging.janitor import Janitor
from ocs.charging.lifecycle import CallService
from ocs.charging.values import AuthorizeRequest
from ocs.config import Settings, with_overrides
from ocs.http.app import create_app
from ocs.runtime import open_runtime
from tests.conftest import TEST_TOKEN_NAME, RunningApp, add_plan, bearer, eventually, reset_state
from tests.redis_cluster import Node, RedisClusterProcess

pytestmark = pytest.mark.cluster

FRANCE_DECK = (
    "prefix,zone,price_per_minute,connect_fee,first_block,increment\n33,France,0.600,0,1,1\n"
)
PER_MASTER = 2  # lost calls on each master
GRACE = 30  # call_expiry_grace: a 10 s grant expires 40 s after its start


@pytest.fixture(scope="module")
def partial_cluster() -> Iterator[RedisClusterProcess]:
    """Three masters without replicas that serve their slots while another is down."""
    cluster = RedisClusterProcess(masters=3)
    cluster.start()
    try:
        for node in cluster.nodes:
            with node.client() as client:
                client.config_set("cluster-require-full-coverage", "no")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def partial_app(
    partial_cluster: RedisClusterProcess,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
    pepper_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[RunningApp]:
    """The HTTP app on the cluster with a ledger writer as ``ocs serve`` runs it, except
    that it claims another consumer's entries only after a minute: entries on time come
    from its own reads. A backend tracker of this test's own."""
    monkeypatch.setattr(backend_health, "_DEFAULT", None)
    await reset_state(redis_url, database_url)
    partial_cluster.flush()
    settings = Settings(
        pepper_file=pepper_file,
        redis_url=partial_cluster.url,
        redis_cluster=True,
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
        writer = LedgerWriter(services.redis, services.pool, block_ms=50, claim_idle_ms=60_000)
        stopping = asyncio.Event()
        task = asyncio.create_task(writer.run(stopping, claim_every=0.2))
        try:
            yield RunningApp(services=services, client=client, writer=writer, admin_token=token)
        finally:
            stopping.set()
            await asyncio.wait_for(task, timeout=15)
            await client.close()


def accounts_by_master(cluster: RedisClusterProcess) -> dict[int, list[str]]:
    """``PER_MASTER`` account ids held by each master (by port)."""
    owners = {node.port: node for node in cluster.masters()}
    found: dict[int, list[str]] = {port: [] for port in owners}
    n = 0
    while any(len(ids) < PER_MASTER for ids in found.values()):
        account_id = f"lost-{n}"
        n += 1
        port = cluster.node_of_slot(key_slot(keys.account(account_id))).port
        if len(found[port]) < PER_MASTER:
            found[port].append(account_id)
    return found


async def account_view(app: RunningApp, account_id: str) -> tuple[str, str, int]:
    """(balance, reserved, lines in use) as the API shows them."""
    status, body = await app.get(f"/v1/accounts/{account_id}")
    assert status == 200, body
    return body["balance"], body["reserved"], body["lines_in_use"]


async def cdr_calls(app: RunningApp) -> set[str]:
    """The call ids of the CDRs in PostgreSQL."""
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT call_id FROM cdrs")
    return {row["call_id"] for row in rows}


async def ledger_sums(app: RunningApp) -> dict[str, int]:
    """Each account's sum of ledger amounts in PostgreSQL."""
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT account_id, sum(amount) AS s FROM ledger GROUP BY 1")
    return {row["account_id"]: int(row["s"]) for row in rows}


async def test_one_master_down_leaves_the_others_swept_and_written(
    partial_app: RunningApp,
    partial_cluster: RedisClusterProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = partial_app
    await add_plan(app.services, deck=FRANCE_DECK)
    by_master = accounts_by_master(partial_cluster)
    # Not the node the clients were given: the test is about a master's slots, not
    # about finding the cluster again.
    seed_port = partial_cluster.nodes[0].port
    victim_port = next(port for port in by_master if port != seed_port)
    victim: Node = next(n for n in partial_cluster.nodes if n.port == victim_port)
    down_ids = by_master[victim_port]
    up_ids = [a for port, ids in by_master.items() if port != victim_port for a in ids]
    for account_id in down_ids + up_ids:
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "0.10"}
        )
        assert status == 201, body

    async def openings_written() -> bool:
        # Every entry made so far is in PostgreSQL: none is left read and pending on the
        # master about to die (that would wait for claim_idle_ms, whatever the fix).
        return await ledger_sums(app) == dict.fromkeys(down_ids + up_ids, 100_000)

    await eventually(openings_written, what="the opening balances in PostgreSQL")

    now = int(time.time())
    settings = with_overrides(app.services.settings, call_expiry_grace=GRACE)
    calls = CallService(
        app.services.catalog, app.services.store, settings, app.services.digests, clock=lambda: now
    )
    started = []
    for account_id in down_ids + up_ids:
        grant = await calls.authorize(
            AuthorizeRequest(account_id, "33123456789", call_id=f"{account_id}-call")
        )
        assert grant.max_duration == 10
        started.append((await calls.start(f"{account_id}-call")).started_at)
    expired = max(started) + 10 + GRACE
    janitor = Janitor(calls, app.services.store)
    for account_id in up_ids:
        assert await account_view(app, account_id) == ("0.100000", "0.100000", 1)

    caplog.set_level(logging.INFO)
    caplog.clear()
    partial_cluster.kill(victim)

    # The live masters' expired calls are closed and charged; the sweep then fails with
    # the dead master's error (before: it failed first, and closed none at all).
    with pytest.raises(RedisConnectionError):
        await janitor.sweep(now=expired)
    for account_id in up_ids:
        assert await account_view(app, account_id) == ("0.000000", "0.000000", 0)
    status, body = await app.get(f"/v1/accounts/{down_ids[0]}")
    assert (status, body["error"]["reason"]) == (503, "unavailable"), body

    async def up_written() -> bool:
        return await cdr_calls(app) == {f"{a}-call" for a in up_ids}

    # The writer reads the live masters' streams, writes and acknowledges them, while
    # its reads of the dead master's fail each pass.
    await eventually(up_written, within=20, what="the live masters' CDRs in PostgreSQL")
    sums = await ledger_sums(app)
    assert {a: sums[a] for a in up_ids} == dict.fromkeys(up_ids, 0)
    assert {a: sums[a] for a in down_ids} == dict.fromkeys(down_ids, 100_000)
    with pytest.raises(RedisConnectionError):
        await janitor.sweep(now=expired)  # nothing more to close, the dead master's failure

    records = list(caplog.records)
    texts = [f"{r.name}: {r.getMessage()}" for r in records]
    assert not [r for r in records if r.exc_info], texts
    closes = [t for t in texts if t == "ocs.janitor: closed a stale call"]
    assert len(closes) == len(up_ids), texts
    # The outage is reported as one (a call's close answered by the live masters ends
    # no outage while one is dead), never a line per bucket or stream.
    assert len([t for t in texts if t == "ocs.backends: redis unreachable"]) == 1, texts
    assert len(records) - len(closes) <= 4, texts

    partial_cluster.restart(victim)
    partial_cluster.wait_ok()

    async def down_closed() -> bool:
        try:
            await janitor.sweep(now=expired)
        except RedisConnectionError:
            return False  # the clients find the master back a moment later
        views = [await account_view(app, a) for a in down_ids]
        return views == [("0.000000", "0.000000", 0)] * len(down_ids)

    await eventually(down_closed, within=20, what="the returned master's calls closed")

    async def all_written() -> bool:
        return await cdr_calls(app) == {f"{a}-call" for a in down_ids + up_ids}

    await eventually(all_written, within=20, what="every CDR in PostgreSQL")
    assert await ledger_sums(app) == dict.fromkeys(down_ids + up_ids, 0)
    assert await janitor.sweep(now=expired) == 0


async def test_a_stalled_master_fails_its_own_commands_not_the_batch(
    partial_cluster: RedisClusterProcess,
) -> None:
    partial_cluster.flush()
    seed_port = partial_cluster.nodes[0].port
    owned = accounts_by_master(partial_cluster)
    victim_port = next(port for port in owned if port != seed_port)
    victim = next(n for n in partial_cluster.nodes if n.port == victim_port)
    stalled_key = keys.account(owned[victim_port][0])
    healthy_key = keys.account(owned[seed_port][0])
    # Connections set up as the auto-pipeline's are (it always loads its scripts first).
    wire = RedisWire(
        f"redis://127.0.0.1:{seed_port}",
        timeout=0.5,
        cluster=True,
        on_connect=[("CLIENT", "SETNAME", "ocs-stall-test")],
    )
    try:
        assert await wire.execute_many([("SET", healthy_key, "1"), ("SET", stalled_key, "1")]) == [
            b"OK",
            b"OK",
        ]
        partial_cluster.pause(victim)
        try:
            # The first batch meets the open connection unanswered; the next ones connect
            # again, and the stalled master takes the connection but never answers its setup
            # (before: a bare TimeoutError for the whole batch, the healthy master's too).
            for n in range(2, 5):
                replies = await wire.execute_many(
                    [("SET", healthy_key, str(n)), ("SET", stalled_key, str(n))]
                )
                assert replies[0] == b"OK", replies
                assert isinstance(replies[1], RedisConnectionError), replies
                with partial_cluster.node_of_slot(key_slot(healthy_key)).client() as client:
                    assert client.get(healthy_key) == str(n).encode()
        finally:
            partial_cluster.resume(victim)
        partial_cluster.wait_ok()

        async def stalled_served() -> bool:
            try:
                (reply,) = await wire.execute_many([("GET", stalled_key)])
            except RedisConnectionError:
                return False  # its last failed connect not retried yet
            # Served again: "2" when the SET the stall left unanswered was still read from
            # the closed connection's buffer once resumed (its caller was told unavailable).
            return reply in (b"1", b"2")

        await eventually(stalled_served, what="the resumed master's key served again")
    finally:
        await wire.close()


async def test_a_batch_timed_out_on_an_open_connection_pauses_that_master_alone(
    partial_cluster: RedisClusterProcess,
) -> None:
    # A master stalls (SIGSTOP) under a connection the wire has open. Before, the batch
    # that timed out on it set no reconnect pause (a connect that failed did): the next
    # batch dialled the stalled master at once and waited out its setup's timeout, and
    # the healthy master's replies of that batch waited with it. Now the stalled master
    # is not dialled again for a moment: the next batch's commands for it are answered
    # "unavailable" at once (not tried again yet), the healthy master's with them.
    partial_cluster.flush()
    seed_port = partial_cluster.nodes[0].port
    owned = accounts_by_master(partial_cluster)
    victim_port = next(port for port in owned if port != seed_port)
    victim = next(n for n in partial_cluster.nodes if n.port == victim_port)
    stalled_key = keys.account(owned[victim_port][0])
    healthy_key = keys.account(owned[seed_port][0])
    timeout = 1.0
    wire = RedisWire(
        f"redis://127.0.0.1:{seed_port}",
        timeout=timeout,
        cluster=True,
        on_connect=[("CLIENT", "SETNAME", "ocs-pause-test")],
    )
    loop = asyncio.get_running_loop()
    try:
        assert await wire.execute_many([("SET", healthy_key, "1"), ("SET", stalled_key, "1")]) == [
            b"OK",
            b"OK",
        ]
        partial_cluster.pause(victim)
        try:
            replies = await wire.execute_many(
                [("SET", healthy_key, "2"), ("SET", stalled_key, "2")]
            )
            assert replies[0] == b"OK", replies
            assert isinstance(replies[1], RedisConnectionError), replies
            assert f"did not answer within {timeout} s" in str(replies[1])
            began = loop.time()
            replies = await wire.execute_many(
                [("SET", healthy_key, "3"), ("SET", stalled_key, "3")]
            )
            took = loop.time() - began
        finally:
            partial_cluster.resume(victim)
        assert replies[0] == b"OK", replies
        # Not dialled: before, a new connection whose setup went unanswered (after the
        # whole timeout), the healthy master's reply held as long.
        assert isinstance(replies[1], ReconnectPaused), replies
        assert took < timeout / 2, took
        with partial_cluster.node_of_slot(key_slot(healthy_key)).client() as client:
            assert client.get(healthy_key) == b"3"
        partial_cluster.wait_ok()

        async def stalled_served() -> bool:
            try:
                (reply,) = await wire.execute_many([("GET", stalled_key)])
            except RedisConnectionError:
                return False  # paused a moment more
            # "2" when the SET the stall left unanswered was still read from the closed
            # connection's buffer once resumed (its caller was told unavailable).
            return reply in (b"1", b"2")

        # The pause is a moment: the master is dialled again and served.
        await eventually(stalled_served, what="the resumed master's key served again")
    finally:
        await wire.close()


async def _master_up(app: RunningApp, master: str) -> float | None:
    """``ocs_redis_master_up`` of one master (``host:port``), None when not exported."""
    response = await app.client.get("/metrics")
    for family in text_string_to_metric_families(await response.text()):
        for sample_ in family.samples:
            if sample_.name == "ocs_redis_master_up" and sample_.labels.get("master") == master:
                return sample_.value
    return None


async def test_a_master_that_hangs_leaves_readyz_200_naming_it(
    partial_app: RunningApp, partial_cluster: RedisClusterProcess
) -> None:
    # One master stops answering and holds its connections (its process stopped: a host
    # gone mid-failover sends no reset). Before, /readyz waited for every master's probe
    # past its own 2 s bound and answered 503, in every ocs instance at once: a load
    # balancer drained them all though two masters of three served. Now each master's
    # probe is bounded alone: 200, the hung master named, its gauge 0.
    app = partial_app
    partial_cluster.wait_ok()
    seed_port = partial_cluster.nodes[0].port
    victim = next(n for n in partial_cluster.masters() if n.port != seed_port)
    response = await app.client.get("/readyz")
    assert response.status == 200, await response.text()
    partial_cluster.pause(victim)
    try:
        response = await app.client.get("/readyz")
        ready = await response.json()
        assert response.status == 200, ready
        assert ready["backends"]["redis"]["failing_masters"] == {victim.address: "unreachable"}
        assert await _master_up(app, victim.address) == 0
    finally:
        partial_cluster.resume(victim)
    partial_cluster.wait_ok()

    async def taking_writes() -> bool:
        response = await app.client.get("/readyz")
        ready = await response.json()
        return response.status == 200 and "failing_masters" not in ready["backends"]["redis"]

    await eventually(taking_writes, within=20, what="every master taking the probe again")
    assert await _master_up(app, victim.address) == 1


# RedisWire's default timeout, the auto-pipeline's: how long a stalled master's batch waits.
WIRE_TIMEOUT_S = 5.0


def _sample(name: str) -> float:
    """The process's value of a Redis backend metric (``ocs_backend_up``...)."""
    return REGISTRY.get_sample_value(name, {"backend": "redis"}) or 0.0


async def _probe_as_readyz(pipe: AutoPipeline, tracker: backend_health.BackendHealth) -> None:
    """A write probe on every master, reported to the tracker as ``/readyz`` does."""
    error = (await pipe.probe_writes()).error()
    if error is None:
        tracker.report_success(backend_health.REDIS, write=True)
    else:
        tracker.report(error, default=backend_health.REDIS)


async def test_one_master_down_is_one_outage_under_traffic(
    partial_cluster: RedisClusterProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Traffic on every master while one is dead, with a /readyz probe now and then.
    # Before, each batch the live masters served alone ended the outage ("redis
    # reachable again") and the next one meeting the dead master started it again:
    # dozens of lines a second, ocs_backend_up flapping (OcsBackendDown, for: 1m, never
    # firing) and ocs_backend_outages_total counting each. Now it is one outage, ended
    # once when every master takes the probe write again.
    partial_cluster.flush()
    seed_port = partial_cluster.nodes[0].port
    victim = next(n for n in partial_cluster.masters() if n.port != seed_port)
    tracker = backend_health.BackendHealth()
    pipe = AutoPipeline(None, partial_cluster.url, cluster=True, health=tracker)
    account_keys = [keys.account(f"traffic-{n}") for n in range(64)]  # on every master
    outages = _sample("ocs_backend_outages_total")
    sent = 0

    async def request() -> None:
        nonlocal sent
        sent += 1
        with contextlib.suppress(RedisConnectionError):
            await pipe.execute("GET", account_keys[sent % len(account_keys)])

    try:
        await request()
        assert tracker.is_up(backend_health.REDIS)
        caplog.set_level(logging.INFO, logger="ocs.backends")
        caplog.clear()
        partial_cluster.kill(victim)
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.0
        next_probe = loop.time()
        began = False
        while loop.time() < until:  # 3 s of requests, one every 10 ms
            await request()
            if loop.time() >= next_probe:
                next_probe += 0.5
                await _probe_as_readyz(pipe, tracker)
            began = began or not tracker.is_up(backend_health.REDIS)
            if began:  # once the outage began, down until the master is back
                assert _sample("ocs_backend_up") == 0, f"request {sent}"
            await asyncio.sleep(0.01)
        assert not tracker.is_up(backend_health.REDIS)
        assert _sample("ocs_backend_outages_total") == outages + 1
        partial_cluster.restart(victim)
        partial_cluster.wait_ok()

        async def reachable() -> bool:
            await request()  # a batch the returned master serves: the pipeline probes
            return tracker.is_up(backend_health.REDIS)

        await eventually(reachable, what="redis reachable again after the master's return")
    finally:
        await pipe.drain()
        if not victim.alive:  # failed before its return: the next tests need it
            partial_cluster.restart(victim)
            partial_cluster.wait_ok()
    texts = [r.getMessage() for r in caplog.records if r.name == "ocs.backends"]
    assert texts.count("redis unreachable") == 1, texts
    assert texts.count("redis reachable again") == 1, texts
    assert _sample("ocs_backend_outages_total") == outages + 1
    assert _sample("ocs_backend_up") == 1


def _zrangebyscore_calls(node: Node) -> int:
    """How many ZRANGEBYSCORE (the janitor's look, one a bucket) a node has served."""
    with node.client() as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_zrangebyscore", {}).get("calls", 0))


async def test_a_stalled_master_costs_a_sweep_one_timeout(
    partial_app: RunningApp, partial_cluster: RedisClusterProcess
) -> None:
    # One master stalled (SIGSTOP: it holds its connections, answers nothing). Before,
    # the janitor's look for expired calls asked its 8 slices of buckets one after
    # another: the first slice waited the stalled master's timeout, the second its
    # reconnect's setup timeout, 10 s before the healthy masters' expired calls were
    # closed, every sweep. Now every slice is sent at once: the healthy masters' buckets
    # are all asked while the stalled one's first answer is still awaited, and the sweep
    # closes their calls after one timeout.
    app = partial_app
    partial_cluster.wait_ok()
    await add_plan(app.services, deck=FRANCE_DECK)
    by_master = accounts_by_master(partial_cluster)
    seed_port = partial_cluster.nodes[0].port
    victim = next(n for n in partial_cluster.masters() if n.port != seed_port)
    healthy = [n for n in partial_cluster.masters() if n.port != victim.port]
    up_ids = [a for port, ids in by_master.items() if port != victim.port for a in ids]
    down_ids = by_master[victim.port]
    for account_id in down_ids + up_ids:
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "0.10"}
        )
        assert status == 201, body
    now = int(time.time())
    settings = with_overrides(app.services.settings, call_expiry_grace=GRACE)
    calls = CallService(
        app.services.catalog, app.services.store, settings, app.services.digests, clock=lambda: now
    )
    for account_id in down_ids + up_ids:
        await calls.authorize(
            AuthorizeRequest(account_id, "33123456789", call_id=f"{account_id}-c")
        )
        await calls.start(f"{account_id}-c")
    janitor = Janitor(calls, app.services.store)
    assert await janitor.sweep(now=now) == 0  # nothing expired yet; every master asked
    healthy_buckets = sum(
        1
        for bucket in range(keys.BUCKETS)
        if partial_cluster.node_of_slot(key_slot(keys.call_expiry(bucket))).port != victim.port
    )
    for node in healthy:
        with node.client() as client:
            client.config_resetstat()

    async def healthy_all_asked() -> bool:
        return sum(_zrangebyscore_calls(n) for n in healthy) >= healthy_buckets

    loop = asyncio.get_running_loop()
    partial_cluster.pause(victim)
    try:
        began = loop.time()
        sweep = asyncio.create_task(janitor.sweep(now=now + 10 + GRACE + 1))
        await eventually(
            healthy_all_asked, within=WIRE_TIMEOUT_S * 0.8, what="every healthy bucket asked"
        )
        assert not sweep.done()  # the stalled master's first answer still awaited
        with pytest.raises(RedisConnectionError):
            await sweep
        took = loop.time() - began
    finally:
        partial_cluster.resume(victim)
    assert took < WIRE_TIMEOUT_S * 1.6, took  # one timeout, not one a slice
    for account_id in up_ids:
        assert await account_view(app, account_id) == ("0.000000", "0.000000", 0)
    partial_cluster.wait_ok()

    async def down_untouched() -> bool:
        # The stalled master's calls were left live; its connection is set up again first.
        views = []
        for account_id in down_ids:
            status, body = await app.get(f"/v1/accounts/{account_id}")
            if status != 200:
                return False
            views.append((body["balance"], body["reserved"], body["lines_in_use"]))
        assert views == [("0.100000", "0.100000", 1)] * len(down_ids), views
        return True

    await eventually(down_untouched, within=20, what="the resumed master's accounts served")
