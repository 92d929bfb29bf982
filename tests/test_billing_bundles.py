"""Bundles on real PostgreSQL: free minutes, discount tiers, commitments, fees, resiliation.

CDRs are written straight into PostgreSQL (``billing_helpers.cdr``); ``bundle_lines``
is called for the January 2026 invoice of an end-of-cycle monthly plan (UTC), whose
arrears period and usage window is January and whose advance period is February.
Every expected amount is computed by hand in the comments (decision 0023).
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import pytest

from ocs.billing import posting
from ocs.billing.bundles import BundleInvoice, add_months, bundle_lines, months_left
from ocs.billing.lines import Line, targets
from ocs.billing.periods import fixed_date
from ocs.billing.store import set_status
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, cdr, customer, invoices, run

CYCLE = fixed_date(1, date(2026, 1, 1), tz="UTC")
JANUARY = CYCLE.period_named("2026-01")
WHICH = targets(CYCLE, JANUARY, "end_of_cycle")
# (position, kind, description, indicator, allowance, amount, periodicity, timing)
RuleRow = tuple[int, str, str, str | None, int | None, int | None, str | None, str | None]


def at(day: int, hour: int = 12) -> datetime:
    """An instant in January 2026 (UTC)."""
    return datetime(2026, 1, day, hour, tzinfo=UTC)


async def sql(services: Services, statement: str, *args: Any) -> None:
    """One statement on the test database."""
    async with services.pool.acquire() as conn:
        await conn.execute(statement, *args)


async def bundle(
    services: Services,
    indicators: Sequence[tuple[str, str, str, str | None]],
    rules: Sequence[RuleRow],
    *,
    term: int | None = None,
    resiliation: str = "none",
    fee: int = 0,
) -> None:
    """Bundle ``b1`` (EUR): indicators (name, function, measure, zone) and rules
    (position, kind, description, indicator, allowance, amount, periodicity, timing)."""
    await sql(
        services,
        "INSERT INTO bundles (id, name, currency, commitment_months, resiliation,"
        " resiliation_fee) VALUES ('b1', 'Business bundle', 'EUR', $1, $2, $3)",
        term,
        resiliation,
        fee,
    )
    for name, function, measure, zone in indicators:
        await sql(
            services,
            "INSERT INTO bundle_indicators (bundle_id, name, function, measure, zone)"
            " VALUES ('b1', $1, $2, $3, $4)",
            name,
            function,
            measure,
            zone,
        )
    for rule in rules:
        await sql(
            services,
            "INSERT INTO bundle_rules (bundle_id, position, kind, description, indicator,"
            " allowance, amount, periodicity, timing)"
            " VALUES ('b1', $1, $2, $3, $4, $5, $6, $7, $8)",
            *rule,
        )


async def account(
    services: Services, start: date, *, bundle_start: date | None = None, end: date | None = None
) -> None:
    """Account ``a1`` on the retail plan from ``start``, holding bundle ``b1``."""
    await billed_plan(services)
    sub = await customer(services, "a1", None, start)
    await sql(
        services,
        "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date, end_date)"
        " VALUES ($1, 'b1', $2, $3)",
        sub,
        bundle_start,
        end,
    )


async def lines(services: Services) -> list[Line]:
    """a1's bundle lines on its January 2026 invoice."""
    invoice = BundleInvoice("a1", "EUR", WHICH, (JANUARY.start, JANUARY.end))
    async with services.pool.acquire() as conn:
        found = await bundle_lines(conn, [invoice])
    return found.get("a1", [])


async def calls(services: Services, *spec: tuple[int, int, int], zone: str = "UK Mobile") -> None:
    """Calls (day, seconds, charged micro-EUR) in January."""
    for n, (day, seconds, charged) in enumerate(spec):
        await cdr(
            services, f"{zone}-{n}", "a1", at(day, 12), duration=seconds, charged=charged, zone=zone
        )


FREE_MINUTES: list[RuleRow] = [
    (1, "free", "100 free minutes to UK Mobile", "uk", 6000, None, None, None)
]


