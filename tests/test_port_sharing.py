"""One port, one server: a taken port stops a second `ocs serve`, workers die with their parent.

Field trials found a second `ocs serve` (another directory, so another database)
silently binding the same ports through SO_REUSEPORT and taking half the live
traffic, and `--workers` children of a SIGKILLed parent serving on as orphans.
Now the ports are bound once, without SO_REUSEPORT; `--workers N` hands the
parent's sockets to its workers, and workers stop when the parent dies.
"""

import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ocs.config import Settings, with_overrides
from ocs.listen_sockets import AddressInUse, bind_all
from tests.serve_process import (
    ServeProcess,
    free_port,
    gone,
    health,
    kill_if_running,
    listening_inodes,
    serve_env,
    socket_inodes,
)

UDP = socket.SOCK_DGRAM


def _ports() -> tuple[int, int, int]:
    return free_port(), free_port(UDP), free_port(UDP)


def _malformed_drops(port: int) -> float:
    """ocs_radius_dropped_total{reason="malformed"} over all workers, from /metrics."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ocs_radius_dropped_total" and sample.labels.get("reason") == "malformed"
    )


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ServeProcess]]:
    """Every `ocs serve` a test starts, stopped at its end (also when it fails)."""
    children: list[ServeProcess] = []
    yield children
    for child in children:
        child.stop()


def test_the_listening_sockets_refuse_to_be_shared(settings: Settings) -> None:
    first = bind_all(
        with_overrides(settings, radius_host="127.0.0.1", radius_auth_port=0, radius_acct_port=0)
    )
    try:
        ports = first.ports()
        for sock in first.all():
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        taken_http = with_overrides(settings, http_port=ports["http_port"], radius_enabled=False)
        with pytest.raises(AddressInUse, match=r"http_port: address in use: 127\.0\.0\.1:"):
            bind_all(taken_http)
        # The RADIUS ports too, UDP though they are: a second socket would split the NAS
        # traffic between two processes.
        taken_acct = with_overrides(
            settings,
            radius_host="127.0.0.1",
            radius_auth_port=0,
            radius_acct_port=ports["radius_acct_port"],
        )
        with pytest.raises(AddressInUse, match="radius_acct_port: address in use"):
            bind_all(taken_acct)
        # The failed attempt left nothing bound behind: its HTTP port 0 socket is closed.
    finally:
        first.close()
    # Released on close: the same ports can be bound again at once.
    again = bind_all(
        with_overrides(
            settings,
            http_port=ports["http_port"],
            radius_host="127.0.0.1",
            radius_auth_port=ports["radius_auth_port"] or 0,
            radius_acct_port=ports["radius_acct_port"] or 0,
        )
    )
    again.close()


def test_a_second_server_on_taken_ports_exits_2_naming_the_address(
    settings: Settings, tmp_path: Path, started: list[ServeProcess]
) -> None:
    env = serve_env(settings)
    http, auth, acct = _ports()
    first = ServeProcess(
        http_port=http,
        auth_port=auth,
        acct_port=acct,
        env=env,
        data_dir=tmp_path / "first",
        log=tmp_path / "first.log",
    )
    started.append(first)
    first.wait_ready()

    # Started "from another directory": its own data dir, same ports.
    attempts = {
        "same HTTP port": dict(http_port=http, auth_port=free_port(UDP), acct_port=free_port(UDP)),
        "same RADIUS auth port": dict(http_port=free_port(), auth_port=auth, acct_port=acct),
        "same HTTP port, --workers 2": dict(
            http_port=http,
            auth_port=free_port(UDP),
            acct_port=free_port(UDP),
            extra_args=("--workers", "2"),
        ),
    }
    for what, ports in attempts.items():
        log = tmp_path / f"second-{len(started)}.log"
        second = ServeProcess(env=env, data_dir=tmp_path / "second", log=log, **ports)
        started.append(second)
        assert second.wait_exit() == 2, f"{what}: {second.log_tail()}"
        lines = [line for line in log.read_text().splitlines() if "address in use" in line]
        assert len(lines) == 1, f"{what}: {second.log_tail()}"
        port = ports["http_port"] if "HTTP" in what else auth
        assert f"127.0.0.1:{port}" in lines[0], lines

    # The first server kept its ports to itself and still answers.
    assert len(listening_inodes(http, "tcp")) == 1
    answer = health(http)
    assert answer is not None and answer["pid"] == first.pid


def test_workers_serve_on_their_parents_sockets_and_stop_when_it_is_killed(
    settings: Settings, tmp_path: Path, started: list[ServeProcess]
) -> None:
    http, auth, acct = _ports()
    parent = ServeProcess(
        http_port=http,
        auth_port=auth,
        acct_port=acct,
        env=serve_env(settings),
        data_dir=tmp_path / "var",
        log=tmp_path / "serve.log",
        extra_args=("--workers", "2"),
    )
    started.append(parent)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline:
            parent.wait_ready()
            answer = health(http)  # a new connection each time: either worker may take it
            if answer is not None:
                workers.add(answer["pid"])
        assert len(workers) == 2, parent.log_tail()

        # One bind: a single listening socket per port, which parent and workers share.
        for port, proto in ((http, "tcp"), (auth, "udp"), (acct, "udp")):
            inodes = listening_inodes(port, proto)
            assert len(inodes) == 1, (port, proto, inodes)
            for pid in (parent.pid, *workers):
                assert inodes <= socket_inodes(pid), (pid, port, proto)

        # The workers read RADIUS from the inherited sockets: runts are counted as drops.
        with socket.socket(socket.AF_INET, UDP) as nas:
            for _ in range(4):
                nas.sendto(b"runt", ("127.0.0.1", auth))
        deadline = time.monotonic() + 30
        while _malformed_drops(http) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _malformed_drops(http) == 4

        # kill -9 of the parent: no orphan keeps serving on the port.
        os.kill(parent.pid, signal.SIGKILL)
        parent.proc.wait()
        deadline = time.monotonic() + 60
        while not all(gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(gone(pid) for pid in workers), parent.log_tail()
        assert "parent process gone; stopping this worker" in parent.log_tail(20_000)
        assert listening_inodes(http, "tcp") == set()
        assert listening_inodes(auth, "udp") == set()

        # So a restarted server gets the ports, and no more processes than it asked for.
        again = ServeProcess(
            http_port=http,
            auth_port=auth,
            acct_port=acct,
            env=serve_env(settings),
            data_dir=tmp_path / "var",
            log=tmp_path / "again.log",
        )
        started.append(again)
        assert again.wait_ready()["pid"] == again.pid
        assert len(listening_inodes(http, "tcp")) == 1
    finally:
        for pid in workers:
            kill_if_running(pid)
