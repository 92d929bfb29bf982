"""A bundle's minimum-spend shortfall settled again after its dates changed dated back:
the next invoice charges or credits the difference for the periods already invoiced,
once (decision 0023, addendum 2026-12-07, "a shortfall is settled again when the
bundle's dates change dated back").

The retail plan is invoiced monthly on the 1st at the end of the cycle (UTC): the
invoice of month M bills M's usage and its commitments. Bundle ``min`` (EUR): a 30.00
monthly minimum spend (SUM of the amount the calls were charged). A shortfall is the
minimum prorated by the bundle's days in the month (``prorate``: 30.00 x days / month's
days, rounded half away from zero to the micro-unit) less what was spent over those
days; each line is rounded once to the cent. Every amount is worked out by hand.
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from ocs.billing import bundles, posting
from ocs.billing.bundles import BundleInvoice, Held, invoiced_arrears
from ocs.billing.lines import targets
from ocs.billing.periods import Period, fixed_date
from ocs.billing.rules_store import attach, detach
from ocs.billing.void import void
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, cdr, customer, run


async def sql(services: Services, statement: str) -> None:
    """One statement on the test database."""
    async with services.pool.acquire() as conn:
        await conn.execute(statement)


async def min_bundle(services: Services) -> None:
    """The ``min`` bundle: a 30.00 monthly minimum spend."""
    await sql(services, "INSERT INTO bundles (id, name, currency) VALUES ('min', 'Min', 'EUR')")
    await sql(
        services,
        "INSERT INTO bundle_indicators (bundle_id, name, function, measure)"
        " VALUES ('min', 'spend', 'sum', 'amount')",
    )
    await sql(
        services,
        "INSERT INTO bundle_rules (bundle_id, position, kind, description, indicator, amount)"
        " VALUES ('min', 1, 'commitment', 'minimum spend', 'spend', 30000000)",
    )


async def shortfalls(services: Services) -> dict[str, list[tuple[str, int, int, str]]]:
    """The invoices that stand (not void, nor credit notes) by period: their commitment
    lines as PostgreSQL holds them (description, exact amount, amount, first day)."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT i.period_label, l.description, l.exact_amount, l.amount, l.period_start"
            " FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id"
            " AND l.kind = 'bundle_commitment'"
            " WHERE i.kind = 'invoice' AND i.state <> 'void' ORDER BY i.period_start, l.position"
        )
    found: dict[str, list[tuple[str, int, int, str]]] = {}
    for r in rows:
        lines = found.setdefault(r["period_label"], [])
        if r["description"] is not None:
            first = r["period_start"].date().isoformat()
            lines.append((r["description"], r["exact_amount"], r["amount"], first))
    return found


def whole(first: str) -> tuple[str, int, int, str]:
    """A month's whole shortfall with nothing spent: 30.00."""
    return (
        "Min: minimum spend: minimum 30.00, used 0.00, shortfall charged",
        30 * EUR,
        30 * EUR,
        first,
    )


# February's shortfall settled again after the bundle was detached from Feb 10: 9 of 28
# days held, minimum 30.00 x 9/28 = 9.642857 (9.6428571...), nothing spent; 30.00 was
# charged: 9.642857 - 30.00 = -20.357143, credited -20.36.
FEBRUARY_CREDITED = (
    "Min: minimum spend 2026-02 settled again: minimum 9.642857 (9/28 days), used 0.00,"
    " 30.00 charged before, 20.357143 credited",
    -20_357_143,
    -20_360_000,
    "2026-02-01",
)


async def test_a_bundle_detached_dated_back_has_its_shortfall_credited_once(
    services: Services,
) -> None:
    """February's invoice charges the whole 30.00 shortfall (nothing spent). In March the
    operator detaches the bundle from Feb 10: March's invoice credits February's 20.36
    charged past the 9 days held (and charges no shortfall of March: no day held). A
    re-run of March's draft credits the same, once; April's invoice adds nothing. What
    stands of February's shortfall is then 30.00 - 20.36 = 9.64, the 9.642857 due."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    await attach(services.pool, sub, "min")
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await detach(services.pool, sub, "min", date(2026, 2, 10))
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))  # a re-run
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    assert await shortfalls(services) == {
        "2026-02": [whole("2026-02-01")],
        "2026-03": [FEBRUARY_CREDITED],
        "2026-04": [],
    }


async def test_a_void_of_the_settling_invoice_lets_the_next_settle_again(
    services: Services,
) -> None:
    """As above, March's invoice (crediting 20.36 of February's shortfall) is posted and
    then voided: its credit note charges the 20.36 back, so February stands charged 30.00
    again. April's invoice credits the 20.36 again, once (a re-run of its draft the
    same)."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    await attach(services.pool, sub, "min")
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    await detach(services.pool, sub, "min", date(2026, 2, 10))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    async with services.pool.acquire() as conn:
        voided = await conn.fetchval("SELECT id FROM invoices WHERE period_label = '2026-03'")
    await void(services.pool, services.store, voided)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))  # a re-run

    assert await shortfalls(services) == {
        "2026-02": [whole("2026-02-01")],
        "2026-04": [FEBRUARY_CREDITED],
    }


