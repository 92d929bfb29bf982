"""Invoice runs for the week and fixed-period cycles, cut-offs at their exact edges, a DST
month and currencies with 0 and 3 decimals, on real PostgreSQL and Redis.

Every amount is computed by hand in the comments; a line is rounded once to the
currency's minor unit, half away from zero (decision 0019).
"""

from datetime import UTC, date, datetime, timedelta

import pytest

from ocs.billing import posting, runs
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import (
    Charge,
    add_charge,
    change_charge,
    create_charge,
    set_plan_billing,
)
from ocs.errors import OcsError
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoices, monthly, run
from tests.conftest import add_plan

ONE_US = timedelta(microseconds=1)


async def insert_cdr(
    services: Services,
    account_id: str,
    stopped_at: datetime,
    charged: int,
    *,
    zone: str = "UK Fixed",
    seconds: int = 60,
    entry_id: str | None = None,
    caller: str | None = None,
    member: str | None = None,
) -> None:
    """A rated call of ``account_id`` as the ledger writer stores it, stopped at ``stopped_at``."""
    async with services.pool.acquire() as conn:
        plan, currency = await conn.fetchrow(
            "SELECT plan_id, currency FROM accounts WHERE id = $1", account_id
        )
        count = await conn.fetchval("SELECT count(*) FROM cdrs")
        await conn.execute(
            "INSERT INTO cdrs (entry_id, call_id, account_id, plan_id, zone, destination, caller,"
            " currency, authorized_at, stopped_at, duration, billed_seconds, connect_fee,"
            " first_block, increment, price_per_minute, rated_cost, charged, member)"
            " VALUES ($1, $2, $3, $4, $5, '441234567', $6, $7, $8, $9, $10, $10, 0, 1, 1, 0,"
            " $11, $11, $12)",
            entry_id or f"{count + 1:06d}-0",
            f"call{count + 1}",
            account_id,
            plan,
            zone,
            caller,
            currency,
            stopped_at - timedelta(seconds=seconds),
            stopped_at,
            seconds,
            charged,
            member,
        )


async def test_a_week_cycle_bills_a_weekly_charge_from_monday_to_monday(
    services: Services,
) -> None:
    await add_plan(services, "weekly")
    # Week cycle on Mondays (weekday 0) from Monday 2026-03-02.
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("weekly", "week", date(2026, 3, 2), cycle_weekday=0),
    )
    await create_charge(
        services.pool,
        Charge("wk", "Weekly line", "LINE", "EUR", 7 * EUR, "recurring", cadence="weekly"),
    )
    await customer(services, "w1", "wk", date(2026, 3, 4), plan_id="weekly")

    # Wed Mar 4 .. Mon Mar 9 is 5 of 7 days: 7.00 * 5 / 7 = 5.00.
    await run(services, "2026-03-02..2026-03-09")
    # The next week whole: 7.00.
    await run(services, "2026-03-09..2026-03-16")

    found = {i["label"]: i for i in await invoices(services)}
    assert set(found) == {"2026-03-02..2026-03-09", "2026-03-09..2026-03-16"}
    [first] = found["2026-03-02..2026-03-09"]["lines"]
    assert (first["kind"], first["amount"]) == ("proration", 5 * EUR)
    assert first["period_start"] == datetime(2026, 3, 4, tzinfo=UTC)
    [second] = found["2026-03-09..2026-03-16"]["lines"]
    assert (second["kind"], second["amount"]) == ("recurring", 7 * EUR)
    assert (second["period_start"], second["period_end"]) == (
        datetime(2026, 3, 9, tzinfo=UTC),
        datetime(2026, 3, 16, tzinfo=UTC),
    )


async def test_a_fixed_period_cycle_counts_every_n_days_from_the_effective_date(
    services: Services,
) -> None:
    await add_plan(services, "tens")
    # Every 10 days from Jan 1: Jan 1, 11, 21, 31, Feb 10 ...
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("tens", "fixed_period", date(2026, 1, 1), every_days=10),
    )
    await create_charge(
        services.pool,
        Charge("ten", "Ten-day pass", "PASS", "EUR", 3 * EUR, "recurring", "days", every_days=10),
    )
    await customer(services, "f1", "ten", date(2026, 1, 14), plan_id="tens")

    # Jan 14 .. Jan 21 is 7 of 10 days: 3.00 * 7 / 10 = 2.10.
    await run(services, "2026-01-11..2026-01-21")
    # Jan 31 .. Feb 10 is a whole period, across the month's end: 3.00.
    await run(services, "2026-01-31..2026-02-10")

    found = {i["label"]: i["total"] for i in await invoices(services)}
    assert found == {"2026-01-11..2026-01-21": 2_100_000, "2026-01-31..2026-02-10": 3 * EUR}


