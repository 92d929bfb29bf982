"""The redis-py client of a process: a plain one on a standalone Redis, a cluster one on
Redis Cluster.

The hot path goes through the lean wire (ocs/balances/wire.py), which routes by
slot itself. Everything else that speaks to Redis through redis-py (the readiness
probe, the state sampler, ``ocs reconcile``, tests) takes a ``RedisClient``:
``redis.asyncio.cluster.RedisCluster`` routes each command by its key's slot,
follows MOVED and ASK, and finds the other nodes from the one named in the URL.
Both offer the same command methods and non-transactional pipelines, so code
that sends only single-slot commands runs on either.
"""

from typing import Any, TypeAlias
from urllib.parse import quote

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from ocs.balances.wire import RedisWire

RedisClient: TypeAlias = Redis | RedisCluster


def redis_client(url: str, *, cluster: bool, max_connections: int) -> RedisClient:
    """The redis-py client of ``url``: a cluster client when ``cluster`` is set."""
    if cluster:
        return RedisCluster.from_url(url, max_connections=max_connections)
    return Redis.from_url(url, max_connections=max_connections)


def wire_for(client: RedisClient, **options: Any) -> RedisWire:
    """A lean wire (its own connections) to the Redis ``client`` speaks to: the same
    server, database and credentials, or the same cluster. ``options`` go to
    ``RedisWire`` (``wait_replicas``, ``wait_timeout_ms``, ``migration_wait``)."""
    if isinstance(client, RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs
        seed = client.get_default_node() or next(iter(client.nodes_manager.startup_nodes.values()))
        host, port, db, path = seed.host, seed.port, 0, None
        connection_class = kwargs.get("connection_class")
    else:
        kwargs = client.connection_pool.connection_kwargs
        host, port = kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379)
        db, path = kwargs.get("db", 0), kwargs.get("path")
        connection_class = client.connection_pool.connection_class
    credentials = ""
    if kwargs.get("password") is not None:
        credentials = f"{quote(kwargs.get('username') or '', safe='')}:"
        credentials += f"{quote(kwargs['password'], safe='')}@"
    if path is not None:
        url = f"unix://{credentials}{quote(path)}?db={db}"
    else:
        tls = isinstance(connection_class, type) and issubclass(connection_class, SSLConnection)
        url = f"{'rediss' if tls else 'redis'}://{credentials}{host}:{port}/{db}"
    return RedisWire(url, cluster=isinstance(client, RedisCluster), **options)
