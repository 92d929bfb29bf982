"""An upfront bundle fee billed ahead for a period the bundle then left early: the next
invoice credits the unused days, once (decision 0023, amended: "a fee period billed
ahead is credited when the bundle ends inside it").

The retail plan is invoiced monthly on the 1st at the end of the cycle: the invoice of
month M bills the upfront fee periods starting in M + 1. Bundle ``pro`` (EUR): a 10.00
monthly upfront fee, each period from the bundle's own start day. Every amount below is
worked out by hand: the credit is what the period was billed less what its days of
service cost, 10.00 x used / days rounded half away from zero to the micro-unit, the
line then rounded once to the cent.
"""

from datetime import date

from ocs.billing import posting
from ocs.billing.rules_store import detach
from ocs.billing.store import set_status
from ocs.billing.unbilled import unbilled
from ocs.billing.void import void
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, run


async def sql(services: Services, statement: str, *args: object) -> None:
    """One statement on the test database."""
    async with services.pool.acquire() as conn:
        await conn.execute(statement, *args)


async def pro_bundle(services: Services, subscription: int, start: date, name: str = "Pro") -> None:
    """The ``pro`` bundle (10.00 a month, upfront) on the subscription from ``start``."""
    await sql(services, "INSERT INTO bundles (id, name, currency) VALUES ('pro', $1, 'EUR')", name)
    await sql(
        services,
        "INSERT INTO bundle_rules (bundle_id, position, kind, description, amount,"
        " periodicity, timing) VALUES ('pro', 1, 'flat_fee', 'monthly fee', 10000000,"
        " 'monthly', 'upfront')",
    )
    await sql(
        services,
        "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date)"
        " VALUES ($1, 'pro', $2)",
        subscription,
        start,
    )


async def fee_rows(services: Services) -> dict[str, list[tuple[str, int, int, str, str]]]:
    """The invoices (not void, nor credit notes) by period: their bundle fee lines as
    PostgreSQL holds them, (description, exact amount, amount, first day, day after
    the last)."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT i.period_label, l.description, l.exact_amount, l.amount,"
            " l.period_start, l.period_end FROM invoices i"
            " LEFT JOIN invoice_lines l ON l.invoice_id = i.id AND l.kind = 'bundle_fee'"
            " WHERE i.kind = 'invoice' AND i.state <> 'void' ORDER BY i.period_start, l.position"
        )
    found: dict[str, list[tuple[str, int, int, str, str]]] = {}
    for r in rows:
        lines = found.setdefault(r["period_label"], [])
        if r["description"] is not None:
            span = (r["period_start"].date().isoformat(), r["period_end"].date().isoformat())
            lines.append((r["description"], r["exact_amount"], r["amount"], *span))
    return found


def whole(label: str, first: str, after: str) -> tuple[str, int, int, str, str]:
    """The fee's line for the whole period ``label``, [first, after)."""
    return (f"Pro: monthly fee {label}, 10.00 per monthly", 10 * EUR, 10 * EUR, first, after)


