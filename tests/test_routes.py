"""Route sets and carrier cost decks: the margin check, the store, the snapshot, the API.

A route set is an ordered list of carriers, each with a cost deck matched by
the prefix matcher. At authorize each carrier's cost of a 60-second reference
call is compared with the sell price's: a carrier costing more is dropped, the
others keep the route set's order, and a carrier with no prefix for the number
is no route at all.
"""

import random
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ocs import api_tokens
from ocs.catalog import routes_store
from ocs.catalog import store as catalog_store
from ocs.catalog.routes import RouteBook, RouteDecision
from ocs.catalog.snapshot import CatalogSnapshot, Plan, load_snapshot
from ocs.decks import cost_deck
from ocs.decks.problems import DeckError
from ocs.errors import OcsError, Reason
from ocs.http import routes_handlers
from ocs.http.app import create_app
from ocs.numbers.prefixes import PrefixTable
from ocs.rating.rates import Rate
from ocs.services import Services
from tests.conftest import add_plan, bearer, eventually


def per_minute(price: int, connect_fee: int = 0, block: int = 1, increment: int = 1) -> Rate:
    return Rate(
        connect_fee=connect_fee, first_block=block, increment=increment, price_per_minute=price
    )


SELL = per_minute(20_000)  # 0.02 a minute


def book(decks: dict[str, dict[str, Rate]], route_sets: dict[str, tuple[str, ...]]) -> RouteBook:
    return RouteBook(
        decks={carrier: PrefixTable(deck) for carrier, deck in decks.items()},
        names={carrier: carrier for carrier in decks},
        route_sets=route_sets,
        currencies=dict.fromkeys(decks, "EUR"),
    )


# --- the margin rule --------------------------------------------------------------------


def test_a_carrier_costing_more_than_the_price_is_dropped() -> None:
    routes = book(
        {"A": {"44": per_minute(30_000)}, "B": {"44": per_minute(10_000)}},
        {"rs": ("A", "B")},
    )
    decision = routes.routes_for("rs", "442071234567", SELL, currency="EUR")
    assert decision.carriers == ("B",)
    assert decision.dropped == ("A",)
    assert decision.sell_cost == 20_000
    assert decision.costs == (("A", 30_000), ("B", 10_000))


def test_kept_and_dropped_carriers_keep_the_route_set_order() -> None:
    cheap, dear = per_minute(10_000), per_minute(30_000)
    routes = book(
        {
            "C": {"4": cheap},
            "A": {"4": dear},
            "D": {"4": cheap},
            "B": {"4": dear},
            "E": {"4": cheap},
        },
        {"first": ("C", "A", "D", "B", "E"), "second": ("E", "B", "D", "A", "C")},
    )
    first = routes.routes_for("first", "4420", SELL, currency="EUR")
    assert (first.carriers, first.dropped) == (("C", "D", "E"), ("A", "B"))
    second = routes.routes_for("second", "4420", SELL, currency="EUR")
    assert (second.carriers, second.dropped) == (("E", "D", "C"), ("B", "A"))


def test_each_carrier_prices_the_number_at_its_own_longest_prefix() -> None:
    routes = book(
        {
            "A": {"44": per_minute(10_000), "447": per_minute(50_000)},
            "B": {"4": per_minute(30_000), "4420": per_minute(15_000)},
        },
        {"rs": ("A", "B")},
    )
    mobile = routes.routes_for("rs", "447700900123", SELL, currency="EUR")
    assert (mobile.carriers, mobile.dropped) == ((), ("A", "B"))
    london = routes.routes_for("rs", "442071234567", SELL, currency="EUR")
    assert (london.carriers, london.dropped) == (("A", "B"), ())
    manchester = routes.routes_for("rs", "441611234567", SELL, currency="EUR")
    assert (manchester.carriers, manchester.dropped) == (("A",), ("B",))


