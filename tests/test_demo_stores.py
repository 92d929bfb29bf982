"""`ocs demo` writes only into stores of its own: stores holding nothing, or nothing but
the demo's data. On a production database (OCS_* URLs left in the environment) it stops
with one line naming why and the override, having written nothing; with the override,
no billing worker drafts and posts the other plans' runs, and its invoice takes a number
of its own sequence, never the real INV one."""

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ocs.balances import keys
from ocs.charging.values import AuthorizeRequest
from ocs.config import Settings
from ocs.demo import (
    BILLING_ACCOUNT,
    DEMO_ACCOUNT_IDS,
    DEMO_PLAN_IDS,
    load_demo_data,
    run_demo,
)
from ocs.demo_stores import other_redis_data
from ocs.embedded import start_embedded_postgres
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, monthly
from tests.conftest import eventually, with_database
from tests.embedded_helpers import child_env


@pytest.fixture
async def empty_database(backend_urls: tuple[str, str]) -> AsyncIterator[str]:
    """The URL of a new PostgreSQL database holding nothing (not migrated), dropped after."""
    admin_url = backend_urls[1]
    name = f"ocs_demo_empty_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield with_database(admin_url, name)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def _demo_settings(settings: Settings) -> Settings:
    """The test backends, without RADIUS and the janitor (not what these tests look at)."""
    return dataclasses.replace(settings, radius_enabled=False, run_janitor=False)


async def _a_real_customer(services: Services) -> None:
    """A production-like plan billed monthly since January, one account subscribed with a
    10.00 rent: a billing worker would draft and post a run for every month since."""
    await billed_plan(services, effective=date(2026, 1, 1))
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "7001", "rent", date(2026, 1, 1), balance=50 * EUR)


async def _run_until_printed(settings: Settings, capsys: Any, **options: bool) -> str:
    """Run the demo until it printed the command showing its invoice; what it printed."""
    stopping = asyncio.Event()
    task = asyncio.create_task(run_demo(_demo_settings(settings), stopping, **options))
    printed = ""

    async def shown() -> bool:
        nonlocal printed
        printed += capsys.readouterr().out
        assert not task.done(), task.exception() if task.done() else None
        return "ocs invoices show" in printed

    try:
        await eventually(shown, within=90, what="the demo's billing command")
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=30)
    return printed


