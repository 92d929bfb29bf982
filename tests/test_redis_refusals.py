"""A Redis that answers but refuses every write is an outage: a few log lines, not a flood.

A private redis-server is made to refuse writes while it still answers PING and reads:
out of memory (``maxmemory`` 1 with ``noeviction``: ``OOM command not allowed``) or a
replica of a primary that is not there (``REPLICAOF`` a closed port: ``READONLY``, as
an old primary after a failover). Calls over HTTP and RADIUS are refused as during an
outage (503 ``unavailable``; no RADIUS answer, so the NAS fails over), reads go on being
answered, and the log holds one line when the refusals began and one when Redis took
writes again, not one per request; ``ocs_backend_up`` is 0 and ``/readyz`` 503, naming
the refusal, meanwhile. Once the server takes writes again, calls are granted and the
process sees Redis back without a readiness probe (its own probe write).
"""

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ocs import backend_health
from ocs.backend_health import REDIS
from ocs.balances import keys
from ocs.balances.accounts import AccountSpec
from ocs.balances.slots import key_slot
from ocs.config import RadiusClientConfig, Settings
from ocs.runtime import open_runtime
from ocs.services import Services
from ocs.state_metrics import StateSampler
from tests.conftest import RADIUS_SECRET, add_plan, eventually, reset_state, started_radius
from tests.outage_helpers import PrivateRedis, client_with_readyz, services_on
from tests.ports import free_port
from tests.radius_udp import UdpClient, access_request, sample, wire
from tests.redis_cluster import RedisClusterProcess

UK_MOBILE = "447700900123"
DROPPED = "ocs_radius_dropped_total"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def refusal_services(
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


def _out_of_memory(server: redis.Redis) -> None:
    server.config_set("maxmemory-policy", "noeviction")
    server.config_set("maxmemory", "1")


def _enough_memory(server: redis.Redis) -> None:
    server.config_set("maxmemory", "0")


def _replica_of_nothing(server: redis.Redis) -> None:
    # A primary on a port nothing listens on: never synced, the data stays, reads are
    # served (replica-serve-stale-data), every write answers READONLY.
    server.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))


def _primary_again(server: redis.Redis) -> None:
    server.execute_command("REPLICAOF", "NO", "ONE")


REFUSALS = {
    "OOM": (_out_of_memory, _enough_memory),
    "READONLY": (_replica_of_nothing, _primary_again),
}


async def _metric(client: TestClient, name: str, backend: str) -> float | None:
    response = await client.get("/metrics")
    for family in text_string_to_metric_families(await response.text()):
        for sample_ in family.samples:
            if sample_.name == name and sample_.labels.get("backend") == backend:
                return sample_.value
    return None


async def _authorize(client: TestClient, call_id: str) -> int:
    call = {"account": "o1", "destination": UK_MOBILE, "call_id": call_id}
    response = await client.post("/v1/calls", json=call)
    if response.status == 503:
        assert (await response.json())["error"]["reason"] == "unavailable"
    return response.status


def _radius_call(call_id: str) -> bytes:
    pairs = [
        ("NAS-IP-Address", "127.0.0.1"),
        ("User-Name", "o1"),
        ("Called-Station-Id", UK_MOBILE),
        ("Calling-Station-Id", "4930123456"),
        ("h323-conf-id", f"h323-conf-id={call_id}"),
    ]
    return wire(access_request(RADIUS_SECRET, pairs))


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
async def test_a_redis_refusing_writes_is_an_outage_logged_once(
    refusal: str,
    refusal_services: Services,
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refuse, undo = REFUSALS[refusal]
    services = refusal_services
    await add_plan(services)
    await services.accounts.create(AccountSpec("o1", plan_id="retail", opening_balance=5_000_000))
    client = await client_with_readyz(services)
    nas = await started_radius(
        services,
        (RadiusClientConfig(name="test-nas", network="127.0.0.1/32", secret=RADIUS_SECRET),),
    )
    udp = await UdpClient.open()
    control = redis.Redis(port=private_redis.port, socket_timeout=5.0)
    try:
        response = await client.get("/readyz")
        assert response.status == 200, await response.text()
        assert await _metric(client, "ocs_backend_up", "redis") == 1
        outages = await _metric(client, "ocs_backend_outages_total", "redis") or 0
        assert control.ping()

        caplog.set_level(logging.INFO)
        caplog.clear()
        refuse(control)
        assert control.ping()  # still answering: only its writes are refused

        for n in range(30):
            # Calls are refused as during an outage; reads between them are served.
            assert await _authorize(client, f"h{n}") == 503
            assert (await client.get("/v1/accounts/o1")).status == 200
        drops = sample(DROPPED, reason="backend_unavailable")
        for n in range(30):
            udp.send(_radius_call(f"r{n}"), nas.auth_port)

        async def radius_dropped() -> bool:
            return sample(DROPPED, reason="backend_unavailable") >= drops + 30

        await eventually(radius_dropped, what="30 RADIUS requests dropped as unavailable")
        assert udp.unread_count() == 0  # no answer: the NAS retries or fails over

        response = await client.get("/readyz")
        assert response.status == 503
        ready = await response.json()
        assert ready["ready"] is False
        assert ready["backends"]["redis"]["up"] is False
        assert ready["backends"]["redis"]["refusal"] == refusal
        assert ready["backends"]["postgresql"] == {"up": True}
        assert await _metric(client, "ocs_backend_up", "redis") == 0
        assert await _metric(client, "ocs_backend_outages_total", "redis") == outages + 1

        undo(control)
        calls = iter(range(1000))

        async def granted() -> bool:
            return await _authorize(client, f"after{next(calls)}") == 201

        await eventually(granted, what="a call granted once Redis takes writes")

        async def back_without_readyz() -> bool:
            # Traffic alone: the process's own probe write ends the outage.
            assert (await client.get("/v1/accounts/o1")).status == 200
            return await _metric(client, "ocs_backend_up", "redis") == 1

        await eventually(back_without_readyz, what="ocs_backend_up to be 1 again")
        response = await client.get("/readyz")
        assert response.status == 200, await response.text()
    finally:
        udp.close()
        nas.close_listeners()
        await nas.drain(5)
        await client.close()
        control.close()

    # ocs's own lines, and asyncio's (an unretrieved failure); not the HTTP access log.
    records = [r for r in caplog.records if r.name.startswith(("ocs", "asyncio"))]
    texts = [f"{r.name}: {r.levelname} {r.getMessage()}" for r in records]
    assert not [r for r in records if r.exc_info], texts
    # Thirty refused calls over each protocol, thirty reads: one outage, a handful of lines.
    assert len(records) <= 10, texts
    down = [r for r in records if r.getMessage() == "redis refusing writes"]
    back = [r for r in records if r.getMessage() == "redis taking writes again"]
    assert len(down) == 1 and len(back) == 1, texts
    assert down[0].levelno == logging.ERROR
    assert down[0].refusal == refusal  # type: ignore[attr-defined]
    assert not [t for t in texts if "backend unavailable" in t], texts


@pytest.fixture
async def cluster_services(
    redis_cluster: RedisClusterProcess,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
    pepper_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Services]:
    # A tracker of this test alone, as for the private server above.
    monkeypatch.setattr(backend_health, "_DEFAULT", None)
    redis_cluster.flush()
    await reset_state(redis_url, database_url)
    settings = Settings(
        redis_url=redis_cluster.url,
        redis_cluster=True,
        database_url=database_url,
        data_dir=tmp_path / "var",
        pepper_file=pepper_file,
        http_host="127.0.0.1",
        http_port=0,
        log_format="text",
        admin_token_required=False,
    )
    async with open_runtime(settings) as services:
        yield services


async def _master_up(client: TestClient, master: str) -> float | None:
    """``ocs_redis_master_up`` of one master (``host:port``), None when not exported."""
    response = await client.get("/metrics")
    for family in text_string_to_metric_families(await response.text()):
        for sample_ in family.samples:
            if sample_.name == "ocs_redis_master_up" and sample_.labels.get("master") == master:
                return sample_.value
    return None


def _master_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("redis master")]


