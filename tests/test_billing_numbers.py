"""Triggered charges: a charge applied once per number assigned to the account, prorated
by day like any recurring charge, or billed once on assignment (real PostgreSQL)."""

from datetime import date

import pytest

from ocs.billing.store import Charge, assign_number, create_charge, release_number
from ocs.errors import OcsError
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoices, run


async def test_each_assigned_number_triggers_its_charge(services: Services) -> None:
    await billed_plan(services)
    await create_charge(
        services.pool,
        Charge("num-rc", "Number Recurring Charge", "DID", "EUR", 2 * EUR, "triggered",
               cadence="monthly"),
    )  # fmt: skip
    await create_charge(
        services.pool,
        Charge("tf-setup", "Toll Free Number Set-up", "TF", "EUR", 5 * EUR, "triggered"),
    )
    await customer(services, "n1", None, date(2026, 1, 1))
    await assign_number(services.pool, "n1", "441000001", "num-rc", date(2026, 1, 1))
    await assign_number(services.pool, "n1", "800123", "num-rc", date(2026, 3, 17))
    await assign_number(services.pool, "n1", "800123", "tf-setup", date(2026, 3, 17))
    await release_number(services.pool, "441000001", date(2026, 3, 11))
    with pytest.raises(OcsError, match="triggers num-rc already"):
        await assign_number(services.pool, "n1", "800123", "num-rc", date(2026, 3, 20))

    await run(services, "2026-03")

    [invoice] = await invoices(services)
    assert [(line["description"], line["amount"]) for line in invoice["lines"]] == [
        # Mar 1..11 held: 2.00 * 10 / 31 = 0.645161.. -> 0.65
        ("Number Recurring Charge 441000001 (10/31 days)", 650_000),
        # From Mar 17: 2.00 * 15 / 31 = 0.967741.. -> 0.97
        ("Number Recurring Charge 800123 (15/31 days)", 970_000),
        # Once, on assignment
        ("Toll Free Number Set-up 800123", 5 * EUR),
    ]
    assert invoice["total"] == 6_620_000
    await run(services, "2026-04")
    april = (await invoices(services))[1]
    # The set-up is not billed again; the number recurs whole.
    assert [(line["description"], line["amount"]) for line in april["lines"]] == [
        ("Number Recurring Charge 800123", 2 * EUR),
    ]


async def test_a_number_triggers_only_a_triggered_charge_in_the_account_currency(
    services: Services,
) -> None:
    await billed_plan(services)
    await create_charge(
        services.pool, Charge("rent", "Rent", "LINE", "EUR", EUR, "recurring", cadence="monthly")
    )
    await customer(services, "n1", None, date(2026, 1, 1))
    with pytest.raises(OcsError, match="not a triggered charge"):
        await assign_number(services.pool, "n1", "441000001", "rent", date(2026, 1, 1))
