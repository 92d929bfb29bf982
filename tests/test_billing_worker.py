"""`ocs billing-worker`: due cycles run by themselves, once; chunks shared and taken over;
a SIGTERM finishes the chunk in hand. And `ocs demo`'s finished billing cycle."""

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from ocs import metrics
from ocs.balances import keys
from ocs.balances.accounts import AccountSpec
from ocs.billing import runs
from ocs.billing.cycles import PlanBilling
from ocs.billing.owed import asks_sql
from ocs.billing.store import Subscription, add_charge, subscribe
from ocs.billing.worker import BillingWorker, WorkerSettings, due_period, due_periods
from ocs.config import Settings
from ocs.demo import BILLING_ACCOUNT, run_demo
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, monthly
from tests.conftest import eventually

APRIL = datetime(2026, 4, 1, 12, tzinfo=UTC)


async def _accounts(
    services: Services,
    count: int,
    start: date = date(2026, 1, 1),
    effective: date = date(2026, 3, 1),
) -> None:
    """The retail plan (cycle on the 1st, arrears, billed from ``effective``), a 10.00
    monthly rent, ``count`` accounts."""
    await billed_plan(services, effective=effective)
    await monthly(services, "rent", 10 * EUR)
    for n in range(count):
        await customer(services, f"a{n}", "rent", start)


async def _runs(services: Services) -> list[tuple[str | None, str, str]]:
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT plan_id, period, state FROM invoice_runs ORDER BY id")
    return [(r["plan_id"], r["period"], r["state"]) for r in rows]


async def _totals(services: Services) -> list[tuple[str, str, int]]:
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT account_id, period_label, total FROM invoices ORDER BY account_id"
        )
    return [(r["account_id"], r["period_label"], r["total"]) for r in rows]


async def test_two_workers_at_once_create_the_due_run_once(
    services: Services, settings: Settings
) -> None:
    await _accounts(services, 3)
    config = WorkerSettings(poll_interval=0.05, chunk_size=1, run_delay=0)
    pools = [await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)]
    pools.append(await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3))
    try:
        workers = [BillingWorker(p, config, clock=lambda: APRIL) for p in pools]
        await asyncio.gather(*(w.run_once() for w in workers))
        # A restart (a third worker) finds the period taken.
        await BillingWorker(services.pool, config, clock=lambda: APRIL).run_once()
    finally:
        for pool in pools:
            await pool.close()
    # At noon on April 1, March has ended: its run, once, drafted whole.
    assert await _runs(services) == [("retail", "2026-03", "done")]
    assert await _totals(services) == [(f"a{n}", "2026-03", 10 * EUR) for n in range(3)]


def test_the_due_period_follows_the_timing_and_the_delay() -> None:
    arrears = PlanBilling("p", "fixed_date", date(2026, 1, 1), cycle_day=1)
    advance = dataclasses.replace(arrears, invoice_timing="start_of_cycle")
    due = due_period(arrears, APRIL)
    assert due is not None and (due.period, due.invoice_date) == ("2026-03", date(2026, 4, 1))
    due = due_period(advance, APRIL)
    assert due is not None and due.period == "2026-04"
    # 13 hours late: on April 1 at noon, February is the last period due.
    due = due_period(arrears, APRIL, delay=13 * 3600)
    assert due is not None and due.period == "2026-02"
    # Nothing before the plan's effective date.
    assert due_period(dataclasses.replace(arrears, effective_date=date(2026, 4, 1)), APRIL) is None
    assert due_period(dataclasses.replace(arrears, cycle="manual"), APRIL) is None


