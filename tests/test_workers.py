"""`ocs serve --workers N`: several processes share the ports and stop together."""

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ocs import workers
from ocs.config import Settings
from ocs.runtime import open_runtime
from tests.conftest import reset_state
from tests.ports import free_port
from tests.serve_process import ServeProcess, serve_env

ANSWERED = {"healthz": 0}


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
            body = json.loads(reply.read())
    except OSError:
        return None
    ANSWERED["healthz"] += 1
    return body


def _healthz_count(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ocs_http_requests_total" and sample.labels.get("endpoint") == "/healthz"
    )


def _pids_answering(port: int, want: int, within: float) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + within
    while len(seen) < want and time.monotonic() < deadline:
        health = _health(port)  # a new connection each time: the kernel spreads them
        if health is not None:
            seen.add(health["pid"])
    return seen


def test_two_workers_answer_and_stop_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    env.update(
        {
            "OCS_REDIS_URL": settings.redis_url or "",
            "OCS_DATABASE_URL": settings.database_url or "",
            "OCS_PEPPER_FILE": str(settings.pepper_file),
        }
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocs",
            "serve",
            "--workers",
            "2",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(port),
            "--radius-host",
            "127.0.0.1",
            "--radius-auth-port",
            str(free_port()),
            "--radius-acct-port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "var"),
            "--log-format",
            "text",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("wb"),
    )
    try:
        pids = _pids_answering(port, want=2, within=60)
        assert len(pids) == 2, (tmp_path / "serve.log").read_text()[-3000:]
        assert parent.pid not in pids
        # Whichever worker a scrape reaches, /metrics counts the requests of all of them.
        # (Counted from now: a probe that gave up while the workers were starting
        # stayed queued on the parent's socket and was answered later.)
        before = _healthz_count(port)
        answered = ANSWERED["healthz"]
        for _ in range(10):
            _health(port)
        assert _healthz_count(port) - before == ANSWERED["healthz"] - answered

        # A worker that dies is replaced.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        newcomers: set[int] = set()
        while not newcomers and time.monotonic() < deadline:
            health = _health(port)
            if health is not None and health["pid"] not in pids:
                newcomers.add(health["pid"])
        assert newcomers, "the killed worker was not replaced"
        replaced = pids | newcomers

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 0
        for pid in replaced - {victim}:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            # A zombie of a reaped child is gone for our purposes; a live one is not.
            status = Path(f"/proc/{pid}/status").read_text()
            assert "zombie" in status.lower(), f"worker {pid} still running"
        assert _health(port) is None
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_workers_with_a_wrong_pepper_stop_the_start_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    """The pepper was checked only in the workers, which exited 2 and were started again
    every second, for ever: the parent checks it (decision 0054) before any starts."""

    async def record_the_deployments_pepper() -> None:
        async with open_runtime(settings):
            pass

    asyncio.run(reset_state(settings.redis_url or "", settings.database_url or ""))
    asyncio.run(record_the_deployments_pepper())
    another = tmp_path / "another-pepper"
    another.write_text(secrets.token_hex(32))
    server = ServeProcess(
        http_port=free_port(),
        auth_port=free_port(),
        acct_port=free_port(),
        env=serve_env(settings, {"OCS_PEPPER_FILE": str(another)}),
        data_dir=tmp_path / "var",
        log=tmp_path / "serve.log",
        extra_args=["--workers", "2"],
    )
    try:
        assert server.wait_exit(within=60) == 2
        log = server.log_tail()
        assert "ocs: configuration error: pepper_file: " in log and "is not the pepper" in log
        assert "workers started" not in log, log
    finally:
        server.stop()


def _restart_delays(log: str) -> list[float]:
    """The waits the parent's restart lines announce, in order."""
    return [
        float(found)
        for line in log.splitlines()
        if "process exited; restarting it" in line
        for found in re.findall(r"restart_in_s=([0-9.]+)", line)
    ]