async def test_the_charge_cutoff_includes_a_charge_created_at_it_and_not_one_after(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await monthly(services, "late", 4 * EUR)
    cutoff = datetime(2026, 3, 31, 18, tzinfo=UTC)
    await customer(services, "c1", "rent", date(2026, 1, 1))
    await customer(services, "c2", "late", date(2026, 1, 1))
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE subscription_charges sc SET created_at = $1::timestamptz + CASE s.account_id"
            " WHEN 'c1' THEN interval '0' ELSE interval '1 microsecond' END"
            " FROM subscriptions s WHERE s.id = sc.subscription_id",
            cutoff,
        )

    await run(services, "2026-03", charge_cutoff=cutoff)

    found = {i["account"]: i["total"] for i in await invoices(services)}
    # c1's charge was created exactly at the cut-off: billed. c2's one microsecond
    # later: left out of this run (a rerun of the period bills it, or else the next
    # invoice does: test_a_charge_created_after_the_cutoff_is_billed_by_the_next_invoice).
    assert found == {"c1": 10 * EUR, "c2": 0}

    # A run without the cut-off recomputes the draft and bills it.
    await run(services, "2026-03")
    found = {i["account"]: i["total"] for i in await invoices(services)}
    assert found == {"c1": 10 * EUR, "c2": 4 * EUR}


async def test_the_usage_cutoff_includes_calls_stopped_before_it_and_not_at_it(
    services: Services,
) -> None:
    await billed_plan(services)
    await customer(services, "u1", None, date(2026, 1, 1))
    cutoff = datetime(2026, 3, 20, 12, tzinfo=UTC)
    await insert_cdr(services, "u1", cutoff - ONE_US, 110_000)  # included: 0.11
    await insert_cdr(services, "u1", cutoff, 220_000)  # at the cut-off: excluded
    await insert_cdr(services, "u1", datetime(2026, 3, 1, tzinfo=UTC), 330_000)  # first instant

    await run(services, "2026-03", usage_cutoff=cutoff)

    [invoice] = await invoices(services)
    [line] = invoice["lines"]
    # 0.11 + 0.33 = 0.44 over 2 calls; the call stopped at the cut-off waits.
    assert (line["calls"], line["amount"]) == (2, 440_000)
    assert line["period_end"] == cutoff


async def test_a_dst_month_is_cut_at_london_midnights_and_prorated_by_day(
    services: Services,
) -> None:
    await billed_plan(services, tz="Europe/London")
    await monthly(services, "rent", 31 * EUR)
    # Clocks go forward on Sunday 2026-03-29 at 01:00: March has 743 hours, 31 days.
    await customer(services, "d1", "rent", date(2026, 3, 29))
    april = datetime(2026, 3, 31, 23, tzinfo=UTC)  # Apr 1 00:00 BST
    await insert_cdr(services, "d1", april - ONE_US, 50_000)  # still March in London
    await insert_cdr(services, "d1", april, 70_000)  # April in London
    await insert_cdr(services, "d1", datetime(2026, 3, 1, tzinfo=UTC), 10_000)  # Mar 1 00:00 GMT

    await run(services, "2026-03")

    [invoice] = await invoices(services)
    rent, usage = invoice["lines"]
    # Mar 29, 30, 31: 3 of 31 days of 31.00 = 3.00, DST day counted as one day.
    assert (rent["kind"], rent["amount"]) == ("proration", 3 * EUR)
    assert rent["period_start"] == datetime(2026, 3, 29, tzinfo=UTC)  # GMT still
    assert rent["period_end"] == april
    # 0.05 + 0.01: the call at 23:00 UTC on Mar 31 is in April.
    assert (usage["calls"], usage["amount"]) == (2, 60_000)
    assert invoice["total"] == 3_060_000


