"""Mid-cycle changes on real PostgreSQL and Redis: an upgrade then a downgrade in one cycle
(arrears and advance), an advance charge added inside an already-invoiced period, and a
cancellation credited. Amounts by hand: by local day, days used / days in the period,
each line rounded once to cents, half away from zero (decisions 0019, 0020).
"""

from datetime import UTC, date, datetime

from ocs.billing.store import add_charge, change_charge, set_status
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoices, monthly, run


def _lines(invoice: dict) -> list[tuple[str, str, int]]:
    """(kind, description, amount) of an invoice's lines, in order."""
    return [(line["kind"], line["description"], line["amount"]) for line in invoice["lines"]]


async def _item(services: Services, account_id: str) -> int:
    """The account's one subscription charge."""
    async with services.pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT sc.id FROM subscription_charges sc"
                " JOIN subscriptions s ON s.id = sc.subscription_id WHERE s.account_id = $1",
                account_id,
            )
        )


async def test_an_upgrade_then_a_downgrade_in_arrears_bills_each_side_by_its_days(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "basic", 10 * EUR)
    await monthly(services, "premium", 31 * EUR)
    await customer(services, "m1", "basic", date(2026, 1, 1))
    premium = await change_charge(services.pool, await _item(services, "m1"), "premium",
                                  date(2026, 1, 11))  # fmt: skip
    await change_charge(services.pool, premium, "basic", date(2026, 1, 21))

    await run(services, "2026-01")

    [invoice] = await invoices(services)
    assert _lines(invoice) == [
        # Jan 1..11: 10/31 of 10.00 = 3.225806.. -> 3.23
        ("proration", "Line rent basic (10/31 days)", 3_230_000),
        # Jan 21..Feb 1: 11/31 of 10.00 = 3.548387.. -> 3.55
        ("proration", "Line rent basic (11/31 days)", 3_550_000),
        # Jan 11..21: 10/31 of 31.00 = 10.00
        ("proration", "Line rent premium (10/31 days)", 10 * EUR),
    ]
    assert invoice["total"] == 16_780_000


async def test_an_upgrade_then_a_downgrade_in_advance_credits_the_old_and_charges_the_new(
    services: Services,
) -> None:
    await billed_plan(services, effective=date(2025, 12, 1))
    await monthly(services, "basic", 10 * EUR, timing="advance")
    await monthly(services, "premium", 31 * EUR, timing="advance")
    await customer(services, "m1", "basic", date(2025, 12, 1))
    await run(services, "2025-12")  # bills December (its first) and January ahead
    [december] = await invoices(services)
    assert december["total"] == 20 * EUR

    premium = await change_charge(services.pool, await _item(services, "m1"), "premium",
                                  date(2026, 1, 11))  # fmt: skip
    await change_charge(services.pool, premium, "basic", date(2026, 1, 21))
    await run(services, "2026-01")
    january = (await invoices(services))[1]

    assert _lines(january) == [
        # January was billed whole ahead; basic ran Jan 1..11, so Jan 11..Feb 1 (21 of 31
        # days) comes back: 10.00 * 21 / 31 = 6.774193.. -> -6.77.
        ("proration", "Credit: Line rent basic unused (21/31 days)", -6_770_000),
        # The basic taken again from Jan 21: February ahead, whole: 10.00.
        ("recurring", "Line rent basic", 10 * EUR),
        # ... and its 11 January days never billed: 10.00 * 11 / 31 = 3.548387.. -> 3.55.
        ("proration", "Line rent basic (11/31 days)", 3_550_000),
        # Premium Jan 11..21: 31.00 * 10 / 31 = 10.00.
        ("proration", "Line rent premium (10/31 days)", 10 * EUR),
    ]
    # -6.77 + 10.00 + 3.55 + 10.00
    assert january["total"] == 16_780_000
    credit = january["lines"][0]
    assert (credit["period_start"], credit["period_end"]) == (
        datetime(2026, 1, 11, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
    )

    # Recomputed, the draft is the same; February then has nothing left to reconcile.
    await run(services, "2026-01")
    assert (await invoices(services))[1] == january
    await run(services, "2026-02")
    february = (await invoices(services))[2]
    assert _lines(february) == [("recurring", "Line rent basic", 10 * EUR)]  # March ahead


async def test_an_advance_charge_added_inside_an_invoiced_period_bills_its_days(
    services: Services,
) -> None:
    await billed_plan(services, effective=date(2025, 12, 1))
    await monthly(services, "basic", 10 * EUR, timing="advance")
    await monthly(services, "tv", 7 * EUR, timing="advance")
    sub = await customer(services, "t1", "basic", date(2025, 12, 1))
    await run(services, "2025-12")
    await add_charge(services.pool, sub, "tv", start_date=date(2026, 1, 10))
    await run(services, "2026-01")
    # Cancelled after February was billed ahead.
    await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 16))
    await run(services, "2026-02")

    _, january, february = await invoices(services)
    assert _lines(january) == [
        ("recurring", "Line rent basic", 10 * EUR),  # February ahead
        ("recurring", "Line rent tv", 7 * EUR),  # February ahead
        # Jan 10..Feb 1, 22 of 31 days, already invoiced without tv: 7.00 * 22 / 31
        # = 4.967741.. -> 4.97.
        ("proration", "Line rent tv (22/31 days)", 4_970_000),
    ]
    assert january["total"] == 21_970_000
    # Cancelled from Feb 16: Feb 16..Mar 1 (13 of 28 days) of each comes back.
    assert _lines(february) == [
        # 10.00 * 13 / 28 = 4.642857.. -> -4.64
        ("proration", "Credit: Line rent basic unused (13/28 days)", -4_640_000),
        # 7.00 * 13 / 28 = 3.25 -> -3.25
        ("proration", "Credit: Line rent tv unused (13/28 days)", -3_250_000),
    ]
    assert february["total"] == -7_890_000
