"""Upfront bundle fees whose own invoice could not bill them (decision 0023, amended
2026-12-07): a bundle bought inside a period already invoiced ahead, a bundle dated back,
an account's first invoice, re-runs, void invoices and lines from before fee lines named
their subscription bundle.

The retail plan is invoiced monthly on the 1st at the end of the cycle: the invoice of
month M bills the upfront fees of periods starting in M + 1. Bundle ``pro`` (EUR): a
10.00 monthly upfront fee and a 30.00 one-shot upfront setup fee, each period from the
bundle's own start day.
"""

from datetime import date

from ocs.billing import posting
from ocs.billing.void import void
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoice_id, invoices, run

SETUP = ("Pro: setup (one-off)", 30 * EUR)


def monthly(first: str, after: str) -> tuple[str, int]:
    """The monthly fee's line for [first, after), whole."""
    return (f"Pro: monthly fee {first}..{after}, 10.00 per monthly", 10 * EUR)


async def sql(services: Services, statement: str, *args: object) -> None:
    """One statement on the test database."""
    async with services.pool.acquire() as conn:
        await conn.execute(statement, *args)


async def pro_bundle(services: Services) -> None:
    """The ``pro`` bundle: 10.00 a month and a 30.00 setup fee, both upfront."""
    await sql(services, "INSERT INTO bundles (id, name, currency) VALUES ('pro', 'Pro', 'EUR')")
    await sql(
        services,
        "INSERT INTO bundle_rules (bundle_id, position, kind, description, amount,"
        " periodicity, timing) VALUES"
        " ('pro', 1, 'flat_fee', 'monthly fee', 10000000, 'monthly', 'upfront'),"
        " ('pro', 2, 'flat_fee', 'setup', 30000000, 'one_shot', 'upfront')",
    )


async def buy(services: Services, subscription: int, start: date) -> None:
    """The subscription takes ``pro`` from ``start`` (recorded now)."""
    await sql(
        services,
        "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date)"
        " VALUES ($1, 'pro', $2)",
        subscription,
        start,
    )


async def fees(services: Services, account: str = "a1") -> dict[str, list[tuple[str, int]]]:
    """The account's invoices (not void) by period: their bundle fee lines."""
    return {
        i["label"]: [(line["description"], line["amount"]) for line in i["lines"]]
        for i in await invoices(services)
        if i["account"] == account and i["state"] != "void"
    }


async def test_a_bundle_bought_inside_a_period_invoiced_ahead_bills_that_period_next(
    services: Services,
) -> None:
    """January is invoiced (its advance period: February). The customer buys ``pro`` on
    February 10, starting that day: January's invoice could not bill its first period
    (Feb 10 - Mar 10) nor the setup fee, and February's bills only the period starting
    in March. February's invoice now bills them, once, also when February is run again;
    March and April bill their own periods only."""
    await billed_plan(services)
    await pro_bundle(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await buy(services, sub, date(2026, 2, 10))
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))  # a re-run of the draft
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    assert await fees(services) == {
        "2026-01": [],
        "2026-02": [
            monthly("2026-02-10", "2026-03-10"),
            monthly("2026-03-10", "2026-04-10"),
            SETUP,
        ],
        "2026-03": [monthly("2026-04-10", "2026-05-10")],
        "2026-04": [monthly("2026-05-10", "2026-06-10")],
    }


async def test_a_bundle_dated_back_bills_every_fee_period_no_invoice_billed(
    services: Services,
) -> None:
    """January to March are invoiced and posted; in April the operator records ``pro``
    from February 10. April's invoice bills the periods from Feb 10, Mar 10 and Apr 10,
    the setup fee and (ahead) the one from May 10; May's only its own ahead. A 5.00
    monthly fee due at each period's end (bundle ``care``, recorded with it) bills the
    period ended in March late and the one ending in April on time."""
    await billed_plan(services)
    await pro_bundle(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    for month, invoiced in (
        ("2026-01", date(2026, 2, 1)),
        ("2026-02", date(2026, 3, 1)),
        ("2026-03", date(2026, 4, 1)),
    ):
        run_id = await run(services, month, invoice_date=invoiced)
        await posting.post(services.pool, services.store, run_id=run_id)
    await buy(services, sub, date(2026, 2, 10))
    await sql(services, "INSERT INTO bundles (id, name, currency) VALUES ('care', 'Care', 'EUR')")
    await sql(
        services,
        "INSERT INTO bundle_rules (bundle_id, position, kind, description, amount,"
        " periodicity, timing) VALUES ('care', 1, 'flat_fee', 'care fee', 5000000, 'monthly',"
        " 'due_date')",
    )
    await sql(
        services,
        "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date)"
        " VALUES ($1, 'care', '2026-02-10')",
        sub,
    )
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))

    def care(first: str, after: str) -> tuple[str, int]:
        """The care fee's line for [first, after), whole."""
        return (f"Care: care fee {first}..{after}, 5.00 per monthly", 5 * EUR)

    found = await fees(services)
    assert found["2026-04"] == [
        monthly("2026-02-10", "2026-03-10"),
        monthly("2026-03-10", "2026-04-10"),
        monthly("2026-04-10", "2026-05-10"),
        monthly("2026-05-10", "2026-06-10"),
        SETUP,
        care("2026-02-10", "2026-03-10"),
        care("2026-03-10", "2026-04-10"),
    ]
    assert found["2026-05"] == [
        monthly("2026-06-10", "2026-07-10"),
        care("2026-04-10", "2026-05-10"),
    ]
    assert found["2026-01"] == found["2026-02"] == found["2026-03"] == []