async def test_jpy_lines_round_to_whole_yen_and_bhd_lines_to_fils(services: Services) -> None:
    for plan, currency in (("yen", "JPY"), ("dinar", "BHD")):
        await add_plan(services, plan, currency=currency)
        await set_plan_billing(
            services.pool,
            services.store,
            PlanBilling(plan, "fixed_date", date(2026, 1, 1), cycle_day=1),
        )
    await create_charge(
        services.pool,
        Charge("jrent", "Line", "LINE", "JPY", 1000 * EUR, "recurring", cadence="monthly"),
    )
    await create_charge(
        services.pool,
        Charge("brent", "Line", "LINE", "BHD", 10 * EUR, "recurring", cadence="monthly"),
    )
    await customer(services, "jp", "jrent", date(2026, 3, 11), plan_id="yen")
    await customer(services, "bh", "brent", date(2026, 3, 11), plan_id="dinar")
    await insert_cdr(services, "jp", datetime(2026, 3, 12, tzinfo=UTC), 1_500_000)  # 1.5 yen
    await insert_cdr(services, "bh", datetime(2026, 3, 12, tzinfo=UTC), 1_234_500)  # 1.2345

    await run(services, "2026-03")

    found = {i["account"]: i for i in await invoices(services)}
    jp_rent, jp_usage = found["jp"]["lines"]
    # 1000 yen * 21 / 31 = 677.419354.. -> exact 677_419_355 micro, line 677 yen.
    assert (jp_rent["exact_amount"], jp_rent["amount"]) == (677_419_355, 677 * EUR)
    # 1.5 yen -> 2 yen (half away from zero).
    assert jp_usage["amount"] == 2 * EUR
    assert found["jp"]["total"] == 679 * EUR
    bh_rent, bh_usage = found["bh"]["lines"]
    # 10 BHD * 21 / 31 = 6.774193.. -> 6_774_194 micro, line 6.774.
    assert (bh_rent["exact_amount"], bh_rent["amount"]) == (6_774_194, 6_774_000)
    # 1.2345 -> 1.235 (a half of a fils, away from zero).
    assert bh_usage["amount"] == 1_235_000
    assert found["bh"]["total"] == 8_009_000


async def test_a_manual_plan_invoices_a_named_past_period_once(services: Services) -> None:
    await add_plan(services, "desk")
    await set_plan_billing(
        services.pool, services.store, PlanBilling("desk", "manual", date(2026, 1, 1))
    )
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "m1", "rent", date(2026, 2, 8), plan_id="desk")
    await insert_cdr(services, "m1", datetime(2026, 2, 20, tzinfo=UTC), 120_000)
    await insert_cdr(services, "m1", datetime(2026, 3, 1, tzinfo=UTC), 990_000)  # March

    await run(services, "2026-02", plan_id="desk")
    await run(services, "2026-02", plan_id="desk")  # a rerun recomputes the same draft

    [invoice] = await invoices(services)
    assert invoice["label"] == "2026-02"
    rent, usage = invoice["lines"]
    # Feb 8 .. Mar 1: 21 of 28 days of 10.00 = 7.50; the February call 0.12.
    assert (rent["kind"], rent["amount"]) == ("proration", 7_500_000)
    assert (usage["calls"], usage["amount"]) == (1, 120_000)
    assert invoice["total"] == 7_620_000
    # Not a past period, an overlap with an invoiced one, no cycle to compute: refused.
    for period, problem in (
        ("2099-01", "has not ended"),
        ("2026-02-15..2026-03-15", "overlaps m1's invoice for 2026-02"),
        ("2026-13", "not a month"),
    ):
        with pytest.raises(OcsError, match=problem):
            await runs.create_run(
                services.pool, period, invoice_date=date(2026, 4, 1), plan_id="desk"
            )
    # A run of every plan leaves the manual plan alone.
    await run(services, "2026-03")
    assert len(await invoices(services)) == 1


async def _created_at(services: Services, item: int, when: datetime) -> None:
    """Date a subscription charge's creation (when the store recorded it)."""
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE subscription_charges SET created_at = $2 WHERE id = $1", item, when
        )


async def _charge_lines(services: Services, account: str) -> dict[str, list[tuple[str, int]]]:
    """Each invoice of the account (by label): its lines' descriptions and amounts."""
    return {
        i["label"]: [(line["description"], line["amount"]) for line in i["lines"]]
        for i in await invoices(services)
        if i["account"] == account
    }


async def test_a_charge_created_after_the_cutoff_is_billed_by_the_next_invoice(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await monthly(services, "late", 4 * EUR)
    cutoff = datetime(2026, 3, 31, 18, tzinfo=UTC)
    sub = await customer(services, "c2", "rent", date(2026, 1, 1))
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE subscription_charges SET created_at = '2026-01-01T00:00Z'")
    # A 4.00 monthly charge from March 1, recorded an hour after March's cut-off.
    item = await add_charge(services.pool, sub, "late", start_date=date(2026, 3, 1))
    await _created_at(services, item, cutoff + timedelta(hours=1))

    await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    march = await run(services, "2026-03", charge_cutoff=cutoff)
    await posting.post(services.pool, services.store, run_id=march)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))

    # March left it out; April bills March's 4.00 beside its own, and May only its own.
    assert await _charge_lines(services, "c2") == {
        "2026-02": [("Line rent rent", 10 * EUR)],
        "2026-03": [("Line rent rent", 10 * EUR)],
        "2026-04": [
            ("Line rent late", 4 * EUR),
            ("Line rent late", 4 * EUR),
            ("Line rent rent", 10 * EUR),
        ],
        "2026-05": [("Line rent late", 4 * EUR), ("Line rent rent", 10 * EUR)],
    }
    async with services.pool.acquire() as conn:
        spans = await conn.fetch(
            "SELECT l.period_start, l.period_end FROM invoice_lines l"
            " JOIN invoices i ON i.id = l.invoice_id"
            " WHERE i.period_label = '2026-04' AND l.charge_id = 'late' ORDER BY l.position"
        )
    assert [(r["period_start"].date(), r["period_end"].date()) for r in spans] == [
        (date(2026, 3, 1), date(2026, 4, 1)),
        (date(2026, 4, 1), date(2026, 5, 1)),
    ]


