"""Advance charges reconciled per instance on real PostgreSQL (decision 0041).

A plan's own charge and a number's charge have no subscription charge, so the
lines that billed them ahead used to be told apart only by (charge, number): a
second subscription to one plan, or a number assigned again after its release,
took the first one's billing for its own and got a second credit. Each advance
line now names the subscription or the number assignment it billed.

Amounts by hand: by local day, days used / days in the period, each line
rounded once to cents, half away from zero (decisions 0019, 0020).
"""

from datetime import date
from typing import Any

import pytest

from ocs.billing.store import (
    Charge,
    Subscription,
    assign_number,
    create_charge,
    release_number,
    set_status,
    subscribe,
)
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoices, run


def _lines(invoice: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(kind, description, amount) of an invoice's lines, in order."""
    return [(line["kind"], line["description"], line["amount"]) for line in invoice["lines"]]


async def _plan_rent(services: Services) -> None:
    """The retail plan's own charge: 30.00 a month, billed in advance."""
    await create_charge(
        services.pool,
        Charge("rent", "Line rent", "LINE", "EUR", 30 * EUR, "recurring", cadence="monthly",
               timing="advance", plan_id="retail"),
    )  # fmt: skip


@pytest.mark.parametrize("before_0043", [False, True], ids=["lines-name-source", "old-lines"])
async def test_a_second_subscription_to_the_plan_does_not_take_the_first_ones_credit(
    services: Services, before_0043: bool
) -> None:
    await billed_plan(services)
    await _plan_rent(services)
    first = await customer(services, "s1", None, date(2026, 1, 1))
    await run(services, "2026-01")  # January (its first) and February ahead
    [january] = await invoices(services)
    assert january["total"] == 60 * EUR
    if before_0043:
        # February billed ahead before lines named their source: the old line is the
        # first subscription's alone, as it begins before the second one does.
        async with services.pool.acquire() as conn:
            await conn.execute(
                "UPDATE invoice_lines SET subscription_id = NULL, account_number_id = NULL"
            )

    # February was billed whole ahead for the first subscription; it ends on Feb 10 and
    # a second subscription to the same plan runs from Feb 20.
    await set_status(services.pool, first, "cancelled", on=date(2026, 2, 10))
    await subscribe(services.pool, Subscription("s1", "retail", date(2026, 2, 20)))
    await run(services, "2026-02")
    february = (await invoices(services))[1]

    assert _lines(february) == [
        # The first subscription's Feb 10..Mar 1 comes back, once: 30.00 * 19 / 28
        # = 20.357142.. -> -20.36.
        ("proration", "Credit: Line rent unused (19/28 days)", -20_360_000),
        # The second: March ahead, whole ...
        ("recurring", "Line rent", 30 * EUR),
        # ... and its February days, never billed: 30.00 * 9 / 28 = 9.642857.. -> 9.64.
        ("proration", "Line rent (9/28 days)", 9_640_000),
    ]
    # February is billed for its 18 days used (9 + 9), net of the credit: -20.36 + 9.64
    # = -10.72 (the lines are rounded one by one), and March ahead.
    assert february["total"] == 19_280_000

    # March has nothing left to reconcile: April ahead only.
    await run(services, "2026-03")
    march = (await invoices(services))[2]
    assert _lines(march) == [("recurring", "Line rent", 30 * EUR)]


async def test_a_number_assigned_again_does_not_take_the_first_assignments_credit(
    services: Services,
) -> None:
    await billed_plan(services)
    await create_charge(
        services.pool,
        Charge("num-rc", "Number Recurring Charge", "DID", "EUR", 2 * EUR, "triggered",
               cadence="monthly", timing="advance"),
    )  # fmt: skip
    await customer(services, "n1", None, date(2026, 1, 1))
    await assign_number(services.pool, "n1", "441000001", "num-rc", date(2026, 1, 1))
    await run(services, "2026-01")  # January (its first) and February ahead
    [january] = await invoices(services)
    assert january["total"] == 4 * EUR

    # Released on Feb 10 after February was billed ahead, assigned again from Feb 20.
    await release_number(services.pool, "441000001", date(2026, 2, 10))
    await assign_number(services.pool, "n1", "441000001", "num-rc", date(2026, 2, 20))
    await run(services, "2026-02")
    february = (await invoices(services))[1]

    assert _lines(february) == [
        # The first assignment's Feb 10..Mar 1, once: 2.00 * 19 / 28 = 1.357142.. -> -1.36
        ("proration", "Credit: Number Recurring Charge 441000001 unused (19/28 days)",
         -1_360_000),
        # The second assignment: March ahead, whole ...
        ("recurring", "Number Recurring Charge 441000001", 2 * EUR),
        # ... and its February days: 2.00 * 9 / 28 = 0.642857.. -> 0.64.
        ("proration", "Number Recurring Charge 441000001 (9/28 days)", 640_000),
    ]  # fmt: skip
    assert february["total"] == 1_280_000


async def test_lines_billed_before_they_named_their_source_still_reconcile(
    services: Services,
) -> None:
    await billed_plan(services)
    await _plan_rent(services)
    sub = await customer(services, "s1", None, date(2026, 1, 1))
    await run(services, "2026-01")
    # Lines written before migration 0043 name no subscription: they match every
    # instance of their charge, as the old key did.
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE invoice_lines SET subscription_id = NULL, account_number_id = NULL"
        )

    await set_status(services.pool, sub, "cancelled", on=date(2026, 2, 15))
    await run(services, "2026-02")
    february = (await invoices(services))[1]

    # Feb 15..Mar 1 comes back: 30.00 * 14 / 28 = 15.00.
    assert _lines(february) == [
        ("proration", "Credit: Line rent unused (14/28 days)", -15 * EUR),
    ]
    assert february["total"] == -15 * EUR
