"""Helpers for tests that run `ocs serve`, `ocs demo` and other commands as a newcomer
does: real child processes on embedded servers under their own data dirs.

Not a test module, and it imports nothing of the tests but tests/ports.py, so
tests/conftest.py can build its ``data_root`` and ``launch`` fixtures on it. A child
gets no OCS_* variable but the admin token (``child_env``); ``OcsProcess`` is one
child, and its ``cleanup`` stops the embedded servers a dead child left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.ports import free_port

READY_TIMEOUT_S = 60.0  # the first start of a data dir runs initdb
EXIT_TIMEOUT_S = 30.0  # staged shutdown: drain (10 s at most) + ledger writer + servers
CLI_TIMEOUT_S = 60.0

# A one-line deck the tests import into a plan of a running child.
DECK = (
    "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    "447,UK Mobile,0.060,0.150,30,6\n"
)

# The first start stores it as the admin token (admin_bootstrap_token): the admin API
# needs one by default.
ADMIN_TOKEN = "serve-embedded-test-admin-token"

# No proxy may sit between the tests and 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def child_env(xdg_data_home: Path | None = None) -> dict[str, str]:
    """The test's environment: no OCS_* variable but the admin token, and its own XDG data.

    ``XDG_DATA_HOME`` is where the default data dir and the registry of running embedded
    stores live: a test's own keeps its children away from the real ~/.local/share/ocs and
    from the stores of tests running beside it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env["OCS_ADMIN_BOOTSTRAP_TOKEN"] = ADMIN_TOKEN
    if xdg_data_home is not None:
        env["XDG_DATA_HOME"] = str(xdg_data_home)
    return env


def api_request(
    method: str, url: str, payload: Any = None, *, body: bytes | None = None, token: str = ""
) -> tuple[int, Any]:
    """A request to a child's HTTP API with a bearer token (``ADMIN_TOKEN`` unless given):
    ``payload`` as JSON or ``body`` as CSV; (status, the JSON answer)."""
    headers = {"Authorization": f"Bearer {token or ADMIN_TOKEN}"}
    if payload is not None:
        body = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    elif body is not None:
        headers["Content-Type"] = "text/csv"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _pid_from(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    # A standalone backend (initdb) writes its pid negated into postmaster.pid.
    return pid if pid > 0 else None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def embedded_pids(data_dir: Path) -> dict[str, int]:
    """Live embedded redis-server / postmaster processes of ``data_dir``, by name."""
    found = {}
    for name, pid_file in (
        ("redis", data_dir / "redis" / "redis.pid"),
        ("postgres", data_dir / "postgres" / "postmaster.pid"),
    ):
        pid = _pid_from(pid_file)
        if pid is not None and _alive(pid):
            found[name] = pid
    return found


def _stop_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except psutil.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(psutil.TimeoutExpired):
                proc.wait(5)


def _reap_embedded(data_dir: Path) -> None:
    """Stop embedded servers a dead or killed ocs left behind (failure paths only)."""
    pids = embedded_pids(data_dir)
    if "redis" in pids:
        _stop_pid(pids["redis"], signal.SIGTERM)  # redis flushes its AOF on SIGTERM
    if "postgres" in pids:
        _stop_pid(pids["postgres"], signal.SIGINT)  # postmaster "fast" shutdown


class OcsProcess:
    """One `python -m ocs serve|demo` child with its stdout and stderr in files."""

    def __init__(
        self,
        command: str,
        data_dir: Path,
        logs: Path,
        tag: str,
        *,
        env: dict[str, str],
        pass_data_dir: bool = True,
        cwd: Path | None = None,
    ) -> None:
        """Start it; with ``pass_data_dir`` False it runs on the default data dir, which
        must then be ``data_dir`` ($XDG_DATA_HOME/ocs of ``env``)."""
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stdout_path = logs / f"{tag}.stdout"
        self.stderr_path = logs / f"{tag}.stderr"
        argv = [
            sys.executable,
            "-m",
            "ocs",
            command,
            *(["--data-dir", str(data_dir)] if pass_data_dir else []),
            "--http-port",
            str(self.port),
            "--http-host",
            "127.0.0.1",
            # Free RADIUS ports: tests may run beside another ocs on 1812/1813.
            "--radius-host",
            "127.0.0.1",
            "--radius-auth-port",
            "0",
            "--radius-acct-port",
            "0",
            "--log-format",
            "text",
        ]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd
            )

    def stdout(self) -> str:
        """What the child wrote to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        """What the child wrote to stderr (its log) so far."""
        return self.stderr_path.read_text(errors="replace")

    def wait_healthy(self) -> dict[str, Any]:
        """Poll /healthz until it answers 200 (its body); fails the test if the child exits
        first or is not healthy within ``READY_TIMEOUT_S``."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"ocs exited with {self.proc.returncode} before /healthz:\n{self.stderr()}"
                )
            try:
                status, body = api_request("GET", f"{self.base}/healthz")
                if status == 200:
                    return body
                last = (status, body)
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.05)
        pytest.fail(f"/healthz not 200 within {READY_TIMEOUT_S:.0f}s ({last!r}):\n{self.stderr()}")

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds to exit). Fails if it does not exit in time."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ocs did not exit {EXIT_TIMEOUT_S:.0f}s after SIGTERM:\n{self.stderr()}")
        return code, time.monotonic() - started

    def cleanup(self) -> None:
        """Stop the child if it still runs, then any embedded server it left behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _reap_embedded(self.data_dir)


# The ``launch`` fixture (tests/conftest.py): launch(command, data_dir, *, env=None,
# pass_data_dir=True, cwd=None) starts one child.
Launch = Callable[..., OcsProcess]