def test_connect_fees_count_on_both_sides() -> None:
    # 0.01/min plus a 0.015 connect fee costs 0.025 for the reference minute: above 0.02.
    routes = book(
        {"A": {"44": per_minute(10_000, connect_fee=15_000)}, "B": {"44": per_minute(19_000)}},
        {"rs": ("A", "B")},
    )
    decision = routes.routes_for("rs", "4420", SELL, currency="EUR")
    assert (decision.carriers, decision.dropped) == (("B",), ("A",))
    # Sold with a connect fee of its own, the same carrier has margin again.
    with_fee = routes.routes_for(
        "rs", "4420", per_minute(20_000, connect_fee=10_000), currency="EUR"
    )
    assert (with_fee.carriers, with_fee.dropped) == (("A", "B"), ())
    assert with_fee.sell_cost == 30_000


def test_billing_blocks_count_in_the_reference_call() -> None:
    # 0.018/min billed 60/60 costs 0.018 for 60 s; 0.012/min billed in 90-second
    # first blocks costs 0.018 too; a 120-second first block costs 0.024.
    routes = book(
        {
            "A": {"1": per_minute(18_000, block=60, increment=60)},
            "B": {"1": per_minute(12_000, block=90, increment=30)},
            "C": {"1": per_minute(12_000, block=120, increment=60)},
        },
        {"rs": ("A", "B", "C")},
    )
    decision = routes.routes_for("rs", "12125550100", per_minute(18_000), currency="EUR")
    assert (decision.carriers, decision.dropped) == (("A", "B"), ("C",))
    # Over a two-minute reference call the long first blocks no longer cost extra.
    longer = routes.routes_for(
        "rs", "12125550100", per_minute(18_000), reference_seconds=120, currency="EUR"
    )
    assert longer.sell_cost == 36_000
    assert longer.costs == (("A", 36_000), ("B", 24_000), ("C", 24_000))
    assert (longer.carriers, longer.dropped) == (("A", "B", "C"), ())


def test_the_sell_side_is_priced_at_the_band_prices_of_the_call() -> None:
    # 0.02 a minute, but 0.005 in band "night" and 0.03 in band "peak".
    banded = msgspec.structs.replace(SELL, band_prices=(("night", 5_000), ("peak", 30_000)))
    routes = book(
        {"A": {"44": per_minute(10_000)}, "B": {"44": per_minute(25_000)}}, {"rs": ("A", "B")}
    )
    at_night = routes.routes_for("rs", "4420", banded, bands=((0, "night"),), currency="EUR")
    assert (at_night.carriers, at_night.dropped, at_night.sell_cost) == ((), ("A", "B"), 5_000)
    at_peak = routes.routes_for("rs", "4420", banded, bands=((0, "peak"),), currency="EUR")
    assert (at_peak.carriers, at_peak.dropped, at_peak.sell_cost) == (("A", "B"), (), 30_000)
    # Half the reference minute at night, half at peak: 0.0025 + 0.015.
    split = routes.routes_for(
        "rs", "4420", banded, bands=((0, "night"), (30, "peak")), currency="EUR"
    )
    assert (split.carriers, split.dropped, split.sell_cost) == (("A",), ("B",), 17_500)
    # No bands (a plan with no schedule): the base price.
    assert routes.routes_for("rs", "4420", banded, currency="EUR").sell_cost == 20_000


def test_zero_margin_is_kept() -> None:
    routes = book({"A": {"44": per_minute(20_000)}}, {"rs": ("A",)})
    assert routes.routes_for("rs", "4420", SELL, currency="EUR").carriers == ("A",)


def test_a_carrier_without_a_prefix_for_the_number_is_no_route_and_not_dropped() -> None:
    routes = book(
        {"A": {"49": per_minute(1)}, "B": {"44": per_minute(30_000)}, "C": {}},
        {"rs": ("A", "B", "C")},
    )
    decision = routes.routes_for("rs", "4420", SELL, currency="EUR")
    assert decision == RouteDecision((), ("B",), 20_000, (("B", 30_000),))
    nowhere = routes.routes_for("rs", "3312345", SELL, currency="EUR")
    assert (nowhere.carriers, nowhere.dropped, nowhere.costs) == ((), (), ())
    assert routes.routes_for("unknown", "4420", SELL, currency="EUR").carriers == ()


