"""The billing worker's commitments refresh never hangs or holds up its pass (decision
0020, addendum "the committed amount is kept current"): it runs on a pool of one
connection, after the pass's due runs, and within its own time budget, going on at the
next pass (hand-computed, EUR)."""

import asyncio
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from ocs.billing import commitments, drafts, posting
from ocs.billing.store import create_charge
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.config import Settings
from ocs.services import Services
from tests.billing_helpers import EUR, customer, run
from tests.commitments_helpers import MID_MARCH, SUPPORT, locking_plan, stored

# April 1, noon: March's invoices (an end-of-cycle plan) are due, and a new period began.
APRIL_NOON = datetime(2026, 4, 1, 12, tzinfo=UTC)
# What an account started on March 11 has committed mid-March: the fee for March's 21
# days (6.77), April's ahead (10.00), support for March's 21 days (2.10).
MARCH_FIRST_INVOICE = 18_870_000
# An account started on February 1, on April 1: its next invoice is April's, billing
# April's support (3.10) and May's fee ahead (10.00); April's fee is on March's, ahead.
APRIL_INVOICE = 13_100_000


async def test_a_worker_on_a_pool_of_one_connection_finishes_its_pass_and_commits(
    services: Services, settings: Settings
) -> None:
    """``database_pool_size = 1``: the refresh held the pool's connection for the plan's
    advisory lock and waited for a second one for good; no run, posting or dunning
    followed, ever."""
    await locking_plan(services)
    await create_charge(services.pool, SUPPORT)
    await customer(services, "caller", None, date(2026, 3, 11), balance=25 * EUR)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        worker = BillingWorker(
            pool,
            WorkerSettings(auto_post=False, counter_cycles=False),
            store=services.store,
            clock=lambda: MID_MARCH,
        )
        # Bounded: a pass on one connection either finishes or never does.
        await asyncio.wait_for(worker.run_once(), timeout=30)
    finally:
        pool.terminate()

    assert await stored(services, "caller") == (MARCH_FIRST_INVOICE, False)
    shown = await services.accounts.show("caller")
    assert (shown.committed, shown.available) == (MARCH_FIRST_INVOICE, 25 * EUR - 18_870_000)