async def test_a_bundle_ended_inside_a_february_billed_ahead_is_credited_once(
    services: Services,
) -> None:
    """January's invoice bills the fee periods from Jan 1 and (ahead) Feb 1 - Mar 1. The
    bundle is then detached from Feb 20: 19 of February's 28 days used. February's
    invoice credits the 9 unused days: used 10.00 x 19/28 = 6.785714 (6.7857142...),
    credit 6.785714 - 10.00 = -3.214286, -3.21 (10.00 x 9/28 = 3.2142857...). A re-run of
    February's draft credits the same, once. After it is posted, the end is moved to
    Feb 15: March's invoice credits only the 5 days more (used 10.00 x 14/28 = 5.00,
    billed net 6.785714: -1.785714, -1.79), and April's nothing."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await pro_bundle(services, sub, date(2026, 1, 1))
    await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await detach(services.pool, sub, "pro", date(2026, 2, 20))
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))  # a re-run
    await posting.post(services.pool, services.store, run_id=february)
    await sql(services, "UPDATE subscription_bundles SET end_date = '2026-02-15'")
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    assert await fee_rows(services) == {
        "2026-01": [
            whole("2026-01", "2026-01-01", "2026-02-01"),
            whole("2026-02", "2026-02-01", "2026-03-01"),
        ],
        "2026-02": [
            (
                "Credit: Pro: monthly fee 2026-02 unused (9/28 days)",
                -3_214_286,
                -3_210_000,
                "2026-02-20",
                "2026-03-01",
            )
        ],
        "2026-03": [
            (
                "Credit: Pro: monthly fee 2026-02 unused (14/28 days), less credited before",
                -1_785_714,
                -1_790_000,
                "2026-02-15",
                "2026-03-01",
            )
        ],
        "2026-04": [],
    }


async def test_a_cancellation_credits_a_31_day_period_begun_on_the_28th_and_one_unused(
    services: Services,
) -> None:
    """The bundle starts on Jan 31: its periods run Jan 31 - Feb 28 (28 days), Feb 28 -
    Mar 31 (31 days), Mar 31 - Apr 30. January's invoice bills the first two; February's
    bills the one starting on Mar 31 ahead. The subscription is then cancelled from
    Mar 10: March's invoice credits Feb 28 - Mar 31 for its 21 unused days (used 10.00 x
    10/31 = 3.225806, credit -6.774194, -6.77: 10.00 x 21/31 = 6.7741935...) and the
    whole period from Mar 31 (-10.00), and bills nothing ahead."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await pro_bundle(services, sub, date(2026, 1, 31))
    await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await set_status(services.pool, sub, "cancelled", on=date(2026, 3, 10))
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))

    found = await fee_rows(services)
    assert found["2026-01"] == [
        whole("2026-01-31..2026-02-28", "2026-01-31", "2026-02-28"),
        whole("2026-02-28..2026-03-31", "2026-02-28", "2026-03-31"),
    ]
    assert found["2026-02"] == [whole("2026-03-31..2026-04-30", "2026-03-31", "2026-04-30")]
    assert found["2026-03"] == [
        (
            "Credit: Pro: monthly fee 2026-02-28..2026-03-31 unused (21/31 days)",
            -6_774_194,
            -6_770_000,
            "2026-03-10",
            "2026-03-31",
        ),
        (
            "Credit: Pro: monthly fee 2026-03-31..2026-04-30 unused (30/30 days)",
            -10 * EUR,
            -10 * EUR,
            "2026-03-31",
            "2026-04-30",
        ),
    ]


async def test_an_end_recorded_before_the_invoice_billed_ahead_needs_no_credit(
    services: Services,
) -> None:
    """The bundle is detached from Feb 20 before January is invoiced: January's invoice
    bills February's period prorated already (19/28 days: 6.785714, 6.79) and February's
    credits nothing."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await pro_bundle(services, sub, date(2026, 1, 1))
    await detach(services.pool, sub, "pro", date(2026, 2, 20))
    await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))

    assert await fee_rows(services) == {
        "2026-01": [
            whole("2026-01", "2026-01-01", "2026-02-01"),
            (
                "Pro: monthly fee 2026-02 (19/28 days), 10.00 per monthly",
                6_785_714,
                6_790_000,
                "2026-02-01",
                "2026-03-01",
            ),
        ],
        "2026-02": [],
    }


async def test_a_credit_whose_charge_is_voided_after_it_is_taken_back_once(
    services: Services,
) -> None:
    """January's invoice bills Jan and (ahead) Feb 1 - Mar 1, 10.00 each, and is posted.
    The bundle is detached from Feb 20; February's invoice credits the 9 unused days
    (-3.214286, -3.21) and is posted. The operator then voids January's invoice: its
    credit note gives back 10.00 for January and 10.00 for February, so February's
    credit now returns 3.21 of a fee that stands billed nowhere. March's invoice charges
    the surplus back: February's lines that stand net -3.214286, so +3.214286, +3.21,
    over the credit's days (Feb 20 - Mar 1), naming the voided invoice. A re-run of
    March's draft bills the same once, and April's nothing: what stands of February's
    fee then nets exactly 0 (-3.214286 + 3.214286), the customer's money too (-3.21 +
    3.21)."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await pro_bundle(services, sub, date(2026, 1, 1))
    january = await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await posting.post(services.pool, services.store, run_id=january)
    await detach(services.pool, sub, "pro", date(2026, 2, 20))
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    async with services.pool.acquire() as conn:
        voided = await conn.fetchrow(
            "SELECT id, number FROM invoices WHERE period_label = '2026-01'"
        )
    note = await void(services.pool, services.store, voided["id"])
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))  # a re-run
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    async with services.pool.acquire() as conn:
        reversed_ = await conn.fetch(
            "SELECT exact_amount FROM invoice_lines WHERE invoice_id = $1"
            " AND description LIKE 'Reversal: Pro:%' ORDER BY position",
            note.credit_note_id,
        )
        net = await conn.fetchval(
            "SELECT sum(l.amount) FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id"
            " WHERE i.kind = 'invoice' AND i.state <> 'void' AND l.kind = 'bundle_fee'"
        )
    assert [r["exact_amount"] for r in reversed_] == [-10 * EUR, -10 * EUR]
    assert await fee_rows(services) == {
        "2026-02": [
            (
                "Credit: Pro: monthly fee 2026-02 unused (9/28 days)",
                -3_214_286,
                -3_210_000,
                "2026-02-20",
                "2026-03-01",
            )
        ],
        "2026-03": [
            (
                "Credit of 3.21 on Pro: monthly fee 2026-02 taken back:"
                f" invoice {voided['number']} was voided",
                3_214_286,
                3_210_000,
                "2026-02-20",
                "2026-03-01",
            )
        ],
        "2026-04": [],
    }
    assert net == 0