def test_negative_margin_allowed_offers_the_dropped_carriers_only_when_none_is_kept() -> None:
    mixed = RouteDecision(carriers=("B",), dropped=("A",))
    assert mixed.usable(False) == mixed.usable(True) == ("B",)
    assert not mixed.refused(False)
    losing = RouteDecision(carriers=(), dropped=("A", "C"))
    assert losing.usable(False) == () and losing.refused(False)
    assert losing.usable(True) == ("A", "C") and not losing.refused(True)
    none = RouteDecision()
    assert none.refused(True) and none.refused(False)


def test_the_snapshot_routes_a_plan_by_its_route_set() -> None:
    plan = Plan("retail", "retail", "EUR", 0, 0, 1, 14_400)
    routed = Plan("lcr", "lcr", "EUR", 0, 0, 1, 14_400, route_set_id="rs")
    routes = book(
        {"A": {"44": per_minute(30_000)}, "B": {"44": per_minute(10_000)}}, {"rs": ("B", "A")}
    )
    snapshot = CatalogSnapshot(plans={"retail": plan, "lcr": routed}, decks={}, routes=routes)
    assert snapshot.routes_for("retail", "4420", SELL) is None
    assert snapshot.routes_for("missing", "4420", SELL) is None
    decision = snapshot.routes_for("lcr", "4420", SELL)
    assert decision is not None and (decision.carriers, decision.dropped) == (("B",), ("A",))
    assert CatalogSnapshot(plans={}, decks={}).routes == RouteBook()


# --- the cost deck CSV ----------------------------------------------------------------

HEADER = "prefix,connect_fee,first_block,increment,price_per_minute\n"


def test_a_cost_deck_parses_in_any_column_order_with_bom_crlf_and_plus_signs() -> None:
    text = (
        "\ufeffprice_per_minute, Prefix ,increment,first_block,connect_fee\r\n"
        "0.010,+44,60,60,0\r\n"
        "\r\n"
        '"0.060",447,6,30,0.150\r\n'
        "0.010,49,60,60,0\r\n"
    )
    deck = cost_deck.parse_carrier_deck(text)
    fixed = per_minute(10_000, block=60, increment=60)
    mobile = per_minute(60_000, connect_fee=150_000, block=30, increment=6)
    assert list(deck) == [("44", fixed), ("447", mobile), ("49", fixed)]
    assert deck.lines.tolist() == [2, 4, 5]
    assert sorted(deck.rates, key=lambda r: r.price_per_minute) == [fixed, mobile]
    assert deck[0][1] is deck[2][1]  # one Rate per distinct rate
    assert list(cost_deck.parse_carrier_deck_rows(text)) == list(deck)


def test_a_plain_cost_deck_takes_the_compiled_path_and_reads_as_the_reference() -> None:
    text = HEADER + "+44,0,60,60,0.010\r\n 447 , 0.150 ,30,6,0.06\n\n , ,,,\n49,0,60,60,.01\n"
    deck = cost_deck.parse_carrier_deck(text)
    fixed = per_minute(10_000, block=60, increment=60)
    mobile = per_minute(60_000, connect_fee=150_000, block=30, increment=6)
    assert list(deck) == [("44", fixed), ("447", mobile), ("49", fixed)]
    assert deck.lines.tolist() == [2, 3, 6]
    assert len(deck.rates) == 2
    assert list(cost_deck.parse_carrier_deck_rows(text)) == list(deck)


def _outcome(parse: object, text: str) -> tuple[str, object]:
    try:
        deck = parse(text)  # type: ignore[operator]
    except DeckError as exc:
        return "refused", exc.problems
    return "parsed", (list(deck), deck.lines.tolist())