async def test_bundle_free_minutes_credit_what_the_first_minutes_cost(services: Services) -> None:
    """100 free minutes (6000 s): calls of 3000 s (3.00), 2400 s (2.40) and 1200 s (1.20)
    in that order. Included: 3000 + 2400 + 600 of the third = 6000 s. Credit:
    3.00 + 2.40 + 1.20 x 600/1200 = 6.00. Calls to Germany are not in the indicator."""
    await bundle(services, [("uk", "sum", "duration", "UK Mobile")], FREE_MINUTES)
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 3000, 3 * EUR), (4, 2400, 2_400_000), (5, 1200, 1_200_000))
    await calls(services, (6, 600, 700_000), zone="Germany")
    [line] = await lines(services)
    assert (line.kind, line.quantity, line.exact, line.amount) == (
        "bundle_free",
        6000,
        -6 * EUR,
        -6 * EUR,
    )
    assert line.moves_money
    assert line.description == (
        "Business bundle: 100 free minutes to UK Mobile: 100 min of 100 min included,"
        " 6.00 credited (100%)"
    )


async def test_free_minutes_under_the_allowance_credit_every_call(services: Services) -> None:
    """Two calls of 90 s at 0.123457 each: 180 s of 6000 included, credit 0.246914 -> 0.25."""
    await bundle(services, [("uk", "sum", "duration", "UK Mobile")], FREE_MINUTES)
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 90, 123_457), (4, 90, 123_457))
    [line] = await lines(services)
    assert (line.quantity, line.exact, line.amount) == (180, -246_914, -250_000)
    assert "3 min of 100 min included, 0.246914 credited" in line.description


async def test_free_minutes_over_every_zone_credit_each_zone_on_its_own_line(
    services: Services,
) -> None:
    """100 free minutes over all calls: UK Mobile 3000 s (3.00), then Germany 4000 s (4.00).
    Included: 3000 s of UK Mobile, then 3000 of Germany's 4000 s: 4.00 x 3000/4000 = 3.00.
    One line per zone (each taxed as that zone's usage), zones in order."""
    await bundle(
        services,
        [("all", "sum", "duration", None)],
        [(1, "free", "100 free minutes", "all", 6000, None, None, None)],
    )
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 3000, 3 * EUR))
    await calls(services, (4, 4000, 4 * EUR), zone="Germany")
    found = await lines(services)
    assert [(line.kind, line.zone, line.quantity, line.amount) for line in found] == [
        ("bundle_free", "Germany", 3000, -3 * EUR),
        ("bundle_free", "UK Mobile", 3000, -3 * EUR),
    ]
    assert found[0].description == (
        "Business bundle: 100 free minutes (Germany): 50 min of 100 min included,"
        " 3.00 credited (100%)"
    )


async def test_free_rules_over_the_same_calls_credit_a_call_once(services: Services) -> None:
    """60 free minutes on every call and 30 free minutes on UK Mobile: one 10-minute UK
    call charged 1.00 was credited by both rules, 2.00 for a 1.00 call. The first rule
    credits the whole 1.00 (600 s of 3600), the second nothing (its 600 s of 1800 are
    counted, 0.00 left to credit). A Germany call (0.70) only the first covers."""
    await bundle(
        services,
        [("all", "sum", "duration", None), ("uk", "sum", "duration", "UK Mobile")],
        [
            (1, "free", "60 free minutes", "all", 3600, None, None, None),
            (2, "free", "30 free minutes to UK Mobile", "uk", 1800, None, None, None),
        ],
    )
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 600, 1 * EUR))
    await calls(services, (4, 600, 700_000), zone="Germany")
    found = await lines(services)
    assert sum(line.amount for line in found) == -1_700_000
    assert [(line.zone, line.quantity, line.amount) for line in found if line.amount] == [
        ("Germany", 600, -700_000),
        ("UK Mobile", 600, -1 * EUR),
    ]