async def test_a_whole_period_credit_taken_back_leaves_its_voided_fee_listed_unbilled(
    services: Services,
) -> None:
    """The bundle starts on Jan 31; February's invoice bills the period Mar 31 - Apr 30
    ahead (10.00) and is posted. The subscription is cancelled from Mar 10: March's
    invoice credits Feb 28 - Mar 31's 21 unused days (-6.77) and the whole period from
    Mar 31 (-10.00), and is posted. The operator voids February's invoice: April's
    charges back the 10.00 credited of a period that stands billed nowhere (+10.00, over
    Mar 31 - Apr 30, the credit's days). That line charges no fee: the void invoice's
    fee of Mar 31 - Apr 30 is still listed as the operator's to bill again."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await pro_bundle(services, sub, date(2026, 1, 31))
    await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    await set_status(services.pool, sub, "cancelled", on=date(2026, 3, 10))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    async with services.pool.acquire() as conn:
        voided = await conn.fetchrow(
            "SELECT id, number FROM invoices WHERE period_label = '2026-02'"
        )
    await void(services.pool, services.store, voided["id"])
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    found = await fee_rows(services)
    assert found["2026-04"] == [
        (
            "Credit of 10.00 on Pro: monthly fee 2026-03-31..2026-04-30 taken back:"
            f" invoice {voided['number']} was voided",
            10 * EUR,
            10 * EUR,
            "2026-03-31",
            "2026-04-30",
        )
    ]
    listed = await unbilled(services.pool, voided["id"])
    assert [(v.description, v.amount, v.unbilled_amount) for v in listed] == [
        (
            "Pro: monthly fee 2026-03-31..2026-04-30, 10.00 per monthly",
            "10.000000",
            "10.000000",
        )
    ]


async def test_a_take_back_whose_credit_is_voided_after_it_is_reversed_once(
    services: Services,
) -> None:
    """As above, January's invoice voided after February's credited -3.21, and March's
    invoice takes the credit back (+3.214286, +3.21) and is posted. The operator then
    voids February's invoice too: its credit note charges the -3.21 back, so March's
    take-back now takes back a credit that stands nowhere and the customer pays 3.21
    twice. April's invoice reverses the take-back (-3.214286, -3.21, over the same days,
    naming March's invoice and February's voided one); a re-run of April's draft bills
    the same once, and May's nothing: what stands of February's fee nets exactly 0
    (+3.214286 - 3.214286), as nothing of it stands charged."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await pro_bundle(services, sub, date(2026, 1, 1))
    january = await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await posting.post(services.pool, services.store, run_id=january)
    await detach(services.pool, sub, "pro", date(2026, 2, 20))
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    async with services.pool.acquire() as conn:
        numbers = {
            r["period_label"]: (r["id"], r["number"])
            for r in await conn.fetch("SELECT id, number, period_label FROM invoices")
        }
    await void(services.pool, services.store, numbers["2026-01"][0])
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    await void(services.pool, services.store, numbers["2026-02"][0])
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))  # a re-run
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))

    async with services.pool.acquire() as conn:
        march_number = await conn.fetchval(
            "SELECT number FROM invoices WHERE period_label = '2026-03'"
        )
        net = await conn.fetchval(
            "SELECT sum(l.amount) FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id"
            " WHERE i.kind = 'invoice' AND i.state <> 'void' AND l.kind = 'bundle_fee'"
        )
    assert await fee_rows(services) == {
        "2026-03": [
            (
                "Credit of 3.21 on Pro: monthly fee 2026-02 taken back:"
                f" invoice {numbers['2026-01'][1]} was voided",
                3_214_286,
                3_210_000,
                "2026-02-20",
                "2026-03-01",
            )
        ],
        "2026-04": [
            (
                "Take-back of 3.21 on Pro: monthly fee 2026-02 reversed: taken back by"
                f" invoice {march_number}, the credit's invoice {numbers['2026-02'][1]}"
                " was voided",
                -3_214_286,
                -3_210_000,
                "2026-02-20",
                "2026-03-01",
            )
        ],
        "2026-05": [],
    }
    assert net == 0


