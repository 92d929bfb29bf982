"""Taxes net of bundles, on real PostgreSQL and Redis (decisions 0022 and 0023).

A bundle line is taxed as what it names: free and discount credits as the
usage they credit (split by zone and rate type, each part rounded once), a
commitment as its indicator's zone or else the bundle's tax code, flat fees as
the bundle's tax code. Each invoice is drafted by a real run with taxes on; every
amount is computed by hand in the comments.
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from ocs.billing import posting, taxes
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import set_plan_billing
from ocs.services import Services
from tests.billing_helpers import cdr, customer, run
from tests.conftest import add_plan

GBP = 1_000_000
MARCH = datetime(2026, 3, 10, 12, tzinfo=UTC)


async def sql(services: Services, statement: str, *args: Any) -> None:
    """One statement on the test database."""
    async with services.pool.acquire() as conn:
        await conn.execute(statement, *args)


async def uk_plan(services: Services) -> None:
    """A GBP plan invoiced monthly; UK Mobile usage has code STD (VAT 20%), International
    code INTL (a 5% levy), and code REDUCED a 5% VAT."""
    await add_plan(services, "uk", currency="GBP")
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("uk", "fixed_date", date(2026, 1, 1), cycle_day=1),
    )
    await taxes.set_zone_tax_code(services.pool, "UK Mobile", "STD")
    await taxes.set_zone_tax_code(services.pool, "International", "INTL")
    for code, name, rate, level, target in (
        ("GB-VAT", "VAT", 20_000_000, "federal", "STD"),
        ("GB-VAT5", "VAT reduced", 5_000_000, "federal", "REDUCED"),
        ("GB-LEVY", "Levy", 5_000_000, "other", "INTL"),
    ):
        await taxes.create_tax(
            services.pool, taxes.Tax(code, name, rate, level, "GBP", date(2026, 1, 1))
        )
        await taxes.assign_tax(services.pool, "uk", code, "tax_code", target)


async def bundle_on_account(
    services: Services,
    indicator: tuple[str, str, str | None],
    rules: list[tuple[Any, ...]],
    tiers: Sequence[tuple[int, int, int]] = (),
) -> None:
    """Bundle b1 (GBP) with one indicator (function, measure, zone) named ``i``, these rules
    (position, kind, description, allowance, amount, periodicity, timing), and account gb1
    on the plan from Jan 1, holding it."""
    function, measure, zone = indicator
    await sql(services, "INSERT INTO bundles (id, name, currency) VALUES ('b1', 'Bundle', 'GBP')")
    await sql(
        services,
        "INSERT INTO bundle_indicators (bundle_id, name, function, measure, zone)"
        " VALUES ('b1', 'i', $1, $2, $3)",
        function,
        measure,
        zone,
    )
    for position, kind, description, allowance, amount, periodicity, timing in rules:
        await sql(
            services,
            "INSERT INTO bundle_rules (bundle_id, position, kind, description, indicator,"
            " allowance, amount, periodicity, timing)"
            " VALUES ('b1', $1, $2, $3, CASE WHEN $2 = 'flat_fee' THEN NULL ELSE 'i' END,"
            " $4, $5, $6, $7)",
            position,
            kind,
            description,
            allowance,
            amount,
            periodicity,
            timing,
        )
    for position, threshold, rate in tiers:
        await sql(
            services,
            "INSERT INTO bundle_discount_tiers VALUES ('b1', $1, $2, $3)",
            position,
            threshold,
            rate,
        )
    sub = await customer(services, "gb1", None, date(2026, 1, 1), plan_id="uk")
    await sql(
        services,
        "INSERT INTO subscription_bundles (subscription_id, bundle_id) VALUES ($1, 'b1')",
        sub,
    )


async def calls(services: Services, *spec: tuple[str, int, int]) -> None:
    """March calls of gb1: (zone, seconds, charged micro-GBP), one minute apart."""
    for n, (zone, seconds, charged) in enumerate(spec):
        await cdr(
            services,
            f"gb1-{n}",
            "gb1",
            MARCH.replace(minute=n),
            zone=zone,
            duration=seconds,
            charged=charged,
            plan_id="uk",
            currency="GBP",
        )


async def march(services: Services) -> tuple[asyncpg.Record, list[tuple[Any, ...]]]:
    """Draft gb1's March invoice (taxes on); the invoice and its lines
    (kind, description, zone, tax code, basis, amount)."""
    await run(services, "2026-03", plan_id="uk")
    invoice = await services.pool.fetchrow(
        "SELECT * FROM invoices WHERE account_id = 'gb1' AND period_label = '2026-03'"
    )
    assert invoice is not None
    found = await services.pool.fetch(
        "SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", invoice["id"]
    )
    return invoice, [
        (r["kind"], r["description"], r["zone"], r["tax_code"], r["basis"], r["amount"])
        for r in found
    ]


async def test_vat_is_on_usage_net_of_the_free_minutes(services: Services) -> None:
    """Two calls of 10 min in UK Mobile, 5.00 each: usage 10.00. 4 free minutes take 240 s
    of the first call: 5.00 x 240/600 = 2.00 credited. VAT 20% of 10.00 - 2.00 = 8.00
    is 1.60."""
    await uk_plan(services)
    await bundle_on_account(
        services,
        ("sum", "duration", "UK Mobile"),
        [(1, "free", "4 free minutes", 240, None, None, None)],
    )
    await calls(services, ("UK Mobile", 600, 5 * GBP), ("UK Mobile", 600, 5 * GBP))

    invoice, found = await march(services)

    assert found == [
        ("usage", "Calls to UK Mobile", "UK Mobile", None, None, 10 * GBP),
        (
            "bundle_free",
            "Bundle: 4 free minutes: 4 min of 4 min included, 2.00 credited (100%)",
            "UK Mobile",
            None,
            None,
            -2 * GBP,
        ),
        ("tax", "VAT 20% of 8.00 GBP", None, "GB-VAT", 8 * GBP, 1_600_000),
    ]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (
        8 * GBP,
        1_600_000,
        9_600_000,
    )


async def test_a_commitment_shortfall_and_fees_bear_the_bundles_tax_code(
    services: Services,
) -> None:
    """A 20.00 minimum spend over all usage (no zone): 10.00 spent, 10.00 shortfall; a 3.00
    monthly fee. Both bear the bundle's code REDUCED: 5% of 13.00 = 0.65. The calls bear
    VAT: 20% of 10.00 = 2.00."""
    await uk_plan(services)
    await taxes.set_bundle_tax_code(services.pool, "b1", "REDUCED")
    await bundle_on_account(
        services,
        ("sum", "amount", None),
        [
            (1, "commitment", "minimum spend", None, 20 * GBP, None, None),
            (2, "flat_fee", "service fee", None, 3 * GBP, "monthly", "due_date"),
        ],
    )
    await calls(services, ("UK Mobile", 600, 10 * GBP))

    invoice, found = await march(services)

    assert [(kind, zone, code, basis, amount) for kind, _, zone, code, basis, amount in found] == [
        ("usage", "UK Mobile", None, None, 10 * GBP),
        ("bundle_commitment", None, "REDUCED", None, 10 * GBP),
        ("bundle_fee", None, "REDUCED", None, 3 * GBP),
        ("tax", None, "GB-VAT", 10 * GBP, 2 * GBP),
        ("tax", None, "GB-VAT5", 13 * GBP, 650_000),
    ]
    assert found[-1][1] == "VAT reduced 5% of 13.00 GBP"
    assert (invoice["tax_total"], invoice["total"]) == (2_650_000, 25_650_000)


async def test_a_commitment_on_a_zone_is_taxed_as_that_zones_usage(services: Services) -> None:
    """A 20.00 minimum on UK Mobile spend, 10.00 spent: the 10.00 shortfall names UK Mobile,
    so VAT 20% of 10.00 + 10.00 = 4.00 (the bundle's own code is not used)."""
    await uk_plan(services)
    await taxes.set_bundle_tax_code(services.pool, "b1", "REDUCED")
    await bundle_on_account(
        services,
        ("sum", "amount", "UK Mobile"),
        [(1, "commitment", "minimum spend", None, 20 * GBP, None, None)],
    )
    await calls(services, ("UK Mobile", 600, 10 * GBP))

    invoice, found = await march(services)

    assert [(kind, zone, code, basis, amount) for kind, _, zone, code, basis, amount in found] == [
        ("usage", "UK Mobile", None, None, 10 * GBP),
        ("bundle_commitment", "UK Mobile", None, None, 10 * GBP),
        ("tax", None, "GB-VAT", 20 * GBP, 4 * GBP),
    ]
    assert invoice["total"] == 24 * GBP


async def test_a_discount_over_two_zones_is_split_by_zone_and_taxed_by_each(
    services: Services,
) -> None:
    """10% off all calls once they reach 1 minute: International 3.335 (line 3.34),
    UK Mobile 5.00. One credit per zone, each rounded once: 10% of 3.335 = 0.3335 -> -0.33;
    10% of 5.00 = -0.50. Levy 5% of 3.34 - 0.33 = 3.01: 0.1505 -> 0.15; VAT 20% of
    5.00 - 0.50 = 4.50: 0.90."""
    await uk_plan(services)
    await bundle_on_account(
        services,
        ("sum", "duration", None),
        [(1, "discount", "volume discount", None, None, None, None)],
        [(1, 60, 10_000_000)],
    )
    await calls(services, ("International", 600, 3_335_000), ("UK Mobile", 600, 5 * GBP))

    invoice, found = await march(services)

    assert found == [
        ("usage", "Calls to International", "International", None, None, 3_340_000),
        ("usage", "Calls to UK Mobile", "UK Mobile", None, None, 5 * GBP),
        (
            "bundle_discount",
            "Bundle: volume discount (International): 10% off 3.335 (20 min, tier from 1 min)",
            "International",
            None,
            None,
            -330_000,
        ),
        (
            "bundle_discount",
            "Bundle: volume discount (UK Mobile): 10% off 5.00 (20 min, tier from 1 min)",
            "UK Mobile",
            None,
            None,
            -500_000,
        ),
        ("tax", "VAT 20% of 4.50 GBP", None, "GB-VAT", 4_500_000, 900_000),
        ("tax", "Levy 5% of 3.01 GBP", None, "GB-LEVY", 3_010_000, 150_000),
    ]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (
        7_510_000,
        1_050_000,
        8_560_000,
    )


async def test_a_bundle_fee_without_a_tax_code_bears_no_tax(services: Services) -> None:
    """A 3.00 monthly fee of a bundle naming no tax code: no tax line for it."""
    await uk_plan(services)
    await bundle_on_account(
        services,
        ("sum", "amount", None),
        [(1, "flat_fee", "service fee", None, 3 * GBP, "monthly", "due_date")],
    )

    invoice, found = await march(services)

    assert [(kind, code, amount) for kind, _, _, code, _, amount in found] == [
        ("bundle_fee", None, 3 * GBP)
    ]
    assert (invoice["tax_total"], invoice["total"]) == (0, 3 * GBP)


async def test_an_untaxed_draft_is_taxed_net_of_its_bundle_lines_at_posting(
    services: Services,
) -> None:
    """The split discount above, drafted with taxes off: posting taxes the stored lines by
    the same rule, VAT 0.90 and levy 0.15."""
    await uk_plan(services)
    await bundle_on_account(
        services,
        ("sum", "duration", None),
        [(1, "discount", "volume discount", None, None, None, None)],
        [(1, 60, 10_000_000)],
    )
    await calls(services, ("International", 600, 3_335_000), ("UK Mobile", 600, 5 * GBP))
    run_id = await run(services, "2026-03", plan_id="uk", calculate_taxes=False)

    posted = await posting.post(services.pool, services.store, run_id=run_id)

    [invoice_id] = posted.numbers
    found = await services.pool.fetch(
        "SELECT tax_code, basis, amount FROM invoice_lines WHERE invoice_id = $1"
        " AND kind = 'tax' ORDER BY position",
        invoice_id,
    )
    assert [tuple(r) for r in found] == [
        ("GB-VAT", 4_500_000, 900_000),
        ("GB-LEVY", 3_010_000, 150_000),
    ]