async def discount_bundle(services: Services) -> None:
    """10% off UK Mobile usage once its minutes reach 1,000 (60,000 s)."""
    await bundle(
        services,
        [("uk", "sum", "duration", "UK Mobile")],
        [(1, "discount", "volume discount", "uk", None, None, None, None)],
    )
    await sql(
        services,
        "INSERT INTO bundle_discount_tiers (bundle_id, position, threshold, rate)"
        " VALUES ('b1', 1, 60000, 10000000)",
    )


async def test_volume_discount_just_below_its_threshold_gives_nothing(services: Services) -> None:
    """59,999 s (999 min 59 s) of calls: below 1,000 minutes, no discount line."""
    await discount_bundle(services)
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 30000, 30 * EUR), (4, 29999, 29_999_000))
    assert await lines(services) == []


async def test_volume_discount_just_at_its_threshold(services: Services) -> None:
    """60,000 s = 1,000 min exactly, usage 60.005 EUR: 10% off = -6.0005, rounded once to
    cents: 0.05 of a cent is under half -> -6.00."""
    await discount_bundle(services)
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 30000, 30 * EUR), (4, 30000, 30_005_000))
    [line] = await lines(services)
    # 60_005_000 x 10% = 6_000_500 micro; cents: 600.05 -> 600 -> -6.00
    assert (line.kind, line.quantity, line.exact, line.amount) == (
        "bundle_discount",
        60000,
        -6_000_500,
        -6_000_000,
    )
    assert line.description == (
        "Business bundle: volume discount: 10% off 60.005 (1000 min, tier from 1000 min)"
    )


async def test_tiered_discount_applies_the_highest_tier_reached_after_free_credits(
    services: Services,
) -> None:
    """Tiers 5% from 1 call, 12.5% from 3 calls (count). Three calls of 1.00; the first
    100 minutes free take the first call (60 s, 1.00) whole: base 3.00 - 1.00 = 2.00,
    12.5% -> -0.25."""
    await bundle(
        services,
        [("uk", "sum", "duration", "UK Mobile"), ("n", "count", "duration", "UK Mobile")],
        [
            (1, "free", "first minute free", "uk", 60, None, None, None),
            (2, "discount", "loyalty", "n", None, None, None, None),
        ],
    )
    for threshold, rate in ((1, 5_000_000), (3, 12_500_000)):
        await sql(
            services,
            "INSERT INTO bundle_discount_tiers VALUES ('b1', 2, $1, $2)",
            threshold,
            rate,
        )
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 60, EUR), (4, 60, EUR), (5, 60, EUR))
    free, discount = await lines(services)
    assert (free.kind, free.exact) == ("bundle_free", -EUR)
    assert (discount.kind, discount.quantity, discount.exact) == ("bundle_discount", 3, -250_000)
    assert "12.5% off 2.00 (3 calls, tier from 3 calls)" in discount.description


async def test_a_late_stops_cdr_is_not_counted_as_a_call(services: Services) -> None:
    """Tiers 5% from 1 call, 12.5% from 4 calls (count). Three calls of 1.00, the third
    amended by its late Stop (+30 s, +0.50: its CDR states what the Stop added): 3 calls,
    base 3.50, 5% -> -0.175. Counted as a fourth call, it reached 12.5%."""
    await bundle(
        services,
        [("n", "count", "duration", "UK Mobile")],
        [(1, "discount", "loyalty", "n", None, None, None, None)],
    )
    for threshold, rate in ((1, 5_000_000), (4, 12_500_000)):
        await sql(
            services,
            "INSERT INTO bundle_discount_tiers VALUES ('b1', 1, $1, $2)",
            threshold,
            rate,
        )
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 60, EUR), (4, 60, EUR), (5, 60, EUR))
    await cdr(
        services,
        "late-1",
        "a1",
        at(5, 13),
        call_id="UK Mobile-2",
        duration=30,
        charged=500_000,
        termination_cause="late-stop",
    )
    [discount] = await lines(services)
    assert (discount.kind, discount.quantity, discount.exact) == ("bundle_discount", 3, -175_000)
    assert "5% off 3.50 (3 calls, tier from 1 call)" in discount.description