def test_the_compiled_parse_follows_the_reference_on_odd_decks() -> None:
    rng = random.Random(7)
    prefixes = ["44", "+44", " 447 ", "4" * 18, "4" * 19, "4" * 19 + "1", "4" * 33, "0",
                "44A", "+", "", " ", "٤٤", "4 4", "++4", "1"]  # fmt: skip
    amounts = ["0", "0.01", " 0.010 ", "1", "5.", ".5", "+1", "-1", "abc", "", "0.0000001",
               "0.1234560", "999999999.999999", "1000000000", "1e3", "\xa00.02", "０"]  # fmt: skip
    seconds = ["1", "60", "0", " 6 ", "0060", "1.5", "86400", "86401", "", "x", "٣", "0000000060"]
    for _ in range(400):
        lines = [HEADER.strip()]
        for _ in range(rng.randrange(0, 12) if rng.random() < 0.8 else rng.randrange(20, 60)):
            kind = rng.random()
            if kind < 0.08:
                lines.append(rng.choice(["", "   ", ",,,,", " , ,,", "\t"]))
            elif kind < 0.14:
                lines.append(",".join(rng.choice(amounts) for _ in range(rng.choice([4, 6]))))
            else:
                fields = [
                    rng.choice(prefixes),
                    rng.choice(amounts[:6] * 4 + amounts),
                    rng.choice(seconds[:5] * 4 + seconds),
                    rng.choice(seconds[:5] * 4 + seconds),
                    rng.choice(amounts[:6] * 4 + amounts),
                ]
                lines.append(",".join(fields))
        text = "\r\n".join(lines) if rng.random() < 0.3 else "\n".join(lines)
        if rng.random() < 0.5:
            text += "\n"
        assert _outcome(cost_deck.parse_carrier_deck, text) == _outcome(
            cost_deck.parse_carrier_deck_rows, text
        ), text


# (deck, line numbers reported, words the first message has)
BAD_COST_DECKS: dict[str, tuple[str, list[int], tuple[str, ...]]] = {
    "bad price": (HEADER + "33,0,1,1,0.01\n" + "44,0,1,1,abc\n", [3], ("price_per_minute",)),
    "7 decimals": (HEADER + "44,0,1,1,0.0100001\n", [2], ("price_per_minute", "decimal places")),
    "negative fee": (HEADER + "44,-0.01,1,1,0.01\n", [2], ("connect_fee", "negative")),
    "float seconds": (HEADER + "44,0,1.5,1,0.01\n", [2], ("first_block",)),
    "zero increment": (HEADER + "44,0,1,0,0.01\n", [2], ("increment",)),
    "missing field": (HEADER + "33,0,1,1,0.01\n" + "44,0,1,1\n", [3], ("expected 5 fields",)),
    "non-digit prefix": (HEADER + "44A,0,1,1,0.01\n", [2], ("prefix", "44A")),
    "prefix twice": (HEADER + "44,0,1,1,0.01\n33,0,1,1,0.01\n44,0,1,1,0.02\n", [4], ("line 2",)),
    "many bad rows": (
        HEADER + "".join(f"{n},0,1,1,x\n" for n in range(100, 230)),
        list(range(2, 102)),
        ("price_per_minute",),
    ),
    "missing column": ("prefix,connect_fee,first_block,increment\n44,0,1,1\n", [1], ("missing",)),
    "unknown column": (
        HEADER.strip() + ",zone\n44,0,1,1,0.01,UK\n",
        [1],
        ("unknown column(s) zone",),
    ),
    "empty": ("", [1], ("empty file",)),
    "no rows": (HEADER + "\n", [2], ("no rows",)),
}


@pytest.mark.parametrize("name", list(BAD_COST_DECKS))
def test_a_bad_cost_deck_names_each_line_and_field(name: str) -> None:
    text, lines, words = BAD_COST_DECKS[name]
    with pytest.raises(DeckError) as caught:
        cost_deck.parse_carrier_deck(text)
    assert [line for line, _ in caught.value.problems] == lines
    first = caught.value.problems[0][1]
    for word in words:
        assert word in first, first
    assert caught.value.reason is Reason.INVALID_DECK and caught.value.field == "deck"


# --- in PostgreSQL and the served snapshot -------------------------------------------

