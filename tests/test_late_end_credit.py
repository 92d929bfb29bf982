"""An end of service recorded after the invoices that billed days beyond it (decision 0046).

The next invoice credits the days earlier invoices billed past the end, in charge
periods before its arrears period, once: the invoice after it sees the end recorded
before its newest earlier invoice and reads nothing more. Before, no invoice ever
credited them: a quarter billed whole in March and cancelled in April from Feb 15 kept
its 45 unused days billed, and a month billed in advance kept the days after its end.

Plan ``retail``: EUR, invoiced on the 1st at the end of each cycle, anchored
2026-01-01, so quarters run Jan 1 - Apr 1 - Jul 1. Every line and amount is read from
PostgreSQL; amounts are computed by hand: days / days in the charge period, each line
rounded once to cents (decisions 0019, 0020).
"""

from datetime import date, datetime

from ocs.billing import posting
from ocs.billing.store import (
    Charge,
    assign_number,
    create_charge,
    end_charge,
    release_number,
    set_status,
)
from ocs.billing.void import void
from ocs.services import Services
from tests.billing_helpers import (
    EUR,
    ChargeLine,
    billed_plan,
    charge_lines_billed,
    customer,
    invoice_id,
    monthly,
    run_months,
)

# (invoice period, kind, description, first day, day after the last, exact, amount)

# A quarter of Jan 1 - Apr 1 (90 days) billed whole by March's invoice, its last month.
QUARTER: ChargeLine = ("2026-03", "recurring", "Fee qtr", date(2026, 1, 1), date(2026, 4, 1),
                100 * EUR, 100 * EUR)  # fmt: skip
# Cancelled from Feb 15: Feb 15 .. Mar 31 unused, 14 + 31 = 45 of its 90 days:
# 100.00 x 45 / 90 = -50.00.
QUARTER_CREDIT = ("proration", "Credit: Fee qtr unused (45/90 days)", date(2026, 2, 15),
                  date(2026, 4, 1), -50 * EUR, -50 * EUR)  # fmt: skip


async def _quarterly(services: Services) -> None:
    """A recurring charge of 100.00 EUR a quarter, billed in arrears."""
    await create_charge(
        services.pool,
        Charge("qtr", "Fee qtr", "LINE", "EUR", 100 * EUR, "recurring",
               cadence="quarterly", timing="arrears", gl_code="4000"),
    )  # fmt: skip


async def _post(services: Services, account: str, label: str) -> int:
    """Post the account's invoice of that period; its id."""
    found = await invoice_id(services, account, label)
    await posting.post(services.pool, services.store, invoice_ids=[found])
    return found


async def test_a_cancellation_recorded_after_the_quarter_was_billed_is_credited_once(
    services: Services,
) -> None:
    await billed_plan(services)
    await _quarterly(services)
    sub = await customer(services, "q1", "qtr", date(2026, 1, 1))
    await run_months(services, "2026-01", "2026-02", "2026-03")
    # Recorded in April, effective Feb 15: March's invoice billed the quarter whole.
    await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 15))

    await run_months(services, "2026-04", "2026-05", "2026-06")

    # April's invoice gives the 45 unused days back; May and June add nothing.
    assert await charge_lines_billed(services, "q1", "qtr") == [
        QUARTER,
        ("2026-04", *QUARTER_CREDIT),
    ]


async def test_redrafting_the_invoice_with_the_credit_gives_the_same_single_credit(
    services: Services,
) -> None:
    await billed_plan(services)
    await _quarterly(services)
    sub = await customer(services, "q1", "qtr", date(2026, 1, 1))
    await run_months(services, "2026-01", "2026-02", "2026-03")
    await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 15))
    await run_months(services, "2026-04")

    # April's draft recomputed twice: its own credit is never read as an earlier
    # invoice's, and the end is still newer than March's invoice.
    await run_months(services, "2026-04", "2026-04")

    assert await charge_lines_billed(services, "q1", "qtr") == [
        QUARTER,
        ("2026-04", *QUARTER_CREDIT),
    ]


def _advance_cut_on_feb_15(label: str) -> list[ChargeLine]:
    """The lines of a 28.00 monthly advance charge from Jan 1, invoiced for January and
    February, then ended from Feb 15 by an end recorded in March."""
    month = ("recurring", label)
    return [
        ("2026-01", *month, date(2026, 2, 1), date(2026, 3, 1), 28 * EUR, 28 * EUR),
        ("2026-01", *month, date(2026, 1, 1), date(2026, 2, 1), 28 * EUR, 28 * EUR),
        ("2026-02", *month, date(2026, 3, 1), date(2026, 4, 1), 28 * EUR, 28 * EUR),
        # March's invoice: Feb 15 .. Feb 28, 14 of February's 28 days: 28.00 x 14 / 28 =
        # -14.00 (lost before); then March, billed ahead and not used at all: -28.00.
        ("2026-03", "proration", f"Credit: {label} unused (14/28 days)",
         date(2026, 2, 15), date(2026, 3, 1), -14 * EUR, -14 * EUR),
        ("2026-03", "proration", f"Credit: {label} unused (31/31 days)",
         date(2026, 3, 1), date(2026, 4, 1), -28 * EUR, -28 * EUR),
    ]  # fmt: skip