async def test_a_cluster_master_refusing_writes_is_seen_by_the_probes(
    cluster_services: Services,
    redis_cluster: RedisClusterProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One master of three is out of memory; the probe key's own master takes writes.
    # The probes see it (a probe on one master did not): the gauges, a log line. Yet
    # /readyz stays 200, naming it: every ocs instance sees the same cluster, and a 503
    # drained them all, a total outage for a third of the accounts. All three refusing:
    # no account served, 503.
    services = cluster_services
    probe_master = redis_cluster.node_of_slot(key_slot(keys.write_probe()))
    masters = redis_cluster.masters()
    refusing = next(n for n in masters if n.port != probe_master.port)
    client = await client_with_readyz(services)
    sampler = StateSampler.of(services)
    controls = {n.address: n.client() for n in masters}
    caplog.set_level(logging.INFO)
    try:
        response = await client.get("/readyz")
        assert response.status == 200, await response.text()
        assert "failing_masters" not in (await response.json())["backends"]["redis"]
        assert await sampler.probe(REDIS) is True

        caplog.clear()
        _out_of_memory(controls[refusing.address])
        response = await client.get("/readyz")
        assert response.status == 200, await response.text()
        ready = await response.json()
        assert ready["ready"] is True
        redis_state = ready["backends"]["redis"]
        assert redis_state["failing_masters"] == {refusing.address: "OOM"}, ready
        assert redis_state["up"] is False and redis_state["refusal"] == "OOM", ready
        assert await _metric(client, "ocs_backend_up", "redis") == 0
        assert await _master_up(client, refusing.address) == 0
        for other in masters:
            if other is not refusing:
                assert await _master_up(client, other.address) == 1
        # The gauges' probe (every few seconds, without traffic) sees it as well, and
        # the second and third probes log nothing more: one line for the change.
        assert await sampler.probe(REDIS) is False
        assert (await client.get("/readyz")).status == 200
        assert _master_lines(caplog) == [f"redis master {refusing.address} refusing writes"]

        for node in masters:
            _out_of_memory(controls[node.address])
        response = await client.get("/readyz")
        assert response.status == 503, await response.text()
        ready = await response.json()
        assert ready["backends"]["redis"]["failing_masters"] == {
            n.address: "OOM" for n in masters
        }, ready
        assert {await _master_up(client, n.address) for n in masters} == {0}

        caplog.clear()
        for node in masters:
            _enough_memory(controls[node.address])
        assert await sampler.probe(REDIS) is True
        response = await client.get("/readyz")
        assert response.status == 200, await response.text()
        assert "failing_masters" not in (await response.json())["backends"]["redis"]
        assert await _metric(client, "ocs_backend_up", "redis") == 1
        assert {await _master_up(client, n.address) for n in masters} == {1}
        assert sorted(_master_lines(caplog)) == sorted(
            f"redis master {n.address} taking writes again" for n in masters
        )
    finally:
        for control in controls.values():
            _enough_memory(control)
            control.close()
        await client.close()