DECK_A = HEADER + "44,0,1,1,0.030\n447,0,1,1,0.080\n49,0,1,1,0.001\n"
DECK_B = HEADER + "44,0,1,1,0.010\n447,0.010,60,60,0.040\n"
UK_FIXED, UK_MOBILE, GERMANY = "442071234567", "447700900123", "4930123456"


@pytest.fixture
async def routing(services: Services) -> AsyncIterator[Services]:
    """Services with no carriers or route sets (they outlive the conftest reset)."""
    async with services.pool.acquire() as conn:
        # CASCADE empties plans too (they name route sets): the conftest reset did already.
        await conn.execute(
            "TRUNCATE carriers, carrier_rates, route_sets, route_set_carriers CASCADE"
        )
    await services.catalog.reload()
    yield services


async def routed(services: Services, plan_id: str, number: str) -> RouteDecision | None:
    snapshot = services.catalog.snapshot
    match = snapshot.tariff_for(plan_id, number)
    assert match is not None
    return snapshot.routes_for(plan_id, number, match[1].rate)


async def served(
    services: Services, plan_id: str, number: str, carriers: tuple, dropped: tuple
) -> None:
    async def check() -> bool:
        decision = await routed(services, plan_id, number)
        return decision is not None and (decision.carriers, decision.dropped) == (
            carriers,
            dropped,
        )

    await eventually(check, what=f"{number} on {plan_id} routed to {carriers}, not {dropped}")


async def two_carriers(services: Services) -> None:
    pool = services.pool
    await routes_store.create_carrier(pool, "A", "Carrier A", "EUR")
    await routes_store.create_carrier(pool, "B", "Carrier B", "EUR")
    await routes_store.import_carrier_rates(pool, "A", DECK_A)
    await routes_store.import_carrier_rates(pool, "B", cost_deck.parse_carrier_deck(DECK_B))
    await routes_store.set_route_set(pool, "rs", ["A", "B"])


async def test_route_sets_load_into_the_snapshot_and_decide_by_the_plans_tariff(
    routing: Services,
) -> None:
    # The retail deck sells UK fixed at 0.010/min 60/60, UK mobile at 0.060 + 0.150, 30/6.
    await add_plan(routing, "retail")
    await two_carriers(routing)
    assert await routed(routing, "retail", UK_FIXED) is None  # no route set yet
    await routes_store.set_plan_routing(routing.pool, "retail", "rs", False)
    await served(routing, "retail", UK_FIXED, ("B",), ("A",))
    # Mobile sells at 0.21 for a minute; A costs 0.08, B 0.05: both have margin.
    await served(routing, "retail", UK_MOBILE, ("A", "B"), ())
    # Germany sells at 0.012; only A has the prefix.
    await served(routing, "retail", GERMANY, ("A",), ())
    snapshot = routing.catalog.snapshot
    plan = snapshot.plan("retail")
    assert plan is not None and (plan.route_set_id, plan.allow_negative_margin) == ("rs", False)
    assert snapshot.routes.names == {"A": "Carrier A", "B": "Carrier B"}
    assert snapshot.routes.route_sets == {"rs": ("A", "B")}
    assert snapshot.routes.carrier_rate("B", UK_MOBILE) == (
        "447",
        per_minute(40_000, connect_fee=10_000, block=60, increment=60),
    )

    await routes_store.set_plan_routing(routing.pool, "retail", "rs", True)

    async def allowed() -> bool:
        plan = routing.catalog.snapshot.plan("retail")
        return plan is not None and plan.allow_negative_margin

    await eventually(allowed, what="the plan to allow negative margin")
    await routes_store.set_plan_routing(routing.pool, "retail", None, False)

    async def unrouted() -> bool:
        return await routed(routing, "retail", UK_FIXED) is None

    await eventually(unrouted, what="the plan to lose its route set")


def decide(snapshot: CatalogSnapshot, plan_id: str, number: str) -> tuple[tuple, tuple]:
    match = snapshot.tariff_for(plan_id, number)
    assert match is not None
    decision = snapshot.routes_for(plan_id, number, match[1].rate)
    assert decision is not None
    return decision.carriers, decision.dropped