async def void_period(services: Services, label: str) -> str:
    """Voids the posted invoice of period ``label`` and gives its number."""
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT id, number FROM invoices WHERE kind = 'invoice' AND period_label = $1",
            label,
        )
    await void(services.pool, services.store, row["id"])
    return str(row["number"])


async def february_net(services: Services) -> tuple[int, int]:
    """What moved for February's commitment over every invoice and credit note, void ones
    included (a void invoice's line moved, and its credit note's reversal moved it back):
    exact and rounded."""
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT COALESCE(sum(l.exact_amount), 0)::bigint AS exact,"
            " COALESCE(sum(l.amount), 0)::bigint AS amount"
            " FROM invoice_lines l LEFT JOIN invoice_lines r ON r.id = l.reverses_line"
            " WHERE (l.kind = 'bundle_commitment' OR r.kind = 'bundle_commitment')"
            " AND l.period_start >= '2026-02-01' AND l.period_start < '2026-03-01'"
        )
    return row["exact"], row["amount"]


async def test_a_void_of_the_period_s_own_invoice_after_its_credit_takes_the_credit_back(
    services: Services,
) -> None:
    """February's invoice (30.00 shortfall) is posted; the bundle is detached from Feb 10;
    March's invoice, posted, credits 20.36 of it. Then February's invoice is voided: its
    credit note gives the whole 30.00 back, and the customer kept March's 20.36 credit on
    top: February netted 30.00 - 30.00 - 20.36 = -20.36. A voided period's shortfall is
    the operator's to bill again, so April's invoice charges the 20.357143 (20.36) back,
    once: February nets 0.00 (exactly: 30.00 - 30.00 - 20.357143 + 20.357143). A re-run of
    April's draft charges the same, once; May's invoice adds nothing."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    await attach(services.pool, sub, "min")
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    await detach(services.pool, sub, "min", date(2026, 2, 10))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    number = await void_period(services, "2026-02")
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))  # a re-run
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))

    assert await shortfalls(services) == {
        "2026-03": [FEBRUARY_CREDITED],
        "2026-04": [
            (
                f"Min: minimum spend 2026-02 settled again: invoice {number} was voided,"
                " -20.357143 charged since, 20.357143 charged back",
                20_357_143,
                20_360_000,
                "2026-02-01",
            )
        ],
        "2026-05": [],
    }
    assert await february_net(services) == (0, 0)


async def test_a_take_back_voided_in_turn_is_charged_back_again_once(
    services: Services,
) -> None:
    """As above (February voided after March credited 20.36 of it), April's invoice
    charging the 20.36 back is posted and then voided: its credit note credits the 20.36
    again, and February nets -20.36 once more. May's invoice charges it back again, once
    (naming both void invoices); June's adds nothing; February nets 0.00."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    await attach(services.pool, sub, "min")
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    await detach(services.pool, sub, "min", date(2026, 2, 10))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    first = await void_period(services, "2026-02")
    april = await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await posting.post(services.pool, services.store, run_id=april)
    second = await void_period(services, "2026-04")
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))
    await run(services, "2026-06", invoice_date=date(2026, 7, 1))

    assert await shortfalls(services) == {
        "2026-03": [FEBRUARY_CREDITED],
        "2026-05": [
            (
                f"Min: minimum spend 2026-02 settled again: invoices {first}, {second} were"
                " voided, -20.357143 charged since, 20.357143 charged back",
                20_357_143,
                20_360_000,
                "2026-02-01",
            )
        ],
        "2026-06": [],
    }
    assert await february_net(services) == (0, 0)