async def test_a_pass_drafts_its_due_runs_before_a_refresh_of_the_plans_accounts(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On April 1 both March's run and the plan's refresh are due: the refresh (minutes
    for a plan of 100k accounts) ran first and the run waited behind it. Now March's
    invoices are drafted before the refresh dry-runs a single account."""
    await locking_plan(services, effective=date(2026, 2, 1))
    await create_charge(services.pool, SUPPORT)
    for name in ("a1", "a2", "a3"):
        await customer(services, name, None, date(2026, 2, 1), balance=40 * EUR)
    seen_at_refresh: list[int] = []
    real_compute = drafts.compute

    async def spying(conn: asyncpg.Connection, group: drafts.Group, options: Any) -> Any:
        # What the refresh's dry run finds already drafted: March's invoices.
        seen_at_refresh.append(
            await conn.fetchval(
                "SELECT count(*) FROM invoices WHERE period_start = '2026-03-01T00:00:00Z'"
            )
        )
        return await real_compute(conn, group, options)

    monkeypatch.setattr(drafts, "compute", spying)
    worker = BillingWorker(
        services.pool,
        WorkerSettings(auto_post=False, counter_cycles=False),
        store=services.store,
        clock=lambda: APRIL_NOON,
    )

    await worker.run_once()

    assert seen_at_refresh and seen_at_refresh[0] == 3
    for name in ("a1", "a2", "a3"):
        assert await stored(services, name) == (APRIL_INVOICE, False)


async def test_a_refresh_over_its_budget_goes_on_at_the_next_pass_where_it_was(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget of 0 s: one batch (two accounts here) a pass. Five accounts are committed
    over three passes, the plan's stamp is stored at the third, and a fourth has nothing
    to do; March's run was drafted at the first pass all the same."""
    monkeypatch.setattr(commitments, "BATCH", 2)
    await locking_plan(services, effective=date(2026, 2, 1))
    await create_charge(services.pool, SUPPORT)
    names = [f"b{i}" for i in range(1, 6)]
    for name in names:
        await customer(services, name, None, date(2026, 2, 1), balance=40 * EUR)
    worker = BillingWorker(
        services.pool,
        WorkerSettings(auto_post=False, counter_cycles=False, commitments_budget=0.0),
        store=services.store,
        clock=lambda: APRIL_NOON,
    )

    async def committed() -> list[int]:
        return [(await stored(services, name))[0] for name in names]

    await worker.run_once()
    assert await committed() == [APRIL_INVOICE] * 2 + [0] * 3
    async with services.pool.acquire() as conn:
        drafted = await conn.fetchval(
            "SELECT count(*) FROM invoices WHERE period_start = '2026-03-01T00:00:00Z'"
        )
        assert drafted == 5

    await worker.run_once()
    assert await committed() == [APRIL_INVOICE] * 4 + [0]
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM plan_commitment_refreshes") == 0

    await worker.run_once()
    assert await committed() == [APRIL_INVOICE] * 5
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM plan_commitment_refreshes") == 1
    assert await worker.refresh_commitments() == []


async def test_a_batch_of_accounts_commits_what_each_alone_would(services: Services) -> None:
    """A batch's accounts are dry-run together, one run for those whose next invoice is
    March, another for the one whose March invoice is posted (April is its next): each
    is committed its own amount, as dry-run alone. Mid-March: started March 11, 18.87;
    started March 1, March's fee and support and April's fee ahead, 23.10; March
    posted, April's support and May's fee ahead, 13.10."""
    await locking_plan(services)
    await create_charge(services.pool, SUPPORT)
    await customer(services, "posted", None, date(2026, 3, 1), balance=40 * EUR)
    await posting.post(services.pool, services.store, run_id=await run(services, "2026-03"))
    await customer(services, "mid", None, date(2026, 3, 11), balance=40 * EUR)
    await customer(services, "whole", None, date(2026, 3, 1), balance=40 * EUR)
    names = ["mid", "posted", "whole"]
    alone: dict[str, int] = {}
    async with services.pool.acquire() as conn:
        for name in names:
            alone.update(await commitments.prorated_commitments(conn, [name], MID_MARCH))
        together = await commitments.prorated_commitments(conn, names, MID_MARCH)
    expected = {"mid": MARCH_FIRST_INVOICE, "whole": 23_100_000, "posted": APRIL_INVOICE}
    assert alone == together == expected


async def test_a_worker_on_a_pool_of_one_connection_creates_drafts_and_posts_a_due_run(
    services: Services, settings: Settings
) -> None:
    """``database_pool_size = 1`` with a run due: the period's advisory lock held the
    pool's connection while the run was created on a second one, for good. Now March's
    run is created, drafted and posted in one pass: 23.10 (March's fee and support,
    April's fee ahead) paid from 40.00, 16.90 left, April's invoice (13.10) committed."""
    await locking_plan(services)
    await create_charge(services.pool, SUPPORT)
    await customer(services, "due", None, date(2026, 3, 1), balance=40 * EUR)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        worker = BillingWorker(
            pool,
            WorkerSettings(counter_cycles=False),
            store=services.store,
            clock=lambda: APRIL_NOON,
        )
        await asyncio.wait_for(worker.run_once(), timeout=30)
    finally:
        pool.terminate()

    async with services.pool.acquire() as conn:
        states = await conn.fetch("SELECT state, total FROM invoices WHERE account_id = 'due'")
    assert [(r["state"], r["total"]) for r in states] == [("posted", 23_100_000)]
    assert await stored(services, "due") == (APRIL_INVOICE, False)
    shown = await services.accounts.show("due")
    assert (shown.balance, shown.available) == (16_900_000, 16_900_000 - APRIL_INVOICE)