async def test_a_cost_deck_reimport_replaces_it_wholly_and_rebuilds_that_carrier_only(
    routing: Services,
) -> None:
    await add_plan(routing, "retail")
    await two_carriers(routing)
    await routes_store.set_plan_routing(routing.pool, "retail", "rs", False)
    before = await load_snapshot(routing.pool)
    assert decide(before, "retail", GERMANY) == (("A",), ())
    result = await routes_store.import_carrier_rates(
        routing.pool, "A", HEADER + "4420,0,1,1,0.005\n4,0,1,1,0.5\n"
    )
    assert (result.carrier_id, result.prefixes, result.rates) == ("A", 2, 2)
    # What a carrier:A notification reloads: that carrier's deck, nothing else.
    after = await load_snapshot(routing.pool, before, set(), {"A"})
    assert after.routes.decks["B"] is before.routes.decks["B"]
    assert after.decks["retail"] is before.decks["retail"]
    assert decide(after, "retail", GERMANY) == ((), ("A",))  # 49 is gone: 4 costs 0.5
    assert decide(after, "retail", UK_FIXED) == (("A", "B"), ())
    # And every serving process gets there by the NOTIFY.
    await served(routing, "retail", GERMANY, (), ("A",))
    await served(routing, "retail", UK_FIXED, ("A", "B"), ())
    async with routing.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT prefix, price_per_minute FROM carrier_rates WHERE carrier_id = 'A'"
            " ORDER BY prefix"
        )
    assert [tuple(r) for r in rows] == [("4", 500_000), ("4420", 5_000)]


async def test_a_route_set_change_reorders_without_rebuilding_a_deck(routing: Services) -> None:
    await add_plan(routing, "retail")
    await two_carriers(routing)
    await routes_store.set_plan_routing(routing.pool, "retail", "rs", False)
    before = await load_snapshot(routing.pool)
    assert decide(before, "retail", UK_MOBILE) == (("A", "B"), ())
    await routes_store.create_carrier(routing.pool, "C", "Carrier C", "EUR")  # no deck: no route
    assert await routes_store.set_route_set(routing.pool, "rs", ["B", "C", "A"]) == ("B", "C", "A")
    after = await load_snapshot(routing.pool, before, set(), {"C"})
    assert after.routes.route_sets["rs"] == ("B", "C", "A")
    assert after.routes.decks["A"] is before.routes.decks["A"]
    assert after.routes.decks["B"] is before.routes.decks["B"]
    assert len(after.routes.decks["C"]) == 0
    assert after.decks["retail"] is before.decks["retail"]
    assert decide(after, "retail", UK_MOBILE) == (("B", "A"), ())
    await served(routing, "retail", UK_MOBILE, ("B", "A"), ())
    # A full reload (a process starting) reads the same book.
    full = await load_snapshot(routing.pool)
    assert full.routes.route_sets == after.routes.route_sets
    assert full.routes.decks["A"] is not after.routes.decks["A"]
    assert full.routes.carrier_rate("A", UK_MOBILE) == after.routes.carrier_rate("A", UK_MOBILE)


async def test_a_bad_cost_deck_changes_nothing(routing: Services) -> None:
    await two_carriers(routing)
    with pytest.raises(DeckError) as caught:
        await routes_store.import_carrier_rates(
            routing.pool, "A", HEADER + "33,0,1,1,0.01\n44,0,1,1,0.0100001\n"
        )
    assert caught.value.problems[0][0] == 3
    assert "line 3: price_per_minute" in caught.value.message
    async with routing.pool.acquire() as conn:
        count = await conn.fetchval("SELECT count(*) FROM carrier_rates WHERE carrier_id = 'A'")
    assert count == 3  # DECK_A, untouched