async def test_a_late_stops_refund_comes_off_a_discounts_base(services: Services) -> None:
    """10% off from 60 s of calls (SUM). A call of 120 s (2.00), and one the janitor
    charged its whole grant, 846 s (8.46), whose late Stop said 60 s (-786 s, -7.86):
    180 s, 10% off 2.60 -> -0.26. The refund was left out of the base (its row's net
    capped at nothing): 10% off 10.46."""
    await bundle(
        services,
        [("d", "sum", "duration", "UK Mobile")],
        [(1, "discount", "volume", "d", None, None, None, None)],
    )
    await sql(services, "INSERT INTO bundle_discount_tiers VALUES ('b1', 1, 60, 10000000)")
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 120, 2 * EUR))
    await cdr(
        services,
        "granted",
        "a1",
        at(4),
        duration=846,
        charged=8_460_000,
        termination_cause="expired",
    )
    await cdr(
        services,
        "late",
        "a1",
        at(4, 13),
        call_id="granted",
        authorized_at=at(4),
        duration=-786,
        charged=-7_860_000,
        termination_cause="late-stop",
    )
    [discount] = await lines(services)
    assert (discount.kind, discount.quantity, discount.exact) == ("bundle_discount", 180, -260_000)
    assert "10% off 2.60 (3 min, tier from 1 min)" in discount.description


async def tiered_discount(
    services: Services, function: str, tiers: Sequence[tuple[int, int]]
) -> None:
    """Bundle ``b1`` with a discount over indicator ``d`` (``function`` of UK Mobile calls'
    seconds) in ``tiers`` (threshold, rate), held by ``a1`` from January 1."""
    await bundle(
        services,
        [("d", function, "duration", "UK Mobile")],
        [(1, "discount", "long calls", "d", None, None, None, None)],
    )
    for threshold, rate in tiers:
        await sql(
            services,
            "INSERT INTO bundle_discount_tiers VALUES ('b1', 1, $1, $2)",
            threshold,
            rate,
        )
    await account(services, date(2026, 1, 1))


async def late_stop(
    services: Services, entry: str, call: str, authorized: datetime, when: datetime, **fields: Any
) -> None:
    """The CDR of a late Stop of ``call`` (authorized at ``authorized``), written at
    ``when``: what the Stop changed from the close (seconds, amount; some negative)."""
    await cdr(
        services,
        entry,
        "a1",
        when,
        call_id=call,
        authorized_at=authorized,
        termination_cause="late-stop",
        **fields,
    )


async def test_max_of_calls_takes_a_call_as_its_late_stop_amended_it(services: Services) -> None:
    """10% off from a call of 100 s (MAX). A call of 60 s, and one the janitor closed at
    60 s whose late Stop said 120 s (+60 s, +1.00): the longest call is 120 s, 10% off
    3.00 -> -0.30. Over rows, the longest was 60 s and gave nothing."""
    await tiered_discount(services, "max", [(100, 10_000_000)])
    await calls(services, (3, 60, EUR))
    await cdr(
        services, "closed", "a1", at(4), duration=60, charged=EUR, termination_cause="expired"
    )
    await late_stop(services, "late", "closed", at(4), at(4, 13), duration=60, charged=EUR)
    [discount] = await lines(services)
    assert (discount.kind, discount.quantity, discount.exact) == ("bundle_discount", 120, -300_000)
    assert "10% off 3.00 (2 min, tier from 1 min 40 s)" in discount.description


