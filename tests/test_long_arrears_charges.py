"""Arrears charges whose period is longer than the invoice period (decision 0043).

Such a charge period is billed by the invoice whose arrears period holds its last
day of service: the charge period's last day, or the item's last day (the day
before its end) when it ends inside it. It used to be billed whole by the invoice
of the month it began: before it was used, and never adjusted for an early end.

Plan ``retail``: EUR, invoiced on the 1st at the end of each cycle, anchored
2026-01-01, so quarters run Jan 1 - Apr 1 - Jul 1 and weeks from Thursday Jan 1.
Every line and amount is read from PostgreSQL; amounts are computed by hand:
days used / days in the charge period, each line rounded once to cents, half away
from zero (decisions 0019, 0020).
"""

from datetime import date

from ocs.billing.cycles import PlanBilling
from ocs.billing.store import Charge, create_charge, set_plan_billing, set_status
from ocs.services import Services
from tests.billing_helpers import (
    EUR,
    ChargeLine,
    billed_plan,
    charge_lines_billed,
    customer,
    invoice_id,
    monthly,
    run,
    run_months,
)
from tests.conftest import add_plan

# (invoice period, kind, description, first day, day after the last, exact, amount)


async def _recurring(services: Services, charge_id: str, amount: int, cadence: str) -> None:
    """A recurring EUR charge of ``amount`` micro-EUR a ``cadence``, billed in arrears."""
    await create_charge(
        services.pool,
        Charge(charge_id, f"Fee {charge_id}", "LINE", "EUR", amount, "recurring",
               cadence=cadence, timing="arrears", gl_code="4000"),
    )  # fmt: skip