async def test_unknown_names_are_refused_naming_the_field(routing: Services) -> None:
    await two_carriers(routing)
    pool = routing.pool
    with pytest.raises(OcsError) as caught:
        await routes_store.set_route_set(pool, "rs", ["B", "X", "A"])
    assert (caught.value.reason, caught.value.field) == (Reason.NOT_FOUND, "carriers[1]")
    with pytest.raises(OcsError) as caught:
        await routes_store.set_route_set(pool, "rs", ["B", "A", "B"])
    assert (caught.value.reason, caught.value.field) == (Reason.INVALID_FIELD, "carriers[2]")
    with pytest.raises(OcsError) as caught:
        await routes_store.set_route_set(pool, "rs", ["B", "bad id"])
    assert (caught.value.reason, caught.value.field) == (Reason.INVALID_FIELD, "carriers[1]")
    with pytest.raises(OcsError) as caught:
        await routes_store.import_carrier_rates(pool, "X", DECK_A)
    assert (caught.value.reason, caught.value.field) == (Reason.NOT_FOUND, "carrier_id")
    await add_plan(routing, "retail")
    with pytest.raises(OcsError) as caught:
        await routes_store.set_plan_routing(pool, "retail", "nope", False)
    assert (caught.value.reason, caught.value.field) == (Reason.NOT_FOUND, "route_set")
    with pytest.raises(OcsError) as caught:
        await routes_store.set_plan_routing(pool, "nope", "rs", False)
    assert caught.value.reason is Reason.PLAN_NOT_FOUND
    async with pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT carrier_id FROM route_set_carriers WHERE route_set_id = 'rs' ORDER BY position"
        )
    assert [r["carrier_id"] for r in stored] == ["A", "B"]  # unchanged by the refusals


async def test_a_carrier_is_created_once_and_renamed_after(routing: Services) -> None:
    carrier, created = await routes_store.create_carrier(routing.pool, "A", "First", "EUR")
    assert created and carrier.name == "First"
    carrier, created = await routes_store.create_carrier(routing.pool, "A", "Second", "EUR")
    assert not created and carrier.name == "Second"
    assert await routes_store.list_carriers(routing.pool) == [
        routes_store.Carrier("A", "Second", "EUR")
    ]

    async def renamed() -> bool:
        return routing.catalog.snapshot.routes.names.get("A") == "Second"

    await eventually(renamed, what="the carrier's new name in the snapshot")


async def test_plans_created_before_routing_keep_their_defaults(routing: Services) -> None:
    await catalog_store.create_plan(routing.pool, Plan("plain", "plain", "EUR", 0, 0, 1, 14_400))
    (plan,) = [p for p in await catalog_store.list_plans(routing.pool) if p.id == "plain"]
    assert (plan.route_set_id, plan.allow_negative_margin) == (None, False)


# --- over HTTP ------------------------------------------------------------------------


@pytest.fixture
async def client(routing: Services) -> AsyncIterator[TestClient]:
    app = create_app(routing)
    served_paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    if "/v1/carriers" not in served_paths:  # until ocs/http/app.py registers them
        app.router.add_put("/v1/plans/{plan_id}/routing", routes_handlers.set_plan_routing)
        app.router.add_post("/v1/carriers", routes_handlers.create_carrier)
        app.router.add_put("/v1/carriers/{carrier_id}/rates", routes_handlers.import_carrier_rates)
        app.router.add_put("/v1/route-sets/{route_set_id}", routes_handlers.set_route_set)
    # The admin API needs a token (admin_token_required is on by default).
    token = await api_tokens.create(routing.pool, "routes-tests", "admin")
    test_client = TestClient(TestServer(app), headers=bearer(token))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


