"""Invoice runs on real PostgreSQL and Redis: charges, prorations, usage, reruns, concurrency.

Every amount is computed by hand in the comments (EUR: 2 decimals, rounded once
per line, half away from zero).
"""

import asyncio
from datetime import UTC, date, datetime

from ocs.balances.ledger_writer import LedgerWriter
from ocs.billing import runs
from ocs.billing.drafts import preview
from ocs.billing.store import add_charge
from ocs.charging.values import AuthorizeRequest
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoices, monthly, run


async def test_monthly_fee_in_arrears_bills_the_period_just_ended(services: Services) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a1", "rent", date(2026, 1, 1))

    await run(services, "2026-03")

    [invoice] = await invoices(services)
    assert invoice["state"] == "draft" and invoice["number"] is None
    assert invoice["label"] == "2026-03"
    [line] = invoice["lines"]
    assert line["kind"] == "recurring"
    assert (line["period_start"], line["period_end"]) == (
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
    )
    assert line["amount"] == 10 * EUR and invoice["total"] == 10 * EUR


async def test_monthly_fee_in_advance_bills_the_next_period(services: Services) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR, timing="advance")
    await customer(services, "a1", "rent", date(2026, 1, 1))

    await run(services, "2026-03")

    [invoice] = await invoices(services)
    [line] = invoice["lines"]
    # Run at the end of March: April is billed ahead.
    assert (line["period_start"], line["period_end"]) == (
        datetime(2026, 4, 1, tzinfo=UTC),
        datetime(2026, 5, 1, tzinfo=UTC),
    )
    assert line["amount"] == 10 * EUR


async def test_a_start_mid_period_is_prorated_by_day(services: Services) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a1", "rent", date(2026, 3, 11))

    await run(services, "2026-03")

    [invoice] = await invoices(services)
    [line] = invoice["lines"]
    # March 11..31 is 21 of 31 days: 10.00 * 21 / 31 = 6.774193.. -> 6.77.
    assert line["kind"] == "proration"
    assert line["exact_amount"] == 6_774_194
    assert line["amount"] == 6_770_000 == invoice["total"]
    assert line["period_start"] == datetime(2026, 3, 11, tzinfo=UTC)


async def test_fixed_date_31_runs_through_february_in_common_and_leap_years(
    services: Services,
) -> None:
    await billed_plan(services, cycle_day=31, effective=date(2026, 1, 31), tz="Europe/Paris")
    await monthly(services, "rent", 9 * EUR)
    await customer(services, "common", "rent", date(2026, 2, 14))
    await customer(services, "leap", "rent", date(2028, 2, 15))

    await run(services, "2026-01", plan_id="retail")
    await run(services, "2026-02", plan_id="retail")
    # Ahead of time (an early run): its charges are billed, usage has not begun.
    await run(services, "2028-01", plan_id="retail", timing=runs.Timing(early=True))

    found = {(i["account"], i["label"]): i for i in await invoices(services)}
    # Jan 31 .. Feb 28 2026 (28 days), from Feb 14: 14 / 28 of 9.00 = 4.50.
    assert found["common", "2026-01-31..2026-02-28"]["total"] == 4_500_000
    # Then Feb 28 .. Mar 31 (31 days): the whole month, back on the 31st.
    assert found["common", "2026-02-28..2026-03-31"]["total"] == 9 * EUR
    # Jan 31 .. Feb 29 2028 (29 days), from Feb 15: 14 / 29 of 9.00 = 4.344827.. -> 4.34.
    [line] = found["leap", "2028-01-31..2028-02-29"]["lines"]
    assert line["exact_amount"] == 4_344_828 and line["amount"] == 4_340_000
    # Periods are cut at Paris midnights: 23:00 UTC the day before in winter.
    assert line["period_end"] == datetime(2028, 2, 28, 23, tzinfo=UTC)


async def _writer_caught_up(services: Services, cdrs: int) -> None:
    """Move the ledger streams into PostgreSQL until ``cdrs`` CDRs are there."""
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    for _ in range(100):
        await writer.read_new()
        async with services.pool.acquire() as conn:
            if await conn.fetchval("SELECT count(*) FROM cdrs") >= cdrs:
                return
    raise AssertionError("the ledger writer did not write the CDRs")


