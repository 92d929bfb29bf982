"""The lean wire on Redis Cluster: slots as the cluster computes them, one connection per
master, each command on the master of its key, scripts on every master (issue 17)."""

from typing import Any

import pytest

from ocs.balances import keys, slots
from ocs.balances.accounts import AccountSpec
from ocs.balances.wire import RedisWire
from ocs.config import ConfigError, load_settings
from ocs.services import Services
from tests.conftest import add_plan
from tests.redis_cluster import Backend, RedisClusterProcess

pytestmark = pytest.mark.cluster


def test_key_slots_are_the_ones_the_cluster_computes(redis_cluster: RedisClusterProcess) -> None:
    names = [
        keys.account("1001"),
        keys.ledger(17),
        keys.call_ref("c-1"),
        keys.pin_ref("abc"),
        "no-tag",
        "{}empty-tag",
        "a{b}c{d}",
    ]
    with redis_cluster.masters()[0].client() as client:
        for name in names:
            assert slots.key_slot(name) == client.execute_command("CLUSTER", "KEYSLOT", name)


def test_the_key_a_command_is_routed_by() -> None:
    account = keys.account("1001")
    assert slots.command_key(("EVALSHA", "sha", 2, account, "other", "argv")) == account
    assert slots.command_key(("EVALSHA", "sha", 0, "argv")) is None
    assert slots.command_key(("XGROUP", "CREATE", "s{b:1}", "g", "0", "MKSTREAM")) == "s{b:1}"
    read = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "s{b:1}", "s{b:2}", ">", ">")
    assert slots.command_key(read) == "s{b:1}"
    assert not slots.one_slot(read)
    assert slots.command_key(("PING",)) is None
    assert slots.command_key(("HGET", account, "balance")) == account


async def test_each_command_goes_to_its_masters_one_connection_each(
    redis_cluster: RedisClusterProcess,
) -> None:
    redis_cluster.flush()
    masters = redis_cluster.masters()
    before = {}
    for master in masters:
        with master.client() as client:
            before[master.port] = {c["id"] for c in client.client_list()}
    wire = RedisWire(redis_cluster.url, cluster=True)
    names = [keys.account(f"w{n}") for n in range(60)]
    try:
        replies = await wire.execute_many([("SET", name, name) for name in names])
        assert replies == [b"OK"] * len(names)
        assert await wire.execute_many([("GET", n) for n in names]) == [n.encode() for n in names]
        assert await wire.execute_many([("PING",)]) == [b"PONG"]
        for master in masters:
            with master.client() as client:
                stored = {k.decode() for k in client.keys("acct:*")}
                # The wire's connections: new since it was made, and its commands their last.
                opened = [
                    c
                    for c in client.client_list()
                    if c["id"] not in before[master.port] and c.get("cmd") in ("get", "ping")
                ]
            held = [n for n in names if n in stored]
            assert held == [
                n for n in names if redis_cluster.node_of_slot(slots.key_slot(n)) == master
            ]
            assert held and len(opened) == 1
    finally:
        await wire.close()


async def test_scripts_flushed_on_every_master_are_loaded_again(
    backend_services: Services, backend: Backend, request: pytest.FixtureRequest
) -> None:
    services = backend_services
    await add_plan(services)
    accounts = [f"sf-{n}" for n in range(12)]
    for account_id in accounts:
        await services.accounts.create(
            AccountSpec(account_id, plan_id="retail", opening_balance=1_000_000)
        )
    if backend.cluster:
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        for master in cluster.masters():
            with master.client() as client:
                client.script_flush()
    else:
        await services.redis.script_flush()
    results: list[Any] = [
        await services.accounts.topup(account_id, 250_000, "after-flush") for account_id in accounts
    ]
    assert {(r.balance, r.repeated) for r in results} == {(1_250_000, False)}


def test_a_cluster_is_named_by_a_node_url_never_embedded() -> None:
    settings = load_settings(
        environ={"OCS_REDIS_CLUSTER": "true", "OCS_REDIS_URL": "redis://10.0.0.5:7000"}
    )
    assert (settings.redis_cluster, settings.redis_url) == (True, "redis://10.0.0.5:7000")
    with pytest.raises(ConfigError, match="redis_cluster: needs redis_url"):
        load_settings(environ={"OCS_REDIS_CLUSTER": "true"})
    with pytest.raises(ConfigError, match="OCS_REDIS_WAIT_REPLICAS"):
        load_settings(environ={"OCS_REDIS_WAIT_REPLICAS": "-1"})


async def test_a_batch_unanswered_within_the_timeout_fails_and_the_next_reconnects(
    redis_url: str,
) -> None:
    import redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    wire = RedisWire(redis_url, timeout=0.2)
    assert await wire.execute_many([("PING",)]) == [b"PONG"]  # connected: sent at once
    with redis.Redis.from_url(redis_url) as admin:
        admin.execute_command("CLIENT", "PAUSE", 700, "ALL")  # Redis answers nobody
        sent = wire.send_now([("PING",)])
        assert sent is not None
        with pytest.raises(RedisConnectionError, match=r"did not answer within 0\.2 s"):
            await sent
        # The connection was closed: nothing more is written on it.
        assert wire.send_now([("PING",)]) is None
        assert admin.ping()  # answered once the pause is over
    assert await wire.execute_many([("PING",)]) == [b"PONG"]  # on a new connection
    await wire.close()
