"""`ocs serve --workers N`: several processes share the ports and stop together."""

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

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