async def test_a_charge_added_to_a_plan_or_an_add_on_without_a_start_bills_from_now(
    services: Services,
) -> None:
    # Added once February and March were invoiced, a plan's new 3.00 fee and a 4.00
    # add-on given no start date (the subscription's) counted as recorded late: April
    # billed them back to the account's first invoice, February and March too.
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await monthly(services, "addon", 4 * EUR)
    sub = await customer(services, "c5", "rent", date(2026, 1, 1))
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    march = await run(services, "2026-03")
    await posting.post(services.pool, services.store, run_id=march)
    await create_charge(
        services.pool,
        Charge(
            "fee", "Line rent fee", "LINE", "EUR", 3 * EUR, "recurring",
            cadence="monthly", plan_id="retail",
        ),
    )  # fmt: skip
    await add_charge(services.pool, sub, "addon")
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    assert (await _charge_lines(services, "c5"))["2026-04"] == [
        ("Line rent addon", 4 * EUR),
        ("Line rent fee", 3 * EUR),
        ("Line rent rent", 10 * EUR),
    ]


async def test_a_charge_billed_by_a_rerun_of_its_period_is_not_billed_again(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await monthly(services, "late", 4 * EUR)
    cutoff = datetime(2026, 3, 31, 18, tzinfo=UTC)
    sub = await customer(services, "c2", "rent", date(2026, 1, 1))
    item = await add_charge(services.pool, sub, "late", start_date=date(2026, 3, 1))
    await _created_at(services, item, cutoff + timedelta(hours=1))

    await run(services, "2026-03", charge_cutoff=cutoff)
    march = await run(services, "2026-03")  # the operator reruns it without the cut-off
    await posting.post(services.pool, services.store, run_id=march)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    found = await _charge_lines(services, "c2")
    assert found["2026-03"] == [("Line rent late", 4 * EUR), ("Line rent rent", 10 * EUR)]
    assert found["2026-04"] == [("Line rent late", 4 * EUR), ("Line rent rent", 10 * EUR)]


async def test_an_upgrade_recorded_after_the_cutoff_bills_the_new_days_on_the_next_invoice(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await monthly(services, "plus", 31 * EUR)
    sub = await customer(services, "u1", None, date(2026, 1, 1))
    rent = await add_charge(services.pool, sub, "rent")
    await _created_at(services, rent, datetime(2026, 1, 1, tzinfo=UTC))
    cutoff = datetime(2026, 3, 31, 18, tzinfo=UTC)
    # On April 2 the operator records an upgrade from rent to plus on March 16.
    await change_charge(services.pool, rent, "plus", date(2026, 3, 16))

    march = await run(services, "2026-03", charge_cutoff=cutoff)
    await posting.post(services.pool, services.store, run_id=march)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    # March: rent for Mar 1-15, 10.00 x 15/31 = 4.838709 -> 4.84. April: plus for
    # Mar 16-31, 31.00 x 16/31 = 16.00, then April whole, 31.00.
    assert await _charge_lines(services, "u1") == {
        "2026-03": [("Line rent rent (15/31 days)", 4_840_000)],
        "2026-04": [("Line rent plus (16/31 days)", 16 * EUR), ("Line rent plus", 31 * EUR)],
    }


async def test_a_one_time_charge_created_after_the_cutoff_is_billed_by_the_next_invoice(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await create_charge(
        services.pool, Charge("setup", "Installation", "SETUP", "EUR", 25 * EUR, "one_time")
    )
    cutoff = datetime(2026, 3, 31, 18, tzinfo=UTC)
    sub = await customer(services, "o1", "rent", date(2026, 1, 1))
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE subscription_charges SET created_at = '2026-01-01T00:00Z'")
    item = await add_charge(services.pool, sub, "setup", start_date=date(2026, 3, 10))
    await _created_at(services, item, cutoff + timedelta(hours=1))

    march = await run(services, "2026-03", charge_cutoff=cutoff)
    await posting.post(services.pool, services.store, run_id=march)
    april = await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await posting.post(services.pool, services.store, run_id=april)
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))

    assert await _charge_lines(services, "o1") == {
        "2026-03": [("Line rent rent", 10 * EUR)],
        "2026-04": [("Line rent rent", 10 * EUR), ("Installation", 25 * EUR)],
        "2026-05": [("Line rent rent", 10 * EUR)],
    }