async def test_a_void_of_the_period_s_own_invoice_gives_back_a_shortfall_charged_later(
    services: Services,
) -> None:
    """February is invoiced (posted) with no bundle; ``min`` is attached from Feb 10 and
    March's invoice charges February's 15.36 shortfall (19/28 of 30.00, nothing spent:
    20.357143; with 5.00 spent on Feb 20: 15.357143). Then February's invoice is voided:
    none of February's billing stands, so April's invoice credits the 15.36 back, once
    (a re-run the same); February nets 0.00."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    await cdr(services, "c1", "a1", datetime(2026, 2, 20, 12, tzinfo=UTC), charged=5 * EUR)
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    await attach(services.pool, sub, "min", start_date=date(2026, 2, 10))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    number = await void_period(services, "2026-02")
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))  # a re-run

    assert (await shortfalls(services))["2026-04"] == [
        (
            f"Min: minimum spend 2026-02 settled again: invoice {number} was voided,"
            " 15.357143 charged since, 15.357143 credited",
            -15_357_143,
            -15_360_000,
            "2026-02-01",
        ),
        whole("2026-04-01"),
    ]
    assert await february_net(services) == (0, 0)


async def test_a_void_of_the_settling_invoice_behind_a_later_one_settles_again(
    services: Services,
) -> None:
    """March's invoice credits 20.36 of February's shortfall (detached from Feb 10) and is
    posted; April's invoice is made (nothing to settle); then March's is voided: its credit
    note charges the 20.36 back, so February stands charged 30.00 again. April's invoice,
    made after the detach, used to hide it: May's invoice looked no further. Now May's
    credits the 20.36 again, once (a re-run the same), June's adds nothing, and February
    nets the 9.64 due (30.00 - 20.36)."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    await attach(services.pool, sub, "min")
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    await detach(services.pool, sub, "min", date(2026, 2, 10))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await void_period(services, "2026-03")
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))  # a re-run
    await run(services, "2026-06", invoice_date=date(2026, 7, 1))

    assert await shortfalls(services) == {
        "2026-02": [whole("2026-02-01")],
        "2026-04": [],
        "2026-05": [FEBRUARY_CREDITED],
        "2026-06": [],
    }
    assert await february_net(services) == (30 * EUR - 20_357_143, 30 * EUR - 20_360_000)


class HistoryReads:
    """Counts the reads of an account's invoiced history by ``_settled_shortfalls``: each
    bundle it looks back for has its standing invoices read from a first day
    (``invoiced_arrears`` is called once per such read), and the first days asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.since: list[date] = []
        original = bundles.invoiced_arrears

        def counted(
            invoice: BundleInvoice, invoiced: Sequence[tuple[datetime, datetime]], first: date
        ) -> list[Period]:
            self.since.append(first)
            return original(invoice, invoiced, first)

        monkeypatch.setattr(bundles, "invoiced_arrears", counted)


class UsageMeasured:
    """Counts the windows of earlier periods whose CDR usage ``_settled_shortfalls``
    aggregates again (each a window handed to the usage query), by first day."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, before: datetime) -> None:
        self.windows: list[datetime] = []
        original = bundles._active_in

        def counted(
            held: Held, window: tuple[datetime, datetime], zone: ZoneInfo
        ) -> tuple[datetime, datetime] | None:
            found = original(held, window, zone)
            if found is not None and window[0] < before:
                self.windows.append(window[0])
            return found

        monkeypatch.setattr(bundles, "_active_in", counted)


async def test_an_unrelated_old_void_is_not_looked_at_again_by_every_later_invoice(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """January is invoiced (posted) with no bundle and voided; ``min`` is attached from
    Feb 1. February's invoice, the first made after the void, looks at it once (nothing
    to settle: January held no commitment); every invoice after it (March to July) was
    made after an invoice that saw the void and reads no history at all (each used to
    re-read every standing invoice back to January, more each month). Each month charges
    its own whole 30.00 shortfall, nothing else."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 1, 1))
    await min_bundle(services)
    january = await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    await posting.post(services.pool, services.store, run_id=january)
    await void_period(services, "2026-01")
    await attach(services.pool, sub, "min", start_date=date(2026, 2, 1))
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    reads = HistoryReads(monkeypatch)
    for month in range(3, 8):
        made = await run(services, f"2026-{month:02d}", invoice_date=date(2026, month + 1, 1))
        await posting.post(services.pool, services.store, run_id=made)

    assert reads.since == []
    assert await shortfalls(services) == {
        f"2026-{month:02d}": [whole(f"2026-{month:02d}-01")] for month in range(2, 8)
    }


async def test_a_period_settled_again_after_a_void_is_not_measured_again(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """February (30.00 shortfall) posted, the bundle detached from Feb 10, March posted
    crediting 20.36 of it, then March voided: April's invoice credits the 20.36 again,
    aggregating February's usage once. May, June and July read no history and aggregate
    February's usage no more (each used to re-read the history back to February and
    aggregate its CDRs again, for good); they add nothing, and February nets the 9.64
    due."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    await attach(services.pool, sub, "min")
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await posting.post(services.pool, services.store, run_id=february)
    await detach(services.pool, sub, "min", date(2026, 2, 10))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    await void_period(services, "2026-03")
    measured = UsageMeasured(monkeypatch, datetime(2026, 3, 1, tzinfo=UTC))
    april = await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await posting.post(services.pool, services.store, run_id=april)
    assert measured.windows == [datetime(2026, 2, 1, tzinfo=UTC)]

    measured.windows.clear()
    reads = HistoryReads(monkeypatch)
    for month in range(5, 8):
        made = await run(services, f"2026-{month:02d}", invoice_date=date(2026, month + 1, 1))
        await posting.post(services.pool, services.store, run_id=made)

    assert measured.windows == []
    assert reads.since == []
    assert await shortfalls(services) == {
        "2026-02": [whole("2026-02-01")],
        "2026-04": [FEBRUARY_CREDITED],
        "2026-05": [],
        "2026-06": [],
        "2026-07": [],
    }
    assert await february_net(services) == (30 * EUR - 20_357_143, 30 * EUR - 20_360_000)