async def _store_a_nas_client_no_worker_can_load(database_url: str) -> None:
    """A stored NAS client whose number translation is not JSON: every serving worker
    fails while loading the client table, after the parent's own checks passed."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO nas_clients (name, network, secret, translation)"
            " VALUES ('broken', '10.99.0.0/24', 's3cret', 'not json')"
        )
    finally:
        await conn.close()


def test_workers_that_never_become_ready_make_the_parent_give_up(
    settings: Settings, tmp_path: Path
) -> None:
    """Such workers were started again every second for ever, and the parent never
    exited: now the waits double and, after worker_start_attempts exits in a row with
    none ever ready, the parent stops and exits 1 with one line (ocs.restarts)."""

    async def migrate_then_break() -> None:
        async with open_runtime(settings):
            pass
        await _store_a_nas_client_no_worker_can_load(settings.database_url or "")

    asyncio.run(reset_state(settings.redis_url or "", settings.database_url or ""))
    asyncio.run(migrate_then_break())
    server = ServeProcess(
        http_port=free_port(),
        auth_port=free_port(socket.SOCK_DGRAM),
        acct_port=free_port(socket.SOCK_DGRAM),
        env=serve_env(settings, {"OCS_WORKER_START_ATTEMPTS": "3"}),
        data_dir=tmp_path / "var",
        log=tmp_path / "serve.log",
        extra_args=["--workers", "2"],
    )
    try:
        assert server.wait_exit(within=120) == 1
        log = server.log_tail(200_000)
        assert "workers started" in log, log[-4000:]
        last = log.strip().splitlines()[-1]
        assert re.fullmatch(
            r"ocs: worker never became ready: exited 3 times in a row \(last: exit code \d+\);"
            r" stopped \(the log above says why\)",
            last,
        ), log[-4000:]
        # Two workers, three starts each at most: waits of 1 s, then 2 s, never more.
        delays = _restart_delays(log)
        assert 1.0 in delays and 2.0 in delays, log[-4000:]
        assert set(delays) == {1.0, 2.0} and len(delays) <= 4, delays
        assert delays.index(1.0) < delays.index(2.0)
        assert "exit_status=exit code" in log
    finally:
        server.stop()
        asyncio.run(reset_state(settings.redis_url or "", settings.database_url or ""))


@pytest.mark.parametrize("worker_exit", [2, 1])
def test_a_parent_whose_workers_exit_2_gives_up_with_2_for_its_unit_not_to_restart_it(
    ocs: Any, monkeypatch: pytest.MonkeyPatch, worker_exit: int
) -> None:
    """Workers refused by what no restart fixes (exit 2) made the parent exit 1, which
    the unit restarts (RestartPreventExitStatus=2) into the same refusal for ever: the
    parent says the workers' 2. A transient failure (1) stays 1."""
    monkeypatch.setenv("OCS_WORKER_START_ATTEMPTS", "2")
    monkeypatch.setenv("OCS_RADIUS_ENABLED", "false")
    monkeypatch.setenv("OCS_HTTP_PORT", "0")
    # Each worker, once the parent's own checks (ports, stores, pepper, migrations)
    # passed, refused at its start with ``worker_exit``.
    worker = [sys.executable, "-c", f"raise SystemExit({worker_exit})"]
    monkeypatch.setattr(workers, "_worker_argv", lambda argv: worker)
    code, out, err = ocs("serve", "--workers", "2")
    assert (code, out) == (worker_exit, None), err
    assert err.strip().splitlines()[-1] == (
        f"ocs: worker never became ready: exited 2 times in a row (last: exit code"
        f" {worker_exit}); stopped (the log above says why)"
    )


def _metrics_dir(worker_pid: int) -> Path:
    """The metrics directory the parent gave its workers (read from a worker's environment)."""
    environ = Path(f"/proc/{worker_pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError(f"worker {worker_pid} has no metrics directory")


def _newcomer(port: int, known: set[int], within: float = 90) -> int:
    """The pid of a worker answering /healthz that is none of ``known``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        health = _health(port)
        if health is not None and health["pid"] not in known:
            return int(health["pid"])
    raise AssertionError("the killed worker was not replaced")


def test_a_worker_that_was_ready_is_restarted_whatever_the_count(
    settings: Settings, tmp_path: Path
) -> None:
    """Giving up is for workers that never came up: one killed after it served is
    started again, with growing waits, past worker_start_attempts; and its metric
    files are folded into the dead processes' ones (its counts kept)."""
    asyncio.run(reset_state(settings.redis_url or "", settings.database_url or ""))
    port = free_port()
    server = ServeProcess(
        http_port=port,
        auth_port=free_port(socket.SOCK_DGRAM),
        acct_port=free_port(socket.SOCK_DGRAM),
        env=serve_env(settings, {"OCS_WORKER_START_ATTEMPTS": "2"}),
        data_dir=tmp_path / "var",
        log=tmp_path / "serve.log",
        extra_args=["--workers", "2"],
    )
    try:
        pids = _pids_answering(port, want=2, within=120)
        assert len(pids) == 2, server.log_tail()
        metrics_dir = _metrics_dir(min(pids))
        victim = min(pids)
        before, answered = _healthz_count(port), ANSWERED["healthz"]
        seen = set(pids)
        for _ in range(2):  # twice the same slot: its second exit in a row
            assert list(metrics_dir.glob(f"*_{victim}.db")), "no metric files of the worker"
            os.kill(victim, signal.SIGKILL)
            victim = _newcomer(port, seen)
            seen.add(victim)
        assert server.proc.poll() is None, server.log_tail()
        log = server.log_tail(200_000)
        assert _restart_delays(log) == [1.0, 2.0], log[-4000:]
        assert log.count("exit_status=killed by SIGKILL") == 2
        # The dead workers' files are gone, and every request answered is still counted,
        # theirs included.
        for dead in seen - {victim, max(pids)}:
            assert not list(metrics_dir.glob(f"*_{dead}.db")), sorted(metrics_dir.iterdir())
        assert (metrics_dir / "counter_dead.db").exists()
        assert _healthz_count(port) - before >= ANSWERED["healthz"] - answered
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit() == 0
    finally:
        server.stop()