async def test_min_of_calls_never_takes_a_late_stops_row_for_a_call(services: Services) -> None:
    """5% off when the shortest call is a minute or more (MIN). A call of 90 s (1.50); one the
    janitor charged its whole grant, 846 s (8.46), whose late Stop said 60 s (-786 s,
    -7.86); and the late Stop, in January, of a December call (-20 s, -0.20): the
    shortest call is 60 s, 5% off 1.90 -> -0.095. Over rows, the shortest was -786 s and
    gave nothing; the December call is not one of January's."""
    await tiered_discount(services, "min", [(60, 5_000_000)])
    await calls(services, (3, 90, 1_500_000))
    await cdr(
        services,
        "granted",
        "a1",
        at(4),
        duration=846,
        charged=8_460_000,
        termination_cause="expired",
    )
    await late_stop(
        services, "late", "granted", at(4), at(4, 13), duration=-786, charged=-7_860_000
    )
    december = datetime(2025, 12, 31, 23, tzinfo=UTC)
    await cdr(
        services, "dec", "a1", december, duration=50, charged=500_000, termination_cause="cut"
    )
    await late_stop(services, "dec-late", "dec", december, at(1, 1), duration=-20, charged=-200_000)
    [discount] = await lines(services)
    assert (discount.kind, discount.quantity, discount.exact) == ("bundle_discount", 60, -95_000)
    assert "5% off 1.90 (1 min, tier from 1 min)" in discount.description


async def janitor_closed_call(services: Services, day: int, *, late: bool = True) -> None:
    """A call on ``day`` the janitor closed charging its whole grant, 846 s (8.46), and
    (``late``) its late Stop an hour later saying 60 s: a row of -786 s, -7.86."""
    await cdr(
        services,
        "granted",
        "a1",
        at(day),
        duration=846,
        charged=8_460_000,
        termination_cause="expired",
    )
    if late:
        await late_stop(
            services, "late", "granted", at(day), at(day, 13), duration=-786, charged=-7_860_000
        )


@pytest.mark.parametrize(
    ("allowance", "included", "credit", "text"),
    [
        (3000, 3000, -3 * EUR, "50 min of 50 min included, 3.00 credited (100%)"),
        (3030, 3030, -3_300_000, "50 min 30 s of 50 min 30 s included, 3.30 credited (100%)"),
        (3300, 3060, -3_600_000, "51 min of 55 min included, 3.60 credited (100%)"),
    ],
    ids=["first-call-only", "late-stopped-call-part-free", "late-stopped-call-free"],
)
async def test_a_late_stop_takes_back_only_the_free_credit_its_call_had(
    services: Services, allowance: int, included: int, credit: int, text: str
) -> None:
    """Free seconds over calls as amended. A call of 3000 s (3.00); then one the janitor
    charged 846 s (8.46), whose late Stop said 60 s (0.60 as amended).
    Allowance 3000 s: the second call is not free, credit 3.00 (its refund, a row of
    -786 s, took back 7.86 it was never credited: +4.86 charged).
    3030 s: 30 of its 60 s free, 0.60 x 30/60 = 0.30, credit 3.30.
    3300 s: all its 60 s free, credit 3.60 (over rows: +1.86 charged)."""
    await bundle(
        services,
        [("uk", "sum", "duration", "UK Mobile")],
        [(1, "free", "free minutes", "uk", allowance, None, None, None)],
    )
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 3000, 3 * EUR))
    await janitor_closed_call(services, 4)
    [line] = await lines(services)
    assert (line.kind, line.quantity, line.amount) == ("bundle_free", included, credit)
    assert line.description == f"Business bundle: free minutes: {text}"


async def test_a_free_call_allowance_credits_a_late_stopped_call_as_amended(
    services: Services,
) -> None:
    """Two free calls (COUNT). A call of 60 s (1.00); one the janitor charged 8.46 whose
    late Stop brought it to 0.60; a third call (1.00): the first two are free, credit
    1.00 + 0.60 = 1.60. Over rows, the second was credited its 8.46 and its refund
    (counted as no call, past the allowance) took nothing back: 9.46 for 1.60 paid."""
    await bundle(
        services,
        [("n", "count", "duration", "UK Mobile")],
        [(1, "free", "two free calls", "n", 2, None, None, None)],
    )
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 60, EUR))
    await janitor_closed_call(services, 4)
    await cdr(services, "third", "a1", at(5), duration=60, charged=EUR)
    [line] = await lines(services)
    assert (line.kind, line.quantity, line.amount) == ("bundle_free", 2, -1_600_000)
    assert line.description == (
        "Business bundle: two free calls: 2 calls of 2 calls included, 1.60 credited (100%)"
    )


