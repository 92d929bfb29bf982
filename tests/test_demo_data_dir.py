"""`ocs demo` on a data dir `ocs serve` made, stopped or running: refused with exit code 2
and one line naming the data dir, and nothing written to its stores (no demo plan, no
funded account 1001, no admin token). A data dir the demo made runs the demo again."""

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from ocs.balances import keys
from ocs.embedded import start_embedded_postgres, start_embedded_redis
from tests.embedded_helpers import Launch, child_env

# Long enough for a first start (initdb) and a cold compile cache; a refusal comes in
# seconds.
DEMO_WITHIN_S = 90.0


def _demo_outcome(launch: Launch, data_dir: Path, env: dict[str, str]) -> tuple[int | None, str]:
    """Run ``ocs demo --data-dir DATA_DIR`` until it exits or serves: (its exit code, its
    stderr), the exit code None for a demo that served (it is then stopped)."""
    demo = launch("demo", data_dir, env=env)
    deadline = time.monotonic() + DEMO_WITHIN_S
    while time.monotonic() < deadline:
        code = demo.proc.poll()
        if code is not None:
            assert demo.stdout() == "", demo.stdout()
            return code, demo.stderr()
        if "ocs invoices show" in demo.stdout():
            demo.cleanup()
            return None, demo.stderr()
        time.sleep(0.05)
    pytest.fail(f"the demo neither exited nor served in {DEMO_WITHIN_S:.0f}s:\n{demo.stderr()}")


def _refusal(stderr: str) -> str:
    """The refusal's line: the last one (the store line of the log comes before)."""
    return stderr.strip().splitlines()[-1]


def _what_the_store_holds(data_dir: Path) -> dict[str, Any]:
    """Plans, accounts and API token names in the embedded PostgreSQL of ``data_dir``, and
    whether its embedded Redis holds account 1001 (both started for it, stopped again)."""
    postgres = start_embedded_postgres(data_dir)
    try:

        async def fetch() -> dict[str, Any]:
            conn = await asyncpg.connect(postgres.url)
            try:
                return {
                    "plans": [r["id"] for r in await conn.fetch("SELECT id FROM plans")],
                    "accounts": [r["id"] for r in await conn.fetch("SELECT id FROM accounts")],
                    "tokens": [r["name"] for r in await conn.fetch("SELECT name FROM api_tokens")],
                }
            finally:
                await conn.close()

        held = asyncio.run(fetch())
    finally:
        postgres.stop()
    server = start_embedded_redis(data_dir)
    try:
        client = redis.Redis.from_url(server.url)
        try:
            held["redis 1001"] = bool(client.exists(keys.account("1001")))
        finally:
            client.close()
    finally:
        server.stop()
    return held


def _serve_env(data_root: Path) -> dict[str, str]:
    """A newcomer's environment: no OCS_* variable, so `ocs serve` makes its bootstrap
    admin token and writes it to its data dir, as in production."""
    env = child_env(data_root / "xdg")
    env.pop("OCS_ADMIN_BOOTSTRAP_TOKEN")
    return env


def test_the_demo_on_a_data_dir_serve_made_is_refused_and_writes_nothing(
    data_root: Path, launch: Launch
) -> None:
    data_dir = data_root / "prod"
    env = _serve_env(data_root)
    serve = launch("serve", data_dir, env=env)
    serve.wait_healthy()
    code, _seconds = serve.terminate()
    assert code == 0, serve.stderr()
    before = _what_the_store_holds(data_dir)
    assert before == {"plans": [], "accounts": [], "tokens": ["bootstrap"], "redis 1001": False}

    code, stderr = _demo_outcome(launch, data_dir, env)
    assert code == 2, stderr
    line = _refusal(stderr)
    assert line.startswith(f"ocs: demo refused: the data dir {data_dir} holds stores the demo"), (
        line
    )
    assert "pepper, bootstrap-admin-token, database tables: " in line, line
    assert "`ocs serve`" in line and "--use-configured-stores" in line, line
    assert _what_the_store_holds(data_dir) == before
    assert not (data_dir / "demo-store").exists()


def test_the_demo_on_a_running_servers_data_dir_is_refused_and_writes_nothing(
    data_root: Path, launch: Launch
) -> None:
    data_dir = data_root / "live"
    env = _serve_env(data_root)
    serve = launch("serve", data_dir, env=env)
    serve.wait_healthy()

    code, stderr = _demo_outcome(launch, data_dir, env)
    assert code == 2, stderr
    line = _refusal(stderr)
    assert line.startswith(f"ocs: demo refused: the data dir {data_dir} is in use by a running"), (
        line
    )
    assert f"(process {serve.proc.pid}: ocs serve)" in line, line
    # The server still serves, and its stores hold none of the demo's data.
    serve.wait_healthy()
    code, _seconds = serve.terminate()
    assert code == 0, serve.stderr()
    assert _what_the_store_holds(data_dir) == {
        "plans": [],
        "accounts": [],
        "tokens": ["bootstrap"],
        "redis 1001": False,
    }


def test_a_data_dir_the_demo_made_runs_the_demo_again(data_root: Path, launch: Launch) -> None:
    data_dir = data_root / "demo"
    env = _serve_env(data_root)
    for _run in range(2):
        code, stderr = _demo_outcome(launch, data_dir, env)
        assert code is None, stderr
    assert (data_dir / "demo-store").is_file()