async def test_usage_lines_sum_real_calls_per_zone(services: Services) -> None:
    await billed_plan(services)
    await customer(services, "caller", None, date(2026, 1, 1), balance=10 * EUR)
    calls = services.calls
    for call_id, destination, seconds in (
        ("c1", "441234567", 90),  # UK Fixed 0.010/min, 60/60: 120 s billed, 0.02
        ("c2", "441234568", 30),  # UK Fixed: 60 s billed, 0.01
        ("c3", "447700900", 45),  # UK Mobile 0.15 + 0.060/min, 30/6: 48 s, 0.198
    ):
        await calls.authorize(AuthorizeRequest("caller", destination, call_id=call_id))
        await calls.stop(call_id, seconds, "caller")
    await _writer_caught_up(services, 3)

    now = datetime.now(UTC)
    # The month has not ended: an early run, billing the usage until now.
    await run(services, f"{now:%Y-%m}", invoice_date=now.date(), timing=runs.Timing(early=True))

    [invoice] = await invoices(services)
    fixed, mobile = invoice["lines"]
    assert (fixed["zone"], fixed["calls"], fixed["seconds"], fixed["billed_seconds"]) == (
        "UK Fixed",
        2,
        120,
        180,
    )
    assert fixed["amount"] == 30_000  # 0.03
    assert (mobile["zone"], mobile["calls"], mobile["seconds"], mobile["billed_seconds"]) == (
        "UK Mobile",
        1,
        45,
        48,
    )
    assert (mobile["exact_amount"], mobile["amount"]) == (198_000, 200_000)  # 0.198 -> 0.20
    assert invoice["total"] == 230_000  # a sum of rounded lines, not 0.228 rounded
    # What the calls cost is what the real-time path debited: 10.00 - 0.228.
    assert (await services.accounts.show("caller")).balance == 10 * EUR - 228_000


async def _four_customers(services: Services) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await monthly(services, "tv", 7 * EUR, timing="advance")
    for n, start in enumerate((date(2026, 1, 1), date(2026, 3, 5), date(2026, 3, 20), None)):
        await customer(services, f"c{n}", "rent" if start else None, start or date(2026, 1, 1))
    async with services.pool.acquire() as conn:
        sub = await conn.fetchval("SELECT id FROM subscriptions WHERE account_id = 'c0'")
    await add_charge(services.pool, sub, "tv")


async def test_the_same_run_twice_gives_the_same_invoices(services: Services) -> None:
    await _four_customers(services)

    await run(services, "2026-03")
    first = await invoices(services)
    await run(services, "2026-03")

    assert await invoices(services) == first
    # c0: rent 10.00 + tv for April 7.00; c1: 27/31 of 10.00 = 8.709677.. -> 8.71;
    # c2: 12/31 of 10.00 = 3.870967.. -> 3.87; c3: nothing.
    assert [i["total"] for i in first] == [17 * EUR, 8_710_000, 3_870_000, 0]
    assert sum(len(i["lines"]) for i in first) == 4


async def test_two_workers_and_two_runs_at_once_duplicate_nothing(services: Services) -> None:
    await _four_customers(services)
    one = await runs.create_run(
        services.pool, "2026-03", invoice_date=date(2026, 4, 1), chunk_size=1
    )
    two = await runs.create_run(
        services.pool, "2026-03", invoice_date=date(2026, 4, 1), chunk_size=1
    )

    await asyncio.gather(
        runs.execute_run(services.pool, one),
        runs.execute_run(services.pool, one),
        runs.execute_run(services.pool, two),
        runs.execute_run(services.pool, two),
    )

    # A worker that finds nothing left to claim returns; the last one to finish a
    # chunk of the run leaves it done.
    for run_id in (one, two):
        done = await runs.progress(services.pool, run_id)
        assert (done.state, done.accounts_done, done.accounts_total) == ("done", 4, 4)
        assert done.chunks_done == done.chunks_total == 4
    found = await invoices(services)
    assert len(found) == 4
    assert sum(len(i["lines"]) for i in found) == 4
    assert sum(i["total"] for i in found) == 17 * EUR + 8_710_000 + 3_870_000


async def test_a_chunk_whose_worker_died_is_taken_over(services: Services) -> None:
    await _four_customers(services)
    run_id = await runs.create_run(
        services.pool, "2026-03", invoice_date=date(2026, 4, 1), chunk_size=2
    )
    # A worker claims the first chunk and dies: its lease (0 s here) runs out.
    assert await runs.claim_chunk(services.pool, run_id, "dead", lease_s=0) == 0
    halfway = await runs.progress(services.pool, run_id)
    assert (halfway.accounts_done, halfway.accounts_total) == (0, 4)

    done = await runs.execute_run(services.pool, run_id, worker="heir")

    assert (done.state, done.accounts_done, done.chunks_done) == ("done", 4, 2)
    async with services.pool.acquire() as conn:
        attempts = await conn.fetchval(
            "SELECT attempts FROM invoice_run_chunks WHERE run_id = $1 AND chunk = 0", run_id
        )
    assert attempts == 2
    assert len(await invoices(services)) == 4


async def test_a_dry_run_previews_the_current_period_and_stores_nothing(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a1", "rent", date(2026, 3, 11))

    period, currency, lines = await preview(
        services.pool, "a1", datetime(2026, 3, 15, 12, tzinfo=UTC)
    )

    assert (period.label, currency) == ("2026-03", "EUR")
    assert [(line.kind, line.amount) for line in lines] == [("proration", 6_770_000)]  # 21/31
    assert await invoices(services) == []