async def test_a_discount_base_holds_a_late_stopped_call_as_amended_beside_free_minutes(
    services: Services,
) -> None:
    """50 free minutes, then 10% off from 1 minute (SUM). A call of 3000 s (3.00), free;
    one the janitor charged 8.46 whose late Stop brought it to 60 s (0.60), not free:
    base 3.00 + 8.46 - 7.86 - 3.00 free = 0.60, 10% -> -0.06. Over rows, the refund took
    back 7.86 of free credit and so came off the base as nothing: 10% off 8.46."""
    await bundle(
        services,
        [("uk", "sum", "duration", "UK Mobile")],
        [
            (1, "free", "50 free minutes", "uk", 3000, None, None, None),
            (2, "discount", "volume", "uk", None, None, None, None),
        ],
    )
    await sql(services, "INSERT INTO bundle_discount_tiers VALUES ('b1', 2, 60, 10000000)")
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 3000, 3 * EUR))
    await janitor_closed_call(services, 4)
    free, discount = await lines(services)
    assert (free.kind, free.quantity, free.amount) == ("bundle_free", 3000, -3 * EUR)
    assert (discount.kind, discount.quantity, discount.amount) == ("bundle_discount", 3060, -60_000)
    assert "10% off 0.60 (51 min, tier from 1 min)" in discount.description


async def test_a_late_stop_of_an_earlier_cycles_call_leaves_the_free_allowance_alone(
    services: Services,
) -> None:
    """50 free minutes. January 1: the late Stop of a December call (-20 s, -0.20), then
    a call of 3000 s (3.00). The December call was measured (free or not) with December:
    January credits 3.00 for its 3000 s. Over rows, the refund came first as -20 s and
    took back 0.20: 2.80 credited for 2980 s."""
    await bundle(
        services,
        [("uk", "sum", "duration", "UK Mobile")],
        [(1, "free", "50 free minutes", "uk", 3000, None, None, None)],
    )
    await account(services, date(2026, 1, 1))
    december = datetime(2025, 12, 31, 23, tzinfo=UTC)
    await cdr(
        services, "dec", "a1", december, duration=50, charged=500_000, termination_cause="cut"
    )
    await late_stop(services, "dec-late", "dec", december, at(1, 1), duration=-20, charged=-200_000)
    await calls(services, (3, 3000, 3 * EUR))
    [line] = await lines(services)
    assert (line.kind, line.quantity, line.amount) == ("bundle_free", 3000, -3 * EUR)


COMMITMENT: list[RuleRow] = [
    (1, "commitment", "minimum spend", "spend", None, 20 * EUR, None, None)
]


async def test_commitment_under_charges_the_shortfall(services: Services) -> None:
    """Minimum 20.00 a month, 12.345678 spent: shortfall 7.654322 -> 7.65."""
    await bundle(services, [("spend", "sum", "amount", None)], COMMITMENT)
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 600, 12_345_678))
    [line] = await lines(services)
    assert (line.kind, line.quantity, line.exact, line.amount) == (
        "bundle_commitment",
        12_345_678,
        7_654_322,
        7_650_000,
    )
    assert line.description == (
        "Business bundle: minimum spend: minimum 20.00, used 12.345678, shortfall charged"
    )


async def test_commitment_over_charges_nothing(services: Services) -> None:
    """20.000001 spent against a 20.00 minimum: no line."""
    await bundle(services, [("spend", "sum", "amount", None)], COMMITMENT)
    await account(services, date(2026, 1, 1))
    await calls(services, (3, 600, 20 * EUR + 1))
    assert await lines(services) == []