async def test_a_dead_workers_chunk_is_taken_over_when_its_lease_runs_out(
    services: Services,
) -> None:
    await _accounts(services, 2)
    run_id = await runs.create_run(
        services.pool, "2026-03", invoice_date=date(2026, 4, 1), chunk_size=1
    )
    # A worker that claimed chunk 0 and died (kill -9): its lease is short.
    assert await runs.claim_chunk(services.pool, run_id, "dead", lease_s=0.2) == 0

    async def lease_ran_out() -> bool:
        async with services.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT lease_until <= clock_timestamp() FROM invoice_run_chunks"
                    " WHERE run_id = $1 AND chunk = 0",
                    run_id,
                )
            )

    await eventually(lease_ran_out, what="the dead worker's lease to run out")
    worker = BillingWorker(services.pool, WorkerSettings(run_delay=0), clock=lambda: APRIL)
    await worker.work_on(run_id, asyncio.Event())

    found = await runs.progress(services.pool, run_id)
    assert (found.state, found.accounts_done) == ("done", 2)
    async with services.pool.acquire() as conn:
        owners = await conn.fetch(
            "SELECT chunk, lease_owner, attempts FROM invoice_run_chunks WHERE run_id = $1"
            " ORDER BY chunk",
            run_id,
        )
    assert [(r["lease_owner"], r["attempts"]) for r in owners] == [
        (worker.name, 2),
        (worker.name, 1),
    ]
    assert await _totals(services) == [("a0", "2026-03", 10 * EUR), ("a1", "2026-03", 10 * EUR)]