async def test_a_take_back_of_a_bundle_with_a_name_as_long_as_allowed_is_reversed_once(
    services: Services,
) -> None:
    """The take-back above, of a bundle whose name is as long as a bundle's name may be
    (200 characters): its description, cut at 200 characters, ends inside the name,
    before "taken back:". January's invoice is voided after February's credit (-3.21),
    March's takes it back (+3.214286, +3.21) and is posted, then February's is voided:
    April's reverses the take-back (-3.214286, -3.21), once (a re-run of April's draft,
    then May's, add nothing), and what stands of February's fee nets 0. Read by its
    description, the take-back counted as a charge of February's fee: nothing was
    reversed and the customer paid 3.21 twice."""
    name = "Professional unlimited calling bundle " * 5 + "x" * 10
    assert len(name) == 200
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await pro_bundle(services, sub, date(2026, 1, 1), name)
    january = await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await posting.post(services.pool, services.store, run_id=january)
    await detach(services.pool, sub, "pro", date(2026, 2, 20))
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    async with services.pool.acquire() as conn:
        ids = dict(await conn.fetch("SELECT period_label, id FROM invoices"))
    await void(services.pool, services.store, ids["2026-01"])
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))  # a re-run
    await posting.post(services.pool, services.store, run_id=march)
    await void(services.pool, services.store, ids["2026-02"])
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))  # a re-run
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))

    rows = await fee_rows(services)
    assert {label: [line[1:] for line in lines] for label, lines in rows.items()} == {
        "2026-03": [(3_214_286, 3_210_000, "2026-02-20", "2026-03-01")],
        "2026-04": [(-3_214_286, -3_210_000, "2026-02-20", "2026-03-01")],
        "2026-05": [],
    }
    assert rows["2026-03"][0][0] == f"Credit of 3.21 on {name}"[:200]
    async with services.pool.acquire() as conn:
        net = await conn.fetchval(
            "SELECT sum(l.amount) FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id"
            " WHERE i.kind = 'invoice' AND i.state <> 'void' AND l.kind = 'bundle_fee'"
        )
        marked = await conn.fetch(
            "SELECT i.period_label, l.adjustment FROM invoices i"
            " JOIN invoice_lines l ON l.invoice_id = i.id"
            " WHERE i.kind = 'invoice' AND l.adjustment IS NOT NULL ORDER BY i.period_start"
        )
    assert net == 0
    assert [tuple(r) for r in marked] == [
        ("2026-03", "take_back"),
        ("2026-04", "take_back_reversal"),
    ]