async def test_commitment_is_prorated_in_a_partial_first_cycle(services: Services) -> None:
    """Subscribed Jan 22: 10 of 31 days. Minimum 20.00 x 10/31 = 6.451613 (6_451_612.9 up);
    spent 5.00 (a call on Jan 10, before the start, does not count): shortfall 1.451613
    -> 1.45."""
    await bundle(services, [("spend", "sum", "amount", None)], COMMITMENT)
    await account(services, date(2026, 1, 22))
    await calls(services, (10, 60, 9 * EUR), (25, 600, 5 * EUR))
    [line] = await lines(services)
    assert (line.quantity, line.exact, line.amount) == (5 * EUR, 1_451_613, 1_450_000)
    assert "minimum 6.451613 (10/31 days), used 5.00" in line.description


async def test_flat_fees_upfront_and_on_the_due_date(services: Services) -> None:
    """A monthly 5.00 due-date fee bills January on the January invoice; a yearly 120.00
    upfront fee from Feb 1 bills Feb 2026..Feb 2027 on it (advance = February); a one-off
    setup fee of 30.00 on the bundle's start day (Jan 1) is billed in arrears."""
    await bundle(
        services,
        [],
        [
            (1, "flat_fee", "service fee", None, None, 5 * EUR, "monthly", "due_date"),
            (2, "flat_fee", "setup", None, None, 30 * EUR, "one_shot", "due_date"),
        ],
    )
    await account(services, date(2026, 1, 1))
    await sql(
        services,
        "INSERT INTO bundles (id, name, currency) VALUES ('b2', 'Support', 'EUR');"
        "INSERT INTO bundle_rules (bundle_id, position, kind, description, amount,"
        " periodicity, timing) VALUES ('b2', 1, 'flat_fee', 'yearly support', 120000000,"
        " 'yearly', 'upfront');"
        "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date)"
        " SELECT id, 'b2', '2026-02-01' FROM subscriptions WHERE account_id = 'a1'",
    )
    found = await lines(services)
    assert [(line.kind, line.exact, line.amount) for line in found] == [
        ("bundle_fee", 5 * EUR, 5 * EUR),
        ("bundle_fee", 30 * EUR, 30 * EUR),
        ("bundle_fee", 120 * EUR, 120 * EUR),
    ]
    assert found[0].description == "Business bundle: service fee 2026-01, 5.00 per monthly"
    assert found[1].description == "Business bundle: setup (one-off)"
    assert found[2].description.startswith("Support: yearly support 2026-02-01..2027-02-01")


async def test_resiliation_fee_in_the_middle_of_the_term(services: Services) -> None:
    """A 12-month term from 2025-09-10 (to 2026-09-10); cancelled with Jan 20, 2026 the first
    day without service: served Sep 10 .. Jan 10 = 4 whole months, 8 left x 15.00 = 120.00,
    on the January invoice."""
    await bundle(services, [], [], term=12, resiliation="remaining_months", fee=15 * EUR)
    await account(services, date(2025, 9, 10), end=date(2026, 1, 20))
    [line] = await lines(services)
    assert (line.kind, line.quantity, line.exact, line.amount) == (
        "resiliation",
        8,
        120 * EUR,
        120 * EUR,
    )
    assert line.description == "Business bundle: early termination, 8 of 12 months left x 15.00"


async def test_fixed_resiliation_fee_and_none_after_the_term(services: Services) -> None:
    """Fixed 50.00 when ending early; the term's own end (or later) costs nothing."""
    await bundle(services, [], [], term=3, resiliation="fixed", fee=50 * EUR)
    await account(services, date(2025, 11, 1), end=date(2026, 1, 15))
    [line] = await lines(services)
    assert (line.exact, line.amount) == (50 * EUR, 50 * EUR)
    await sql(services, "UPDATE subscription_bundles SET end_date = '2026-02-01'")
    # Term Nov 1 + 3 months = Feb 1: ending on Feb 1 is not early.
    assert await lines(services) == []


async def _resiliations(services: Services) -> dict[str, list[tuple[str, int]]]:
    """a1's invoices by label: their resiliation lines (description, amount)."""
    return {
        i["label"]: [
            (line["description"], line["amount"])
            for line in i["lines"]
            if line["kind"] == "resiliation"
        ]
        for i in await invoices(services)
        if i["account"] == "a1"
    }


