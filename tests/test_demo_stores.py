"""`ocs demo` writes only into stores of its own: stores holding nothing, or nothing but
the demo's data. On a production database (OCS_* URLs left in the environment) it stops
with one line naming why and the override, having written nothing; with the override,
no billing worker drafts and posts the other plans' runs, and its invoice takes a number
of its own sequence, never the real INV one."""

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ocs.config import Settings
from ocs.demo import BILLING_ACCOUNT, run_demo
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, monthly
from tests.conftest import eventually
from tests.embedded_helpers import child_env


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
