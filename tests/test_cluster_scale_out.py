"""Replicas waited for on a cluster that grows, and on one whose replica is still syncing.

With ``redis_wait_replicas = 1`` a write is acknowledged only once a replica of its
master has it. On a cluster of three masters without replicas, a fourth master is
added with a replica of its own (a scale-out) and a slot is moved to it:

- a write sent to the new master by ``ASK`` (the slot migrating, the new master in no
  slot map yet) or by ``MOVED`` (to a wire that never saw the new master) while its
  replica is paused is answered "unavailable" (``ReplicationUnconfirmed``): before,
  a master met by a redirection was taken to have no replica, and such a write was
  acknowledged without WAIT, to be lost if the new master then failed;
- a replica still in its first sync, which Redis 6.2 lists in ``CLUSTER SLOTS``, is
  not waited for (its master's ``INFO replication`` says it is not online): before,
  every write to that master was answered "unavailable" for the whole sync.
"""

import asyncio
from collections.abc import Iterator

import pytest

from ocs.balances.slots import key_slot
from ocs.balances.wire import RedisWire, ReplicationUnconfirmed, online_replicas
from tests.conftest import eventually
from tests.redis_cluster import Node, RedisClusterProcess

pytestmark = pytest.mark.cluster

# INFO replication of a master with three replicas: one online, one waiting for the
# background save its first sync needs, one receiving it.
SYNCING_INFO = (
    "# Replication\r\n"
    "role:master\r\n"
    "connected_slaves:3\r\n"
    "slave0:ip=10.0.0.2,port=7001,state=online,offset=1234,lag=0\r\n"
    "slave1:ip=10.0.0.3,port=7002,state=wait_bgsave,offset=0,lag=0\r\n"
    "slave2:ip=10.0.0.4,port=7003,state=send_bulk,offset=0,lag=0\r\n"
    "master_failover_state:no-failover\r\n"
    "master_repl_offset:1234\r\n"
)


@pytest.fixture(scope="module")
def growing_cluster() -> Iterator[RedisClusterProcess]:
    """Three masters without replicas, for this module alone (nodes are added here)."""
    cluster = RedisClusterProcess(masters=3)
    cluster.start()
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.alive:
                cluster.resume(node)  # a paused node would not stop on SIGTERM
        cluster.stop()


def test_only_online_replicas_are_counted() -> None:
    assert online_replicas(SYNCING_INFO) == 1
    assert online_replicas(SYNCING_INFO.encode()) == 1
    assert online_replicas("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n") == 0


def tagged_key(cluster: RedisClusterProcess, avoid: set[int], prefix: str) -> str:
    """A key whose slot a master other than the ones on the ports ``avoid`` serves."""
    n = 0
    while True:
        key = f"{{{prefix}{n}}}k"
        if cluster.node_of_slot(key_slot(key)).port not in avoid:
            return key
        n += 1


async def unconfirmed(wire: RedisWire, command: tuple[str, ...]) -> bool:
    """Whether the write is answered "unavailable" because no replica confirmed it."""
    try:
        await wire.execute_many([command])
    except ReplicationUnconfirmed:
        return True
    return False


async def test_a_write_redirected_to_a_new_master_waits_for_its_replica(
    growing_cluster: RedisClusterProcess,
) -> None:
    cluster = growing_cluster
    key = tagged_key(cluster, set(), "scale")
    slot = key_slot(key)
    asked = RedisWire(cluster.url, cluster=True, wait_replicas=1, wait_timeout_ms=100)
    moved = RedisWire(cluster.url, cluster=True, wait_replicas=1, wait_timeout_ms=100)
    try:
        # The slot's master has no replica: a write is not waited for.
        assert await asked.execute_many([("SET", key, "1")]) == [b"OK"]
        # A scale-out: a new master, no slot yet, with a replica of its own.
        new = cluster.add_node()
        replica = cluster.add_node(replica_of=new)
        # This wire's map read now: the slot is the old master's, the new one unknown.
        assert await moved.execute_many([("GET", key)]) == [b"1"]
        source = cluster.begin_migration(slot, new)
        assert cluster.migrate_keys(slot, source, new) == 1
        # Paused: still online for its master, but confirms nothing. What follows takes
        # less than the cluster's node timeout, so it is not yet marked failed.
        cluster.pause(replica)
        try:
            # Sent on by ASK to the new master, which no slot map lists yet.
            redirected_by_ask = await unconfirmed(asked, ("SET", key, "2"))
            cluster.end_migration(slot, new)
            # MOVED to a master this wire never met: waited for as well.
            assert await unconfirmed(moved, ("SET", key, "3"))
            assert redirected_by_ask
        finally:
            cluster.resume(replica)

        async def replicated() -> bool:
            await unconfirmed(moved, ("SET", key, "5"))
            with replica.client() as client:
                client.execute_command("READONLY")
                return client.get(key) == b"5"

        await eventually(replicated, what="writes reaching the resumed replica")
    finally:
        await asked.close()
        await moved.close()


async def test_a_replica_in_its_first_sync_is_not_waited_for(
    growing_cluster: RedisClusterProcess,
) -> None:
    cluster = growing_cluster
    master = cluster.masters()[0]
    key = tagged_key(cluster, {m.port for m in cluster.masters() if m.port != master.port}, "sync")
    with master.client() as client:
        # The replica's first sync waits (diskless, for more replicas to join): it stays
        # in wait_bgsave until the delay is lifted.
        client.config_set("repl-diskless-sync", "yes")
        client.config_set("repl-diskless-sync-delay", "60")
    syncing: Node | None = None
    wire = RedisWire(cluster.url, cluster=True, wait_replicas=1, wait_timeout_ms=50)
    try:
        syncing = cluster.add_node(replica_of=master, synced=False)

        async def listed_not_online() -> bool:
            with master.client() as client:
                states = [
                    value["state"]
                    for name, value in client.info("replication").items()
                    if name.startswith("slave")
                ]
                entry = next(
                    e for e in client.execute_command("CLUSTER", "SLOTS") if e[2][1] == master.port
                )
            return states == ["wait_bgsave"] and len(entry) - 3 == 1

        await eventually(listed_not_online, what="the syncing replica in the slot map")

        async def acknowledged() -> bool:
            # The first may be sent before the master's online replicas are read.
            return not await unconfirmed(wire, ("SET", key, "1"))

        # Not answered "unavailable" for the whole sync: the replica is not online yet.
        await eventually(acknowledged, within=5, what="a write acknowledged during the sync")
        assert await listed_not_online()
    finally:
        await wire.close()
        with master.client() as client:
            client.config_set("repl-diskless-sync-delay", "0")
    assert syncing is not None
    await asyncio.to_thread(cluster.wait_following, syncing, master)
