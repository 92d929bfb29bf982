"""kill -9 during an invoice run, then a rerun: the same invoices, lines and totals as a
clean run, nothing counted twice (real PostgreSQL, a worker in a subprocess)."""

import asyncio
import os
import signal
import sys
import time
from datetime import date

from ocs.billing import runs
from ocs.config import Settings
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoices, monthly

ACCOUNTS = 40

# The worker: the real execute_run, each chunk held open 50 ms before its commit, so the
# kill lands while chunks are done, one is in flight and others are untouched.
WORKER = """
import asyncio, sys
import asyncpg
from ocs.billing import drafts, runs

write = drafts.write

async def slow_write(conn, group, options):
    written = await write(conn, group, options)
    await asyncio.sleep(0.05)
    return written

drafts.write = slow_write

async def main():
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
    await runs.execute_run(pool, int(sys.argv[2]), worker="doomed", lease_s=1.0)

asyncio.run(main())
"""


async def _chunks_done(services: Services, run_id: int) -> int:
    async with services.pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM invoice_run_chunks WHERE run_id = $1 AND done_at IS NOT NULL",
                run_id,
            )
        )


async def test_a_run_killed_mid_way_and_rerun_equals_a_clean_run(
    services: Services, settings: Settings
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    for n in range(ACCOUNTS):
        await customer(services, f"k{n:02d}", "rent", date(2026, 1, 1 + n % 28))
    run_id = await runs.create_run(
        services.pool, "2026-03", invoice_date=date(2026, 4, 1), chunk_size=1
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        settings.database_url or "",
        str(run_id),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.monotonic() + 15
        while await _chunks_done(services, run_id) < 5:
            assert worker.returncode is None, "the worker ended before it was killed"
            assert time.monotonic() < deadline, "the worker did no chunk"
            await asyncio.sleep(0.005)
        worker.send_signal(signal.SIGKILL)
    finally:
        await asyncio.wait_for(worker.wait(), timeout=10)
    assert worker.returncode == -signal.SIGKILL
    done_at_kill = await _chunks_done(services, run_id)
    assert 5 <= done_at_kill < ACCOUNTS

    # The rerun takes over; the chunk the dead worker held comes free when its lease ends.
    deadline = time.monotonic() + 10
    while (progress := await runs.execute_run(services.pool, run_id, worker="heir")).state != (
        "done"
    ):
        assert time.monotonic() < deadline, "the dead worker's chunk never came free"
        await asyncio.sleep(0.01)
    assert (progress.accounts_done, progress.accounts_total) == (ACCOUNTS, ACCOUNTS)
    assert progress.chunks_done == progress.chunks_total == ACCOUNTS
    recovered = await invoices(services)

    # A clean run of the same period, from nothing.
    async with services.pool.acquire() as conn:
        await conn.execute("DELETE FROM invoices")
    clean = await runs.create_run(services.pool, "2026-03", invoice_date=date(2026, 4, 1))
    assert (await runs.execute_run(services.pool, clean)).state == "done"
    fresh = await invoices(services)

    assert recovered == fresh
    assert len(recovered) == ACCOUNTS
    assert sum(len(i["lines"]) for i in recovered) == ACCOUNTS
    # k00 (from Jan 1) .. k27 (Jan 28) and k28 .. k39 (Jan 1 .. Jan 12): all started
    # before March, so each bills March whole: 40 * 10.00.
    assert sum(i["total"] for i in recovered) == ACCOUNTS * 10 * EUR