async def test_the_first_invoice_bills_the_fees_starting_in_its_own_period(
    services: Services,
) -> None:
    """An account whose bundle starts on January 10, invoiced first for January: its
    invoice bills the period from Jan 10 and the setup fee (no invoice before it could),
    and the one from Feb 10 ahead; February's bills March 10's only."""
    await billed_plan(services)
    await pro_bundle(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await buy(services, sub, date(2026, 1, 10))
    await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))

    assert await fees(services) == {
        "2026-01": [
            monthly("2026-01-10", "2026-02-10"),
            monthly("2026-02-10", "2026-03-10"),
            SETUP,
        ],
        "2026-02": [monthly("2026-03-10", "2026-04-10")],
    }


async def test_fees_billed_by_a_void_invoice_are_not_billed_again_and_older_lines_count(
    services: Services,
) -> None:
    """Both accounts take ``pro`` from February 10 before January is invoiced: January's
    invoices bill the period from Feb 10 and the setup fee ahead, and are posted. a1's is
    voided (its credit note gave them back): February's invoice does not bill them again,
    as a voided charge's days are not (decision 0046): the operator bills them again if
    meant. a2's lines are made as they were before fee lines named their subscription
    bundle: February's invoice finds them all the same and bills neither again."""
    await billed_plan(services)
    await pro_bundle(services)
    for account in ("a1", "a2"):
        await buy(
            services, await customer(services, account, None, date(2026, 1, 1)), date(2026, 2, 10)
        )
    january = await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await posting.post(services.pool, services.store, run_id=january)
    await void(services.pool, services.store, await invoice_id(services, "a1", "2026-01"))
    # As lines from before this release are (the posted lines' guard set aside for it).
    await sql(services, "ALTER TABLE invoice_lines DISABLE TRIGGER invoice_lines_frozen")
    try:
        await sql(
            services,
            "UPDATE invoice_lines l SET subscription_bundle_id = NULL FROM invoices i"
            " WHERE l.invoice_id = i.id AND i.account_id = 'a2' AND l.kind = 'bundle_fee'",
        )
    finally:
        await sql(services, "ALTER TABLE invoice_lines ENABLE TRIGGER invoice_lines_frozen")
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))

    assert (await fees(services, "a2"))["2026-01"] == [monthly("2026-02-10", "2026-03-10"), SETUP]
    assert (await fees(services, "a1"))["2026-02"] == [monthly("2026-03-10", "2026-04-10")]
    assert (await fees(services, "a2"))["2026-02"] == [monthly("2026-03-10", "2026-04-10")]


async def test_fees_renamed_after_they_were_billed_are_not_billed_again(
    services: Services,
) -> None:
    """The customer takes ``pro`` from February 10 before January is invoiced: January's
    invoice bills its period from Feb 10 and the setup fee ahead. The operator then
    renames the bundle (``Pro`` -> ``Pro Plus``) and its fee rules (``monthly fee`` ->
    ``monthly plan fee``, ``setup`` -> ``activation``). February's invoice (and a re-run
    of it) bills the period from March 10 under the new names, and neither of January's
    fees again: a fee is known by its bundle's rule, not by the text its line reads."""
    await billed_plan(services)
    await pro_bundle(services)
    await buy(services, await customer(services, "a1", None, date(2026, 1, 1)), date(2026, 2, 10))
    await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await sql(services, "UPDATE bundles SET name = 'Pro Plus' WHERE id = 'pro'")
    await sql(
        services,
        "UPDATE bundle_rules SET description = CASE position WHEN 1 THEN 'monthly plan fee'"
        " ELSE 'activation' END WHERE bundle_id = 'pro'",
    )
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))  # a re-run of the draft

    assert await fees(services) == {
        "2026-01": [monthly("2026-02-10", "2026-03-10"), SETUP],
        "2026-02": [
            ("Pro Plus: monthly plan fee 2026-03-10..2026-04-10, 10.00 per monthly", 10 * EUR)
        ],
    }