def _worker_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    env.update(
        {
            "OCS_REDIS_URL": settings.redis_url or "",
            "OCS_DATABASE_URL": settings.database_url or "",
            "OCS_DATA_DIR": str(tmp_path / "var"),
            "OCS_LOG_FORMAT": "json",
            "OCS_BILLING_POLL_INTERVAL": "0.05",
            "OCS_BILLING_RUN_DELAY": "0",
            "OCS_BILLING_CHUNK_SIZE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def test_a_metrics_port_already_taken_is_named_as_the_setting_to_change(
    settings: Settings, tmp_path: Path
) -> None:
    # A second billing worker on the host sharing the config finds the port taken: the
    # operator is told which setting to change, in one line, not "cannot reach a backend".
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        env = _worker_env(settings, tmp_path)
        env["OCS_BILLING_METRICS_PORT"] = str(taken.getsockname()[1])
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ocs",
            "billing-worker",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    lines = err.decode().strip().splitlines()
    assert process.returncode == 2, lines
    assert lines[-1].startswith("ocs: configuration error: billing_metrics_port: cannot serve"), (
        lines
    )
    assert "Traceback" not in err.decode()


async def _worker_once(env: dict[str, str]) -> tuple[int | None, list[str]]:
    """``ocs billing-worker --once`` run to its end (bounded): exit code, log lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        "billing-worker",
        "--once",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, out.decode().splitlines()


async def test_a_fallback_font_file_not_on_the_machine_is_said_at_start(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    """A listed font file that is not there was skipped in silence: its Chinese,
    Japanese or Korean characters were blank in every invoice PDF and nothing said why.
    The worker starts (invoices are still made) and says so once, naming the setting
    and the path; a file that is there is not named, nor the default list's absent ones."""
    from ocs.billing.document_fonts import FONTS_DIR

    missing, present = tmp_path / "fonts" / "NoSuchFont.ttf", FONTS_DIR / "DejaVuSans.ttf"
    env = _worker_env(settings, tmp_path)
    env["OCS_INVOICE_FALLBACK_FONTS"] = f"{missing},{present}"
    code, lines = await _worker_once(env)
    assert code == 0, lines
    said = [line for line in lines if "invoice_fallback_fonts" in line]
    assert len(said) == 1, lines
    assert f"invoice_fallback_fonts: no font file at {missing}: skipped" in said[0], said
    assert '"level": "warning"' in said[0], said
    assert str(present) not in said[0]

    code, lines = await _worker_once(_worker_env(settings, tmp_path))  # the default list
    assert code == 0, lines
    assert not [line for line in lines if "invoice_fallback_fonts" in line], lines


async def test_a_sigterm_finishes_the_chunk_in_hand_and_another_worker_takes_the_rest(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    # Billed from the start of last month: one period is due now.
    today = datetime.now(UTC).date()
    last_month = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    await _accounts(services, 4, effective=last_month)
    billing = PlanBilling("retail", "fixed_date", last_month, cycle_day=1)
    due = due_period(billing, datetime.now(UTC))
    assert due is not None
    # Hold account a0's invoice row (uncommitted): the worker's first chunk waits on it.
    blocker = await asyncpg.connect(settings.database_url)
    holding = blocker.transaction()
    await holding.start()
    await blocker.execute(
        "INSERT INTO invoices (account_id, plan_id, period_start, period_end, period_label,"
        " currency, invoice_date) VALUES ('a0', 'retail', $1, $1::timestamptz + interval '1 day',"
        " 'x', 'EUR', $2)",
        due.start,
        due.invoice_date,
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ocs",
            "billing-worker",
            env=_worker_env(settings, tmp_path),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:

        async def in_chunk_0() -> bool:
            assert process.returncode is None, log.read_text()
            return "billing run joined" in log.read_text()

        await eventually(in_chunk_0, within=60, what="the worker in its first chunk")
        process.send_signal(signal.SIGTERM)

        async def stopping() -> bool:
            return "billing worker stopping" in log.read_text()

        await eventually(stopping, within=30, what="the worker to take the signal")
        await holding.rollback()  # the chunk in hand may go on now

        await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await blocker.close()
    assert process.returncode == 0, log.read_text()
    assert "billing worker stopped" in log.read_text()

    async with services.pool.acquire() as conn:
        chunks = await conn.fetch(
            "SELECT chunk, done_at IS NOT NULL AS done, attempts FROM invoice_run_chunks"
            " ORDER BY chunk"
        )
    # Chunk 0 finished and committed; no other claimed after the signal.
    assert [(r["done"], r["attempts"]) for r in chunks] == [
        (True, 1),
        (False, 0),
        (False, 0),
        (False, 0),
    ]
    # Another worker finds the run (never a second one) and drafts the rest.
    worker = BillingWorker(services.pool, WorkerSettings(run_delay=0, chunk_size=1))
    await worker.run_once()
    assert await _runs(services) == [("retail", due.period, "done")]
    assert await _totals(services) == [(f"a{n}", due.period, 10 * EUR) for n in range(4)]


async def test_the_demo_ends_with_a_posted_invoice_and_the_command_that_shows_it(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    demo_settings = dataclasses.replace(settings, radius_enabled=False, run_janitor=False)
    stopping = asyncio.Event()
    task = asyncio.create_task(run_demo(demo_settings, stopping))
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
    found = re.search(r"ocs invoices show (\d+)", printed)
    assert found is not None, printed
    async with services.pool.acquire() as conn:
        invoice = await conn.fetchrow("SELECT * FROM invoices WHERE id = $1", int(found[1]))
        lines = await conn.fetch(
            "SELECT kind, zone, amount, exact_amount, moved_at IS NOT NULL AS moved"
            " FROM invoice_lines WHERE invoice_id = $1 ORDER BY position",
            invoice["id"],
        )
    assert (invoice["account_id"], invoice["state"]) == (BILLING_ACCOUNT, "posted")
    # Numbered in the demo's own sequence: never taking a real INV number.
    assert re.fullmatch(r"DEMO-\d{4}-000001", invoice["number"])
    # The month's 5.00 rent, moved at posting; the call: 45 s to a UK mobile on 30/6,
    # 48 s billed, 0.15 + 0.06 * 48 / 60 = 0.198 -> 0.20, already debited in real time.
    assert sorted((li["kind"], li["amount"], li["exact_amount"], li["moved"]) for li in lines) == [
        ("recurring", 5 * EUR, 5 * EUR, True),
        ("usage", 200_000, 198_000, False),
    ]
    assert invoice["total"] == 5_200_000
    # 20.00 - 0.198 (the call) - 5.00 (the rent).
    assert (await services.accounts.show(BILLING_ACCOUNT)).balance == 14_802_000


def test_every_due_period_since_the_effective_date_is_due_oldest_first() -> None:
    arrears = PlanBilling("p", "fixed_date", date(2026, 1, 15), cycle_day=1)
    # January's period [Jan 1, Feb 1) ends after the effective date: it is billed too.
    assert [d.period for d in due_periods(arrears, APRIL)] == ["2026-01", "2026-02", "2026-03"]
    weekly = PlanBilling("w", "week", date(2026, 3, 9), cycle_weekday=0)
    assert [d.invoice_date for d in due_periods(weekly, APRIL)] == [
        date(2026, 3, 16),
        date(2026, 3, 23),
        date(2026, 3, 30),
    ]
    anniversary = PlanBilling("s", "subscription_date", date(2025, 12, 20))
    # End of cycle: the periods starting in a month have all ended two months later.
    assert [d.period for d in due_periods(anniversary, APRIL)] == ["2025-12", "2026-01", "2026-02"]


async def test_a_worker_that_was_down_bills_every_missed_period_once_and_posts_it(
    services: Services,
) -> None:
    await _accounts(services, 2, effective=date(2026, 1, 1))
    worker = BillingWorker(
        services.pool, WorkerSettings(run_delay=0), clock=lambda: APRIL, store=services.store
    )
    await worker.run_once()
    await worker.run_once()  # a second pass finds every period taken and posted
    assert await _runs(services) == [
        ("retail", "2026-01", "done"),
        ("retail", "2026-02", "done"),
        ("retail", "2026-03", "done"),
    ]
    async with services.pool.acquire() as conn:
        invoices = await conn.fetch(
            "SELECT account_id, period_label, state, number, total FROM invoices ORDER BY id"
        )
        posted_runs = await conn.fetchval(
            "SELECT count(*) FROM invoice_runs WHERE posted_at IS NOT NULL"
        )
        moved = await conn.fetchval("SELECT count(*) FROM invoice_lines WHERE moved_at IS NOT NULL")
    # Three months of 10.00 rent, in arrears, for each account: numbered in run order.
    assert [(r["account_id"], r["period_label"], r["state"], r["total"]) for r in invoices] == [
        (account, month, "posted", 10 * EUR)
        for month in ("2026-01", "2026-02", "2026-03")
        for account in ("a0", "a1")
    ]
    assert [r["number"] for r in invoices] == [f"INV-2026-{n:06d}" for n in range(1, 7)]
    assert posted_runs == 3
    assert moved == 6
    for account in ("a0", "a1"):
        state = await services.store.get_account(account)
        assert state is not None and state.balance == -30 * EUR


async def test_an_operators_run_is_left_for_the_operator_to_post(services: Services) -> None:
    await _accounts(services, 1)
    run_id = await runs.create_run(services.pool, "2026-03", invoice_date=date(2026, 4, 1))
    worker = BillingWorker(
        services.pool, WorkerSettings(run_delay=0), clock=lambda: APRIL, store=services.store
    )
    await worker.run_once()
    async with services.pool.acquire() as conn:
        states = await conn.fetch("SELECT run_id, state FROM invoices ORDER BY id")
    assert [(r["run_id"], r["state"]) for r in states] == [(run_id, "draft")]


async def test_runs_wait_for_the_ledger_writer_to_write_the_periods_last_calls(
    services: Services, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL was away at the month's end: the ledger writer still holds a call
    # stopped on March 31. A run drafted now would leave that call off every invoice.
    await _accounts(services, 1)
    stream = keys.ledger(keys.bucket_of("a0"))
    late_ms = int(datetime(2026, 3, 31, 23, 59, tzinfo=UTC).timestamp() * 1000)
    entry = f"{late_ms}-0"
    redis = Redis.from_url(redis_url)
    # The entry as the stop script appended it; no writer runs in this test.
    await redis.xadd(stream, {"kind": "call", "account": "a0", "amount": "-1000"}, id=entry)
    worker = BillingWorker(
        services.pool, WorkerSettings(run_delay=300), clock=lambda: APRIL, store=services.store
    )
    with caplog.at_level("INFO", logger="ocs.billing.worker"):
        assert await worker.create_due_runs() == []
        assert await worker.create_due_runs() == []  # still waiting: logged once
        assert await _runs(services) == []
        # The writer writes it (and deletes it from the stream): the run goes ahead.
        await redis.xdel(stream, entry)
        await redis.aclose()
        assert len(await worker.create_due_runs()) == 1
    assert await _runs(services) == [("retail", "2026-03", "running")]
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("billing runs wait for the ledger writer") == 1
    assert messages.count("the ledger writer caught up; billing runs go on") == 1


async def test_a_plans_later_run_waits_while_an_earlier_one_is_unfinished(
    services: Services,
) -> None:
    # Caught up on May 1: March and April are due. Another worker holds March's chunk
    # uncommitted: drafting April meanwhile would compare April with February and bill
    # March's late imported usage on both (decision 0050). April waits for March.
    await _accounts(services, 1)
    may = datetime(2026, 5, 1, 12, tzinfo=UTC)
    worker = BillingWorker(
        services.pool, WorkerSettings(poll_interval=0.05, run_delay=0), clock=lambda: may
    )
    await worker.create_due_runs()
    async with services.pool.acquire() as conn:
        march = await conn.fetchval("SELECT id FROM invoice_runs WHERE period = '2026-03'")
    assert await runs.claim_chunk(services.pool, march, "elsewhere", lease_s=600) == 0

    await worker.run_once()
    assert await _runs(services) == [
        ("retail", "2026-03", "running"),
        ("retail", "2026-04", "running"),
    ]
    assert await _totals(services) == []

    await runs.run_chunk(services.pool, march, 0)
    await runs.execute_run(services.pool, march, max_chunks=0)  # marks it done
    await worker.run_once()
    assert await _runs(services) == [("retail", "2026-03", "done"), ("retail", "2026-04", "done")]
    assert [(a, label) for a, label, _ in await _totals(services)] == [
        ("a0", "2026-03"),
        ("a0", "2026-04"),
    ]


async def test_a_back_filled_period_starts_at_the_closing_balance_of_the_one_before(
    services: Services,
) -> None:
    # Down over January and February: the worker drafts both, then posts both. February
    # was drafted before January's money moved; posted, it asks for its rent.
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec("pp", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("pp", "retail", date(2026, 1, 1)))
    await add_charge(services.pool, sub, "rent")
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ledger (entry_id, account_id, kind, amount, balance_after,"
            " occurred_at) VALUES ('0-1', 'pp', 'topup', $1, $1, $2)",
            10 * EUR,
            datetime(2026, 1, 2, tzinfo=UTC),
        )
    worker = BillingWorker(
        services.pool,
        WorkerSettings(run_delay=0),
        clock=lambda: datetime(2026, 3, 2, tzinfo=UTC),
        store=services.store,
    )
    await worker.run_once()
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT period_label, state, previous_balance, closing_balance, amount_due,"
            f" {asks_sql()} AS asks FROM invoices ORDER BY period_start"
        )
    assert [tuple(r) for r in rows] == [
        ("2026-01", "posted", 0, 0, 0, 0),
        ("2026-02", "posted", 0, -10 * EUR, 10 * EUR, 10 * EUR),
    ]


async def test_a_worker_whose_first_pass_hangs_shows_a_heartbeat_from_its_start(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The heartbeat was set only when a pass ended: a worker whose first pass hung (a
    # lock wait, a tax engine that never answers) exported 0, which the NOC's
    # OcsBillingWorkerStalled rule reads as "no worker here", and never fired. It now
    # counts from the worker's start.
    metrics.BILLING_WORKER_PASS.set(0)
    worker = BillingWorker(services.pool, WorkerSettings(run_delay=0))
    hung = asyncio.Event()

    async def first_pass_that_hangs(stopping: asyncio.Event) -> None:
        hung.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(worker, "run_once", first_pass_that_hangs)
    stopping = asyncio.Event()
    began = time.time()
    running = asyncio.create_task(worker.run(stopping))
    try:
        await asyncio.wait_for(hung.wait(), timeout=10)
        heartbeat = REGISTRY.get_sample_value("ocs_billing_worker_last_pass_timestamp_seconds")
        assert heartbeat is not None and began - 1 <= heartbeat <= time.time()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        metrics.BILLING_WORKER_PASS.set(0)