async def test_a_bundle_attached_dated_back_has_its_shortfall_charged_once(
    services: Services,
) -> None:
    """February is invoiced with no bundle. In March the operator attaches ``min`` from
    Feb 10: 19 of February's 28 days held, minimum 30.00 x 19/28 = 20.357143
    (20.3571428...); spent over them 5.00 (a call on Feb 20; the 1.00 call on Feb 5,
    before the bundle's start, does not count): 15.357143, charged 15.36 by March's
    invoice before March's own 30.00. A re-run of March's draft charges the same, once;
    April's invoice charges only April's own shortfall."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    for entry, day, charged in (("c1", 5, 1 * EUR), ("c2", 20, 5 * EUR)):
        await cdr(services, entry, "a1", datetime(2026, 2, day, 12, tzinfo=UTC), charged=charged)
    await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await attach(services.pool, sub, "min", start_date=date(2026, 2, 10))
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))  # a re-run
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    assert await shortfalls(services) == {
        "2026-02": [],
        "2026-03": [
            (
                "Min: minimum spend 2026-02 settled again: minimum 20.357143 (19/28 days),"
                " used 5.00, 0.00 charged before, 15.357143 charged",
                15_357_143,
                15_360_000,
                "2026-02-01",
            ),
            whole("2026-03-01"),
        ],
        "2026-04": [whole("2026-04-01")],
    }


async def test_a_shortfall_line_naming_no_bundle_is_matched_by_its_description(
    services: Services,
) -> None:
    """A shortfall line written before commitment lines named their subscription bundle
    and rule (both NULL) is this rule's when its description begins as the rule's does:
    February's 30.00 so written, the bundle detached from Feb 10, March's invoice credits
    the 20.36, once. After the bundle is renamed, such a line can no longer be told from
    another bundle's: the period is left as it stands rather than charged twice (April's
    invoice, with March's credit voided, settles nothing)."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, date(2026, 2, 1))
    await min_bundle(services)
    await attach(services.pool, sub, "min")
    february = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    await sql(
        services,
        "UPDATE invoice_lines SET subscription_bundle_id = NULL, bundle_rule_position = NULL"
        " WHERE kind = 'bundle_commitment'",
    )
    await posting.post(services.pool, services.store, run_id=february)
    await detach(services.pool, sub, "min", date(2026, 2, 10))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    assert (await shortfalls(services))["2026-03"] == [FEBRUARY_CREDITED]

    await posting.post(services.pool, services.store, run_id=march)
    async with services.pool.acquire() as conn:
        voided = await conn.fetchval("SELECT id FROM invoices WHERE period_label = '2026-03'")
    await void(services.pool, services.store, voided)
    await sql(services, "UPDATE bundles SET name = 'Minimum' WHERE id = 'min'")
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    assert (await shortfalls(services))["2026-04"] == []


def test_a_start_of_cycle_invoice_settles_the_period_before_its_own() -> None:
    """On a plan invoiced at the start of the cycle, an invoice bills the arrears of the
    period before its own: the April invoice's earlier invoices of February and March
    billed January's and February's usage; from Feb 10, February's is the one to settle
    (January's ended before), and April's own arrears period (March) is not earlier."""
    cycle = fixed_date(1, date(2026, 1, 1), tz="UTC")
    april = targets(cycle, cycle.period_named("2026-04"), "start_of_cycle")
    invoice = BundleInvoice(
        "a1",
        "EUR",
        april,
        (april.arrears.start, april.arrears.end),
        cycle=cycle,
        timing="start_of_cycle",
    )
    invoiced = [
        (cycle.period_named(label).start, cycle.period_named(label).end)
        for label in ("2026-02", "2026-03")
    ]
    found = invoiced_arrears(invoice, invoiced, date(2026, 2, 10))
    assert [p.label for p in found] == ["2026-02"]