async def test_a_cancellation_recorded_after_the_last_days_invoice_bills_the_fee_next(
    services: Services,
) -> None:
    """A 12-month term from Jan 1 with a fixed 50.00 fee; March invoiced and posted; on
    April 2 the operator records the cancellation effective April 1 (the first day
    without service). March's invoice held the last day but was made before: April's
    invoice bills the fee, once; May's does not bill it again."""
    await bundle(services, [], [], term=12, resiliation="fixed", fee=50 * EUR)
    await account(services, date(2026, 1, 1))
    async with services.pool.acquire() as conn:
        sub = await conn.fetchval("SELECT id FROM subscriptions WHERE account_id = 'a1'")
    for month, invoiced in (("2026-02", date(2026, 3, 1)), ("2026-03", date(2026, 4, 1))):
        run_id = await run(services, month, invoice_date=invoiced)
        await posting.post(services.pool, services.store, run_id=run_id)
    await set_status(services.pool, sub, "cancelled", on=date(2026, 4, 1))
    april = await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    await posting.post(services.pool, services.store, run_id=april)
    await run(services, "2026-05", invoice_date=date(2026, 6, 1))

    fee = ("Business bundle: early termination before 2027-01-01, fixed fee 50.00", 50 * EUR)
    assert await _resiliations(services) == {
        "2026-02": [],
        "2026-03": [],
        "2026-04": [fee],
        "2026-05": [],
    }


async def test_an_end_moved_after_its_fee_was_billed_bills_no_second_fee(
    services: Services,
) -> None:
    """The bundle's end on April 1 is recorded before March's invoice, which bills the
    fee; moved to March 15 once March was invoiced, it is not billed again in April."""
    await bundle(services, [], [], term=12, resiliation="fixed", fee=50 * EUR)
    await account(services, date(2026, 1, 1), end=date(2026, 4, 1))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    await sql(services, "UPDATE subscription_bundles SET end_date = '2026-03-15'")
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    fee = ("Business bundle: early termination before 2027-01-01, fixed fee 50.00", 50 * EUR)
    assert await _resiliations(services) == {"2026-03": [fee], "2026-04": []}


async def test_a_fee_billed_before_bundles_were_named_on_their_lines_is_not_billed_again(
    services: Services,
) -> None:
    """March's invoice billed the fee of a bundle ending April 1 before migration 0052
    named the subscription bundle on its lines; the subscription's end, moved once March
    was invoiced, made the bundle's end look recorded late, and April billed it again."""
    await bundle(services, [], [], term=12, resiliation="fixed", fee=50 * EUR)
    await account(services, date(2026, 1, 1), end=date(2026, 4, 1))
    march = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    await posting.post(services.pool, services.store, run_id=march)
    # As a line from before migration 0052 is (the posted lines' guard set aside for it).
    await sql(services, "ALTER TABLE invoice_lines DISABLE TRIGGER invoice_lines_frozen")
    try:
        await sql(
            services,
            "UPDATE invoice_lines SET subscription_bundle_id = NULL WHERE kind = 'resiliation'",
        )
    finally:
        await sql(services, "ALTER TABLE invoice_lines ENABLE TRIGGER invoice_lines_frozen")
    await sql(services, "UPDATE subscriptions SET end_date = '2026-03-20'")
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    fee = ("Business bundle: early termination before 2027-01-01, fixed fee 50.00", 50 * EUR)
    assert await _resiliations(services) == {"2026-03": [fee], "2026-04": []}


def test_months_left_counts_the_month_in_progress() -> None:
    """Jan 31 + 1 month is Feb 28; a term ending on its last day has 0 left."""
    assert add_months(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert months_left(date(2025, 9, 10), 12, date(2026, 1, 20)) == 8
    assert months_left(date(2025, 9, 10), 12, date(2026, 1, 10)) == 8
    assert months_left(date(2025, 9, 10), 12, date(2026, 1, 9)) == 9
    assert months_left(date(2025, 9, 10), 12, date(2026, 9, 10)) == 0