async def _labels(services: Services, account: str) -> list[str]:
    """The periods the account has an invoice for, in order."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT period_label FROM invoices WHERE account_id = $1 AND kind = 'invoice'"
            " ORDER BY period_start",
            account,
        )
    return [r["period_label"] for r in rows]


async def test_a_quarter_in_arrears_is_billed_once_by_the_month_it_ends(
    services: Services,
) -> None:
    await billed_plan(services)
    await _recurring(services, "qtr", 90 * EUR, "quarterly")
    await customer(services, "q1", "qtr", date(2026, 1, 1))

    await run_months(services, "2026-01", "2026-02", "2026-03", "2026-04")

    # January and February bill nothing of the quarter, March (its last day, Mar 31)
    # bills it whole: 90.00. April's quarter ends on Jun 30: nothing yet. The quarter
    # ends at Apr 1, excluded: April does not bill it again.
    assert await charge_lines_billed(services, "q1", "qtr", with_void=True) == [
        ("2026-03", "recurring", "Fee qtr", date(2026, 1, 1), date(2026, 4, 1),
         90 * EUR, 90 * EUR),
    ]  # fmt: skip


async def test_a_quarter_cancelled_mid_way_is_billed_by_day_where_service_ends(
    services: Services,
) -> None:
    await billed_plan(services)
    await _recurring(services, "qtr", 100 * EUR, "quarterly")
    sub = await customer(services, "q1", "qtr", date(2026, 1, 1))
    await run_months(services, "2026-01")
    # Cancelled on Feb 11 (the first day without service): the quarter is used
    # Jan 1 .. Feb 10, 41 of its 90 days.
    await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 11))

    await run_months(services, "2026-02", "2026-03", "2026-04")

    # On February's invoice, which holds the last day of service (Feb 10): 100.00 x 41
    # / 90 = 45.5555.. -> 45_555_556 micro, 45.56 on the line. Never the whole quarter,
    # and nothing when the quarter ends (March) or after.
    assert await charge_lines_billed(services, "q1", "qtr", with_void=True) == [
        ("2026-02", "proration", "Fee qtr (41/90 days)", date(2026, 1, 1), date(2026, 2, 11),
         45_555_556, 45_560_000),
    ]  # fmt: skip


async def test_a_quarter_ended_on_an_invoice_boundary_is_billed_by_the_month_before(
    services: Services,
) -> None:
    await billed_plan(services)
    await _recurring(services, "qtr", 100 * EUR, "quarterly")
    sub = await customer(services, "q1", "qtr", date(2026, 1, 1))
    await set_status(services.pool, sub, "cancelled", on=date(2026, 3, 1))

    await run_months(services, "2026-01", "2026-02", "2026-03")

    # The end is excluded: the last day of service is Feb 28, on February's invoice.
    # Jan 1 .. Feb 28 is 59 of 90 days: 100.00 x 59 / 90 = 65.5555.. -> 65.56.
    assert await charge_lines_billed(services, "q1", "qtr", with_void=True) == [
        ("2026-02", "proration", "Fee qtr (59/90 days)", date(2026, 1, 1), date(2026, 3, 1),
         65_555_556, 65_560_000),
    ]  # fmt: skip


async def test_an_end_recorded_after_its_months_invoice_is_billed_when_the_quarter_ends(
    services: Services,
) -> None:
    await billed_plan(services)
    await _recurring(services, "qtr", 100 * EUR, "quarterly")
    sub = await customer(services, "q1", "qtr", date(2026, 1, 1))
    await run_months(services, "2026-01", "2026-02")
    # Recorded in March, effective Feb 11: February's invoice, which holds the last day
    # of service, was drafted before it and billed nothing of the quarter.
    await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 11))

    await run_months(services, "2026-03", "2026-04")

    # The quarter's own last day settles it: 41 of 90 days, 45.56, on March's invoice.
    assert await charge_lines_billed(services, "q1", "qtr", with_void=True) == [
        ("2026-03", "proration", "Fee qtr (41/90 days)", date(2026, 1, 1), date(2026, 2, 11),
         45_555_556, 45_560_000),
    ]  # fmt: skip


async def test_a_quarter_billed_whole_when_it_began_is_not_billed_again(
    services: Services,
) -> None:
    await billed_plan(services)
    await _recurring(services, "qtr", 90 * EUR, "quarterly")
    await monthly(services, "rent", 10 * EUR)
    kept = await customer(services, "q1", "qtr", date(2026, 1, 1))
    ended = await customer(services, "q2", "qtr", date(2026, 1, 1))
    for sub in (kept, ended):
        async with services.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO subscription_charges (subscription_id, charge_id) VALUES ($1, 'rent')",
                sub,
            )
    await run_months(services, "2026-01")
    # January's invoices as a release before 0043 wrote them: the whole quarter billed
    # ahead of its use, when it began, beside the month's rent.
    for account, sub in (("q1", kept), ("q2", ended)):
        async with services.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO invoice_lines (invoice_id, position, kind, description,"
                " period_start, period_end, quantity, amount, exact_amount, moves_money,"
                " charge_id, item_id, subscription_id)"
                " SELECT $1, 2, 'recurring', 'Fee qtr', '2026-01-01Z', '2026-04-01Z', 1,"
                " $2, $2, true, 'qtr', sc.id, $3 FROM subscription_charges sc"
                " WHERE sc.subscription_id = $3 AND sc.charge_id = 'qtr'",
                await invoice_id(services, account, "2026-01"),
                90 * EUR,
                sub,
            )
    await set_status(services.pool, ended, "cancelled", on=date(2026, 2, 16))

    await run_months(services, "2026-02", "2026-03")

    old = ("2026-01", "recurring", "Fee qtr", date(2026, 1, 1), date(2026, 4, 1),
           90 * EUR, 90 * EUR)  # fmt: skip
    # Kept: March, where the quarter ends, finds it billed: nothing more.
    assert await charge_lines_billed(services, "q1", "qtr", with_void=True) == [old]
    # Cancelled on Feb 16: February gives back Feb 16 .. Mar 31, 44 of 90 days billed
    # but not used: 90.00 x 44 / 90 = -44.00. Nothing more in March.
    assert await charge_lines_billed(services, "q2", "qtr", with_void=True) == [
        old,
        ("2026-02", "proration", "Credit: Fee qtr unused (44/90 days)", date(2026, 2, 16),
         date(2026, 4, 1), -44 * EUR, -44 * EUR),
    ]  # fmt: skip


async def test_a_week_across_a_months_end_is_billed_by_the_month_it_ends(
    services: Services,
) -> None:
    await billed_plan(services)
    await _recurring(services, "wk", 7 * EUR, "weekly")
    await customer(services, "w1", "wk", date(2026, 1, 1))

    await run_months(services, "2026-01", "2026-02")

    week = ("recurring", "Fee wk")
    found = await charge_lines_billed(services, "w1", "wk", with_void=True)
    # January: the four weeks that end in it (Jan 1 .. Jan 29); the week Jan 29 .. Feb 5
    # ends on Feb 4 and is February's, with the three after it; Feb 26 .. Mar 5 is March's.
    assert [(r[0], r[3], r[4]) for r in found] == [
        ("2026-01", date(2026, 1, 1), date(2026, 1, 8)),
        ("2026-01", date(2026, 1, 8), date(2026, 1, 15)),
        ("2026-01", date(2026, 1, 15), date(2026, 1, 22)),
        ("2026-01", date(2026, 1, 22), date(2026, 1, 29)),
        ("2026-02", date(2026, 1, 29), date(2026, 2, 5)),
        ("2026-02", date(2026, 2, 5), date(2026, 2, 12)),
        ("2026-02", date(2026, 2, 12), date(2026, 2, 19)),
        ("2026-02", date(2026, 2, 19), date(2026, 2, 26)),
    ]
    assert all((r[1], r[2], r[5], r[6]) == (*week, 7 * EUR, 7 * EUR) for r in found)


async def test_the_first_invoice_bills_no_day_before_its_period(services: Services) -> None:
    await billed_plan(services)
    await _recurring(services, "wk", 7 * EUR, "weekly")
    await run_months(services, "2026-01")
    # Created after January was invoiced, with a week from Jan 20: its billing begins
    # with its first invoice, February's.
    await customer(services, "w2", "wk", date(2026, 1, 20))

    await run_months(services, "2026-02")

    found = await charge_lines_billed(services, "w2", "wk", with_void=True)
    assert await _labels(services, "w2") == ["2026-02"]
    # The week Jan 29 .. Feb 5 ends in February: only its days from Feb 1, 4 of 7:
    # 7.00 x 4 / 7 = 4.00. Jan 20 .. Jan 29 is never billed.
    assert found[0] == (
        "2026-02", "proration", "Fee wk (4/7 days)", date(2026, 2, 1), date(2026, 2, 5),
        4 * EUR, 4 * EUR,
    )  # fmt: skip
    assert [(r[3], r[4], r[6]) for r in found[1:]] == [
        (date(2026, 2, 5), date(2026, 2, 12), 7 * EUR),
        (date(2026, 2, 12), date(2026, 2, 19), 7 * EUR),
        (date(2026, 2, 19), date(2026, 2, 26), 7 * EUR),
    ]


async def test_a_quarter_ended_early_is_not_billed_again_for_days_before_the_first_invoice(
    services: Services,
) -> None:
    """Its first invoice bills only its own days; the quarter's end, a month later, does
    not go back for the days before that invoice."""
    await billed_plan(services)
    await _recurring(services, "qtr", 90 * EUR, "quarterly")
    await run_months(services, "2026-01")
    # Created after January was invoiced, with the charge from Jan 10; cancelled on
    # Feb 20, the first day without service.
    sub = await customer(services, "q2", "qtr", date(2026, 1, 10))
    await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 20))

    await run_months(services, "2026-02", "2026-03", "2026-04")

    # February, its first invoice, holds the last day of service: Feb 1 .. Feb 19, 19 of
    # the quarter's 90 days: 90.00 x 19 / 90 = 19.00. March, where the quarter ends,
    # does not bill Jan 10 .. Jan 31 after the customer has gone.
    assert await charge_lines_billed(services, "q2", "qtr", with_void=True) == [
        ("2026-02", "proration", "Fee qtr (19/90 days)", date(2026, 2, 1), date(2026, 2, 20),
         19 * EUR, 19 * EUR),
    ]  # fmt: skip


async def test_a_quarter_on_a_start_of_cycle_plan_is_billed_when_the_next_quarter_opens(
    services: Services,
) -> None:
    await add_plan(services, "retail")
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "fixed_date", date(2026, 1, 1), cycle_day=1,
                    invoice_timing="start_of_cycle"),
    )  # fmt: skip
    await _recurring(services, "qtr", 90 * EUR, "quarterly")
    await customer(services, "q1", "qtr", date(2026, 1, 1))

    # Each invoice of period P (run at P's start) bills the arrears of the month before.
    for label in ("2026-02", "2026-03", "2026-04"):
        await run(services, label, invoice_date=date(2026, int(label[5:]), 1))

    # Q1 ends on Mar 31: April's invoice (its arrears month is March) bills it.
    assert await charge_lines_billed(services, "q1", "qtr", with_void=True) == [
        ("2026-04", "recurring", "Fee qtr", date(2026, 1, 1), date(2026, 4, 1),
         90 * EUR, 90 * EUR),
    ]  # fmt: skip


async def test_a_monthly_arrears_charge_on_a_monthly_cycle_is_unchanged(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    whole = await customer(services, "m1", "rent", date(2026, 1, 1))
    await customer(services, "m2", "rent", date(2026, 1, 11))
    await set_status(services.pool, whole, "cancelled", on=date(2026, 2, 20))

    await run_months(services, "2026-01", "2026-02", "2026-03")

    rows: dict[str, list[ChargeLine]] = {
        "m1": [
            # January whole, on January's invoice.
            ("2026-01", "recurring", "Line rent rent", date(2026, 1, 1), date(2026, 2, 1),
             10 * EUR, 10 * EUR),
            # February's 19 of 28 days: 10.00 x 19 / 28 = 6.7857.. -> 6.79; then nothing.
            ("2026-02", "proration", "Line rent rent (19/28 days)", date(2026, 2, 1),
             date(2026, 2, 20), 6_785_714, 6_790_000),
        ],
        "m2": [
            # From Jan 11: 21 of 31 days, 6.7741.. -> 6.77; then each month whole.
            ("2026-01", "proration", "Line rent rent (21/31 days)", date(2026, 1, 11),
             date(2026, 2, 1), 6_774_194, 6_770_000),
            ("2026-02", "recurring", "Line rent rent", date(2026, 2, 1), date(2026, 3, 1),
             10 * EUR, 10 * EUR),
            ("2026-03", "recurring", "Line rent rent", date(2026, 3, 1), date(2026, 4, 1),
             10 * EUR, 10 * EUR),
        ],
    }  # fmt: skip
    for account, expected in rows.items():
        assert await charge_lines_billed(services, account, "rent", with_void=True) == expected


async def test_a_named_period_shorter_than_its_charge_period_bills_its_own_days(
    services: Services,
) -> None:
    """A manual plan's period is named by an operator and its charge periods start with
    it: no later invoice sees them again, so a monthly charge billed for a named 10 days
    pays those 10 days of its month there, not nothing (nor the whole month)."""
    await add_plan(services, "desk")
    await set_plan_billing(
        services.pool, services.store, PlanBilling("desk", "manual", date(2026, 1, 1))
    )
    await _recurring(services, "rent", 10 * EUR, "monthly")
    await customer(services, "m1", "rent", date(2026, 1, 1), plan_id="desk")

    await run(services, "2026-02-01..2026-02-11", plan_id="desk", invoice_date=date(2026, 3, 1))

    # The charge's month from the named period's first day: Feb 1 - Mar 1, 28 days.
    # 10 of them: 10.00 x 10 / 28 = 3.571428.. -> 3.57.
    assert await charge_lines_billed(services, "m1", "rent", with_void=True) == [
        ("2026-02-01..2026-02-11", "proration", "Fee rent (10/28 days)", date(2026, 2, 1),
         date(2026, 2, 11), 3_571_429, 3_570_000),
    ]  # fmt: skip


def test_earlier_lines_are_read_only_where_a_long_period_is_settled() -> None:
    """A yearly arrears charge on a monthly cycle reads earlier invoices' lines only on
    the invoice that settles its year (its end, or the item's), not on every month's:
    a run of 100,000 accounts would read months of lines for nothing."""
    from ocs.billing.cycles import schedule
    from ocs.billing.lines import Item, billed_window_start, targets

    cycle = schedule(PlanBilling("retail", "fixed_date", date(2026, 1, 1), cycle_day=1))

    def window(month: int, end: date | None = None) -> date | None:
        item = Item("yr", 1, "Fee yr", 365 * EUR, 1, "recurring", "yearly", None, "arrears",
                    date(2026, 1, 1), end)  # fmt: skip
        invoice = cycle.period(cycle.index_of_day(date(2026, month, 1)))
        start = billed_window_start([item], cycle, targets(cycle, invoice, "end_of_cycle"))
        return None if start is None else start.date()

    assert window(1) is None  # its year begins in January: nothing earlier to read
    assert window(6) is None  # in the middle of its year
    assert window(12) == date(2026, 1, 1)  # December settles the year
    assert window(6, end=date(2026, 6, 15)) == date(2026, 1, 1)  # its end, in June