async def test_a_charge_ended_after_its_advance_month_was_billed_gets_its_days_back(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "adv", 28 * EUR, timing="advance")
    sub = await customer(services, "m1", "adv", date(2026, 1, 1))
    # January's invoice bills February ahead and January (begun in it), February's
    # March ahead.
    await run_months(services, "2026-01", "2026-02")
    async with services.pool.acquire() as conn:
        item = await conn.fetchval(
            "SELECT id FROM subscription_charges WHERE subscription_id = $1", sub
        )
    # Recorded in March, effective Feb 15: February's invoice was made before it.
    await end_charge(services.pool, item, date(2026, 2, 15))

    await run_months(services, "2026-03", "2026-04")

    assert await charge_lines_billed(services, "m1", "adv") == _advance_cut_on_feb_15(
        "Line rent adv"
    )


async def test_a_number_released_from_a_past_day_gets_its_billed_days_back(
    services: Services,
) -> None:
    await billed_plan(services)
    await create_charge(
        services.pool,
        Charge("num-rc", "Number", "DID", "EUR", 28 * EUR, "triggered", cadence="monthly",
               timing="advance"),
    )  # fmt: skip
    await customer(services, "n1", None, date(2026, 1, 1))
    await assign_number(services.pool, "n1", "441000001", "num-rc", date(2026, 1, 1))
    await run_months(services, "2026-01", "2026-02")
    # Released in March from Feb 15, after February's invoice was made.
    await release_number(services.pool, "441000001", date(2026, 2, 15))

    await run_months(services, "2026-03", "2026-04")

    assert await charge_lines_billed(services, "n1", "num-rc") == _advance_cut_on_feb_15(
        "Number 441000001"
    )


async def test_an_end_recorded_before_the_invoice_was_made_changes_nothing(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "adv", 28 * EUR, timing="advance")
    sub = await customer(services, "m1", "adv", date(2026, 1, 1))
    await run_months(services, "2026-01")
    # Recorded in February, before February's invoice: that invoice credits it.
    await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 15))

    await run_months(services, "2026-02", "2026-03", "2026-04")

    async with services.pool.acquire() as conn:
        recorded: datetime = await conn.fetchval(
            "SELECT end_recorded_at FROM subscriptions WHERE id = $1", sub
        )
        made: datetime = await conn.fetchval(
            "SELECT created_at FROM invoices WHERE account_id = 'm1' AND period_label = '2026-02'"
        )
    assert recorded < made
    month = ("recurring", "Line rent adv")
    # As before 0046: February's invoice gives Feb 15 .. Feb 28 back (14/28 of 28.00)
    # and bills nothing ahead; March and April, whose newest earlier invoice was made
    # after the end was recorded, add nothing.
    assert await charge_lines_billed(services, "m1", "adv") == [
        ("2026-01", *month, date(2026, 2, 1), date(2026, 3, 1), 28 * EUR, 28 * EUR),
        ("2026-01", *month, date(2026, 1, 1), date(2026, 2, 1), 28 * EUR, 28 * EUR),
        ("2026-02", "proration", "Credit: Line rent adv unused (14/28 days)",
         date(2026, 2, 15), date(2026, 3, 1), -14 * EUR, -14 * EUR),
    ]  # fmt: skip


async def test_a_voided_credit_is_given_again_and_voided_billing_is_not_credited(
    services: Services,
) -> None:
    await billed_plan(services)
    await _quarterly(services)
    kept = await customer(services, "q1", "qtr", date(2026, 1, 1))
    lost = await customer(services, "q2", "qtr", date(2026, 1, 1))
    await run_months(services, "2026-01", "2026-02", "2026-03")
    # q2's March invoice, which billed the quarter, is voided: it billed nothing.
    await void(services.pool, services.store, await _post(services, "q2", "2026-03"))
    for sub in (kept, lost):
        await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 15))
    await run_months(services, "2026-04")
    # q1's April invoice, with the credit, is voided: the credit is no longer given.
    await void(services.pool, services.store, await _post(services, "q1", "2026-04"))

    await run_months(services, "2026-05", "2026-06")

    # May's newest earlier invoice that stands is March's, made before the end was
    # recorded: May gives the 45 days back, and June nothing more.
    assert await charge_lines_billed(services, "q1", "qtr") == [
        QUARTER,
        ("2026-05", *QUARTER_CREDIT),
    ]
    # Nothing of q2's quarter stands billed: nothing credited, and the days it used are
    # not billed again behind the operator's back.
    assert await charge_lines_billed(services, "q2", "qtr") == []