async def test_the_demo_on_a_database_with_other_data_exits_2_and_writes_nothing(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    await _a_real_customer(services)
    env = child_env(tmp_path / "xdg")
    env.pop("OCS_ADMIN_BOOTSTRAP_TOKEN")
    env.update(
        OCS_REDIS_URL=settings.redis_url or "",
        OCS_DATABASE_URL=settings.database_url or "",
        OCS_PEPPER_FILE=str(settings.pepper_file),
        OCS_DATA_DIR=str(tmp_path / "var"),
        OCS_RADIUS_ENABLED="false",
    )
    argv = [sys.executable, "-m", "ocs", "demo", "--http-port", "0"]
    done = await asyncio.to_thread(
        subprocess.run,
        argv,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ocs: demo refused: PostgreSQL "), lines[0]
    assert "(plans: 1, accounts: 1)" in lines[0], lines[0]
    assert "--use-configured-stores" in lines[0], lines[0]
    async with services.pool.acquire() as conn:
        assert [r["id"] for r in await conn.fetch("SELECT id FROM plans")] == ["retail"]
        assert await conn.fetchval("SELECT count(*) FROM api_tokens") == 0
        assert await conn.fetchval("SELECT count(*) FROM invoice_runs") == 0
    assert (await services.accounts.show("7001")).balance == 50 * EUR
    assert not (tmp_path / "var").exists()


async def test_with_the_override_no_run_of_another_plan_is_made_or_posted(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await _a_real_customer(services)
    printed = await _run_until_printed(settings, capsys, use_configured_stores=True)
    assert "No billing worker runs beside this demo" in printed, printed
    async with services.pool.acquire() as conn:
        runs = await conn.fetch("SELECT plan_id, state, posted_at FROM invoice_runs")
        numbers = await conn.fetch("SELECT account_id, number FROM invoices")
    # The demo's own run only: none of retail's nine months drafted, none posted.
    assert [r["plan_id"] for r in runs] == ["demo-monthly"]
    assert len(numbers) == 1 and numbers[0]["account_id"] == BILLING_ACCOUNT, numbers
    assert re.fullmatch(r"DEMO-\d{4}-000001", numbers[0]["number"])
    assert (await services.accounts.show("7001")).balance == 50 * EUR


async def test_a_second_demo_on_its_own_stores_runs_again(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await _run_until_printed(settings, capsys)
    # Its own plans, accounts, run, invoice and tokens are the demo's: not refused.
    again = await _run_until_printed(settings, capsys)
    shown = re.findall(r"ocs invoices show (\d+)", first + again)
    assert len(shown) == 2 and shown[0] == shown[1], shown
    assert "No billing worker" not in first + again


def test_a_database_url_in_the_environment_is_what_the_refusal_names() -> None:
    # The refusal names where the demo would have written, without its password.
    from ocs.demo import refusal

    settings = Settings(database_url="postgresql://ocs:s3cret@db.example:5432/ocs")
    text = str(refusal(settings, ["plans: 2"]))
    assert "db.example:5432" in text and "s3cret" not in text
    assert os.linesep not in text


async def test_what_in_redis_is_not_the_demos_is_counted_by_kind(services: Services) -> None:
    await load_demo_data(services)
    redis = services.redis
    # The demo's own accounts, their ledger entries and a process's own keys: nothing.
    assert await redis.xlen(keys.ledger(keys.bucket_of("1001"))) > 0
    await redis.set(keys.live_state_sample(), "{}")
    assert await other_redis_data(redis, DEMO_ACCOUNT_IDS, DEMO_PLAN_IDS) == []

    await redis.hset(keys.account("7001"), mapping={"balance": 1, "plan": "retail"})
    await redis.hset(keys.live_calls("7001"), "c1", b"x")
    await redis.xadd(keys.ledger(5), {"kind": "topup", "account": "7001", "amount": "1"})
    await redis.zadd(keys.call_expiry(9), {keys.expiry_member("7002", "c2"): 1})
    await redis.set(keys.pin_ref("digest"), "7003")
    await redis.set(keys.member_ref("alice"), "1001")  # a member of the demo's: its own
    await redis.set(keys.card_batch("b1"), "token")
    await redis.set(keys.counter_cycle_run("2026-12", None, None), 1)
    await redis.set(keys.counter_cycle_opened("demo-monthly"), "2026-12")
    found = await other_redis_data(redis, DEMO_ACCOUNT_IDS, DEMO_PLAN_IDS)
    assert sorted(found) == [
        "accounts: 1",  # 7001: its balance and its live calls
        "counter cycles: 1",
        "ledger entries: 1",
        "live calls: 1",
        "other keys: 1",  # the card batch
        "references: 1",  # the PIN of 7003
    ]


async def _live_call_of_another_account(services: Services) -> str:
    """A production account on a production Redis: 7001, funded, one call live, its
    ledger entries not yet written to PostgreSQL. The call's id."""
    await _a_real_customer(services)
    await services.catalog.reload()
    call_id = "prod-call-1"
    granted = await services.calls.authorize(
        AuthorizeRequest("7001", "4930123456", call_id=call_id)
    )
    assert granted.max_duration > 0
    return call_id


async def _ledger_length(services: Services) -> int:
    """Entries in every ledger stream of the Redis."""
    return sum([await services.redis.xlen(key) for key in keys.all_ledgers()])


def _demo_until_it_exits(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a demo expected to stop at once; one still running
    after a minute is stopped with SIGINT (its exit code then is not 2)."""
    child = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    return child.returncode, out, err


async def test_a_demo_on_a_redis_with_other_data_is_refused_and_takes_nothing(
    services: Services, settings: Settings, tmp_path: Path, empty_database: str
) -> None:
    # PostgreSQL is new and empty; only Redis is a deployment's.
    call_id = await _live_call_of_another_account(services)
    entries = await _ledger_length(services)
    assert entries > 0
    env = child_env(tmp_path / "xdg")
    env.update(
        OCS_REDIS_URL=settings.redis_url or "",
        OCS_DATABASE_URL=empty_database,
        OCS_PEPPER_FILE=str(settings.pepper_file),
        OCS_DATA_DIR=str(tmp_path / "var"),
        OCS_RADIUS_ENABLED="false",
    )
    argv = [sys.executable, "-m", "ocs", "demo", "--http-port", "0"]
    code, out, err = await asyncio.to_thread(_demo_until_it_exits, argv, env, tmp_path)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    # The URL as configured: a TCP one here, a socket's where the suite runs its own Redis.
    redis_url = settings.redis_url or ""
    assert lines[0].startswith(f"ocs: demo refused: Redis {redis_url.split('?')[0]}"), lines[0]
    assert "holds data that is not the demo's" in lines[0], lines[0]
    assert "(accounts: 1" in lines[0] and "ledger entries: " in lines[0], lines[0]
    assert "--use-configured-stores" in lines[0], lines[0]
    # Nothing read from the ledger, no call closed, no account taken over.
    assert await _ledger_length(services) == entries
    assert call_id.encode() in await services.redis.hkeys(keys.live_calls("7001"))
    assert not await services.redis.exists(keys.account("1001"))
    # Nothing written to the new PostgreSQL: not even migrated.
    conn = await asyncpg.connect(empty_database)
    try:
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        assert await conn.fetchval(tables) == 0
    finally:
        await conn.close()
    assert not (tmp_path / "var").exists()


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``ocs ARGS`` as a child process; done within a minute."""
    return subprocess.run(
        [sys.executable, "-m", "ocs", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _embedded_value(data_dir: Path, query: str) -> Any:
    """``query``'s one value in the embedded PostgreSQL of ``data_dir`` (started for it,
    stopped again)."""
    server = start_embedded_postgres(data_dir)
    try:

        async def fetch() -> Any:
            conn = await asyncpg.connect(server.url)
            try:
                return await conn.fetchval(query)
            finally:
                await conn.close()

        return asyncio.run(fetch())
    finally:
        server.stop()


def test_a_refused_demo_on_embedded_stores_migrates_nothing_and_makes_no_pepper(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "d"
    env = child_env(tmp_path / "xdg")
    made = _cli(
        ["plans", "create", "gold", "--currency", "EUR", "--data-dir", str(data_dir)],
        env,
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    migrations = _embedded_value(data_dir, "SELECT count(*) FROM schema_migrations")
    argv = [sys.executable, "-m", "ocs", "demo", "--http-port", "0", "--data-dir", str(data_dir)]
    env["OCS_RADIUS_ENABLED"] = "false"
    code, out, err = _demo_until_it_exits(argv, env, tmp_path)
    assert code == 2, err
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"ocs: demo refused: the embedded PostgreSQL in {data_dir}"), last
    assert "(plans: 1)" in last, last
    assert not (data_dir / "pepper").exists()
    assert _embedded_value(data_dir, "SELECT count(*) FROM schema_migrations") == migrations
    assert _embedded_value(data_dir, "SELECT count(*) FROM pepper_check") == 0