async def test_routing_set_up_over_http(client: TestClient, routing: Services) -> None:
    await add_plan(routing, "retail")
    response = await client.post(
        "/v1/carriers", json={"id": "A", "name": "Carrier A", "currency": "EUR"}
    )
    assert response.status == 201
    assert await response.json() == {"id": "A", "name": "Carrier A", "currency": "EUR"}
    response = await client.post("/v1/carriers", json={"id": "A", "name": "Carrier A2"})
    assert response.status == 200
    assert (await client.post("/v1/carriers", json={"id": "B", "currency": "eur"})).status == 201
    for carrier, deck in (("A", DECK_A), ("B", DECK_B)):
        response = await client.put(
            f"/v1/carriers/{carrier}/rates", data=deck, headers={"Content-Type": "text/csv"}
        )
        assert response.status == 200, await response.text()
    assert await response.json() == {"carrier": "B", "prefixes": 2, "rates": 2}
    response = await client.put("/v1/route-sets/rs", json={"carriers": ["A", "B"]})
    assert response.status == 200 and await response.json() == {"id": "rs", "carriers": ["A", "B"]}
    response = await client.put(
        "/v1/plans/retail/routing", json={"route_set": "rs", "allow_negative_margin": True}
    )
    assert response.status == 200
    assert await response.json() == {
        "plan": "retail",
        "route_set": "rs",
        "allow_negative_margin": True,
    }
    await served(routing, "retail", UK_FIXED, ("B",), ("A",))
    plan = routing.catalog.snapshot.plan("retail")
    assert plan is not None and plan.allow_negative_margin
    assert routing.catalog.snapshot.routes.names["A"] == "Carrier A2"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("post", "/v1/carriers", {"name": "x"}, 400, "id"),
        ("post", "/v1/carriers", {"id": "a b"}, 400, "id"),
        ("post", "/v1/carriers", {"id": "A", "name": 7}, 400, "name"),
        ("post", "/v1/carriers", {"id": "N"}, 400, "currency"),
        ("post", "/v1/carriers", {"id": "N", "currency": "EU"}, 400, "currency"),
        ("put", "/v1/route-sets/rs", {}, 400, "carriers"),
        ("put", "/v1/route-sets/rs", {"carriers": "A"}, 400, "carriers"),
        ("put", "/v1/route-sets/rs", {"carriers": ["A", 7]}, 400, "carriers[1]"),
        ("put", "/v1/route-sets/rs", {"carriers": ["A", "Z"]}, 404, "carriers[1]"),
        ("put", "/v1/route-sets/r%20s", {"carriers": []}, 400, "route_set_id"),
        ("put", "/v1/plans/retail/routing", {"route_set": "zz"}, 404, "route_set"),
        ("put", "/v1/plans/retail/routing", {"route_set": 5}, 400, "route_set"),
        (
            "put",
            "/v1/plans/retail/routing",
            {"route_set": "rs", "allow_negative_margin": "yes"},
            400,
            "allow_negative_margin",
        ),
        ("put", "/v1/plans/nope/routing", {"route_set": "rs"}, 404, "plan_id"),
        ("put", "/v1/carriers/Z/rates", HEADER + "44,0,1,1,0.01\n", 404, "carrier_id"),
        ("put", "/v1/carriers/A/rates", HEADER + "44,0,1,1,x\n", 400, "deck"),
    ],
)
async def test_bad_routing_requests_are_answered_naming_the_field(
    client: TestClient,
    routing: Services,
    method: str,
    path: str,
    body: object,
    status: int,
    field: str,
) -> None:
    await add_plan(routing, "retail")
    await routes_store.create_carrier(routing.pool, "A", "A", "EUR")
    await routes_store.set_route_set(routing.pool, "rs", ["A"])
    if isinstance(body, str):
        response = await client.put(path, data=body, headers={"Content-Type": "text/csv"})
    else:
        response = await getattr(client, method)(path, json=body)
    answer = await response.json()
    assert response.status == status, answer
    assert answer["error"]["field"] == field
    if field == "deck":
        assert answer["error"]["problems"] == [
            {
                "line": 2,
                "column": "price_per_minute",
                "message": "price_per_minute: not a decimal amount: 'x'",
            }
        ]
        assert answer["error"]["more_problems"] == 0


async def test_a_cost_deck_that_is_not_utf8_is_refused(
    client: TestClient, routing: Services
) -> None:
    await routes_store.create_carrier(routing.pool, "A", "A", "EUR")
    response = await client.put(
        "/v1/carriers/A/rates",
        data=(HEADER + "44,0,1,1,0.01 \xa3\n").encode("latin-1"),
        headers={"Content-Type": "text/csv; charset=utf-8"},
    )
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "deck"
