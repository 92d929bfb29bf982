"""Rate decks carrying tariff shapes and directions in optional CSV columns.

A deck may add, by header name, ``direction`` and the shape columns ``per``,
``max_cost``, ``max_cost_mode``, ``surcharge_percent``, ``surcharge_flat``,
``tiers`` (``from_second:price_per_minute[:increment[:flat]]|...``) and
``band_prices`` (``band=price|...``). Each cell is read by the shape API's
rules; a bad one is reported with its line and column. Imported, a deck's
shape is the one the shape API would have set; a shape column the deck lacks
leaves the stored field alone, as decks without shape columns always did.
"""

import csv
import io
from urllib.parse import quote

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from ocs.catalog import store as catalog_store
from ocs.decks.cells import (
    OPTIONAL_COLUMNS,
    format_band_prices,
    format_tiers,
    parse_band_prices,
    parse_tiers,
    shape_cells,
)
from ocs.decks.problems import MAX_REPORTED, DeckError
from ocs.decks.rate_deck import Deck, parse_deck, parse_deck_rows
from ocs.rating.rates import Rate, Tier, cost
from tests.conftest import RunningApp
from tests.deck_helpers import HEADER, call, import_over_http, outcome

BASE = HEADER.rstrip("\n")
SHAPE_HEADER = (
    BASE + ",per,max_cost,max_cost_mode,surcharge_percent,surcharge_flat,tiers,band_prices\n"
)
# "First 15 minutes 1.00 flat, then 0.10 a minute in 60 s steps, 0.05 after an hour
# (and 0.50 once on reaching it)", capped at 5.00 (cut there), 2.5% + 0.01 a call.
FRANCE_CELLS = "60,5.00,cut,2.5,0.01,900:0.10:60|3600:0.05:60:0.50,peak=0.02|offpeak=0.01"
FRANCE_RATE = Rate(
    connect_fee=1_000_000,
    first_block=0,
    increment=1,
    price_per_minute=0,
    tiers=(
        Tier(start=900, price_per_minute=100_000, increment=60),
        Tier(start=3600, price_per_minute=50_000, increment=60, flat=500_000),
    ),
    max_cost=5_000_000,
    cut_at_max_cost=True,
    surcharge_percent_bp=250,
    surcharge_flat=10_000,
    band_prices=(("offpeak", 10_000), ("peak", 20_000)),
)
# The same shape as the shape API takes it.
FRANCE_SHAPE_JSON = {
    "tiers": [
        {"from_second": 900, "price_per_minute": "0.10", "increment": 60},
        {"from_second": 3600, "price_per_minute": "0.05", "increment": 60, "flat": "0.50"},
    ],
    "max_cost": "5.00",
    "max_cost_mode": "cut",
    "surcharge_percent": "2.5",
    "surcharge_flat": "0.01",
    "band_prices": {"peak": "0.02", "offpeak": "0.01"},
    "per": 60,
}
UK = Rate(connect_fee=0, first_block=60, increment=60, price_per_minute=10_000)
SHAPED_DECK = (
    SHAPE_HEADER
    + f"33,France,0,1.00,0,1,{FRANCE_CELLS}\n"
    + f"336,France,0,1.00,0,1,{FRANCE_CELLS.replace('5.00', '5')}\n"
    + "44,UK,0.010,0,60,60,,,,,,,\n"
)
BASE_DECK = HEADER + "33,France,0,1.00,0,1\n" + "336,France,0,1.00,0,1\n" + "44,UK,0.010,0,60,60\n"


def problems(text: str) -> list[tuple[int, str]]:
    """The problems both parses list (they must agree, and on the count of the rest)."""
    found = []
    for parse in (parse_deck, parse_deck_rows):
        with pytest.raises(DeckError) as refused:
            parse(text)
        found.append((refused.value.problems, refused.value.more))
    assert found[0] == found[1]
    return found[0][0]


# --- parsing -------------------------------------------------------------------------


def test_shape_columns_read_into_the_zone_rate() -> None:
    deck = parse_deck(SHAPED_DECK)
    assert list(deck) == parse_deck_rows(SHAPED_DECK)
    assert deck.zones == ["France", "UK"]
    assert deck.rates == [FRANCE_RATE, UK]
    assert deck.directions == ["outbound", "outbound"]
    assert deck.columns == frozenset(OPTIONAL_COLUMNS) - {"direction"}
    assert deck[1].rate == FRANCE_RATE and deck[1].direction == "outbound"


def test_columns_in_any_order_and_case_quoted_cells_and_spaces() -> None:
    text = (
        "Tiers,PREFIX,zone,Max_Cost_Mode,price_per_minute,connect_fee,first_block,increment\n"
        '" 900:0.10:60 ",33,France, CUT ,0,1.00,0,1\n'
        "900 : 0.1 : 60,330,France,cut,0,1.00,0,1\n"
    )
    deck = parse_deck(text)
    assert list(deck) == parse_deck_rows(text)
    assert deck.rates == [
        Rate(1_000_000, 0, 1, 0, tiers=(Tier(900, 100_000, 60),), cut_at_max_cost=True)
    ]
    assert deck.columns == {"tiers", "max_cost_mode"}


def test_empty_cells_are_the_defaults() -> None:
    text = SHAPE_HEADER.rstrip("\n") + ",direction\n44,UK,0.010,0,60,60,,,,,,,,\n"
    deck = parse_deck(text)
    assert deck.rates == [UK] and deck.directions == ["outbound"]
    assert deck.columns == frozenset(OPTIONAL_COLUMNS)


def test_a_deck_without_optional_columns_reads_as_before() -> None:
    deck = parse_deck(BASE_DECK)
    assert deck.columns == frozenset()
    assert deck.first_of_prefix is None
    assert deck.rates == [Rate(1_000_000, 0, 1, 0), UK]


@pytest.mark.parametrize(
    ("column", "cell", "message"),
    [
        ("per", "0", "per: expected a whole number of seconds or units from 1 to 1000000"),
        ("per", "1000001", "per: expected a whole number"),
        ("per", "1.5", "per: expected a whole number"),
        ("per", "abc", "per: expected a whole number"),
        ("max_cost", "-1", "max_cost: must not be negative"),
        ("max_cost", "0.0000001", "max_cost: more than 6 decimal places"),
        ("max_cost", "five", "max_cost: not a decimal amount"),
        ("max_cost_mode", "maybe", "max_cost_mode: expected free (the rest of the call is free)"),
        ("surcharge_percent", "2.555", 'surcharge_percent: a percentage such as "2.5": at most'),
        ("surcharge_percent", "-1", "surcharge_percent: a percentage such as"),
        ("surcharge_percent", "1000.01", "surcharge_percent: a percentage such as"),
        ("surcharge_percent", "x", "surcharge_percent: a percentage such as"),
        ("surcharge_flat", "1e3", "surcharge_flat: not a decimal amount"),
        ("tiers", "900", "tiers: tier 1 '900': expected from_second:price_per_minute"),
        ("tiers", "0:0.10", "tiers: tier 1 '0:0.10': from_second: expected the second"),
        ("tiers", "604801:0.10", "from_second: expected the second it starts at from 1 to"),
        ("tiers", "900:abc", "tiers: tier 1 '900:abc': price_per_minute: not a decimal"),
        ("tiers", "900:0.1:0", "tiers: tier 1 '900:0.1:0': increment: expected seconds"),
        ("tiers", "900:0.1:86401", "increment: expected seconds from 1 to 86400"),
        ("tiers", "900:0.1:60:-1", "tiers: tier 1 '900:0.1:60:-1': flat: must not be negative"),
        ("tiers", "900:0.1:60:1:2", "expected from_second:price_per_minute"),
        ("tiers", "900:0.1|800:0.2", "tier 2 '800:0.2': tiers must start at distinct seconds"),
        ("tiers", "900:0.1|900:0.2", "tiers must start at distinct seconds, in order"),
        ("tiers", "900:0.1|", "tiers: tier 2 '': expected from_second"),
        ("tiers", "|".join(f"{n}:0" for n in range(1, 34)), "tiers: at most 32 tiers, found 33"),
        ("band_prices", "peak", "band_prices: band price 1 'peak': expected band=price"),
        ("band_prices", "=0.10", "band_prices: band price 1 '=0.10': expected band=price"),
        ("band_prices", "peak=x", "band_prices: band price 1 'peak=x': not a decimal amount"),
        ("band_prices", "peak=1|peak=2", "band price 2 'peak=2': band 'peak' is priced twice"),
        ("band_prices", "|".join(f"b{n}=0" for n in range(17)), "at most 16 band prices"),
        ("direction", "sideways", "direction: expected outbound or inbound, got 'sideways'"),
    ],
)
def test_each_bad_cell_is_reported_with_its_line_and_column(
    column: str, cell: str, message: str
) -> None:
    header = BASE + "," + column
    good = "44,UK,0.010,0,60,60,"
    text = f"{header}\n{good}\n\n49,Germany,0.012,0,1,1,{cell}\n"
    found = problems(text)
    assert len(found) == 1 and found[0][0] == 4, found
    assert found[0][1].startswith(f"{column}: ") and message in found[0][1], found


def test_every_bad_row_is_reported_with_every_bad_cell() -> None:
    tiers = "tiers: tier 1 '900:x': price_per_minute: not a decimal amount: 'x'"
    per = "per: expected a whole number of seconds or units from 1 to 1000000, got '0'"
    text = (
        BASE + ",tiers,per,band_prices\n"
        "44,UK,0.010,0,60,60,900:0.1,60,\n"
        "45,UK,0.010,0,60,60,900:x,0,\n"  # two bad cells: in column order, per first
        "46,UK,0.010,0,60,60,900:0.1,0,peak=1\n"
        "4x,UK,0.010,0,60,60,900:x,60,\n"  # a bad prefix comes first
        "47,UK,0.010,0,60,60,900:x,60,pe\x00ak=1\n"  # a NUL in a band's name
    )
    assert problems(text) == [
        (3, per),
        (3, tiers),
        (4, per),
        (5, "prefix: expected 1 to 32 digits, got '4x'"),
        (5, tiers),
        (6, tiers),
        (
            6,
            "band_prices: band price 1 'pe\\x00ak=1': band holds the control character"
            " U+0000; names are printable text",
        ),
    ]


def test_rows_of_one_zone_must_agree_on_its_shape() -> None:
    text = (
        SHAPE_HEADER
        + f"33,France,0,1.00,0,1,{FRANCE_CELLS}\n"
        + f"330,France,0,1.00,0,1,{FRANCE_CELLS.replace('900:', '600:')}\n"
        + f"331,France,0,1.00,0,1,{FRANCE_CELLS.replace('cut', 'free')}\n"
        + f"332,France,0,1.00,0,1,{FRANCE_CELLS.replace('peak=0.02', 'peak=0.03')}\n"
        + f"333,France,0,1.00,0,1,{FRANCE_CELLS.replace('2.5', '2.50')}\n"  # the same value
    )
    assert problems(text) == [
        (3, "zone: 'France' has a different rate at line 2 (tiers differs)"),
        (4, "zone: 'France' has a different rate at line 2 (max_cost_mode differs)"),
        (5, "zone: 'France' has a different rate at line 2 (band_prices differs)"),
    ]


def test_only_the_first_problems_are_reported_with_shape_columns() -> None:
    lines = [f"4{i},UK,0.01,0,60,60,{i % 3 + 1}" for i in range(300)]
    text = BASE + ",per\n" + "\n".join(lines) + "\n"
    found = problems(text)
    assert len(found) == MAX_REPORTED
    assert found[0] == (3, "zone: 'UK' has a different rate at line 2 (per differs)")
    with pytest.raises(DeckError) as refused:
        parse_deck(text)
    assert refused.value.more == 200 - MAX_REPORTED  # two lines in three differ from line 2


def test_a_header_naming_a_column_twice_or_an_unknown_one_is_refused() -> None:
    assert problems(BASE + ",tiers,Tiers\n44,UK,0.01,0,60,60,,\n")[0][1].startswith(
        "column(s) given twice tiers;"
    )
    ((line, message),) = problems(BASE + ",max_duration\n44,UK,0.01,0,60,60,1\n")
    assert line == 1 and message.startswith("unknown column(s) max_duration; expected ")
    assert "optionally direction,per,max_cost,max_cost_mode" in message


# --- directions ----------------------------------------------------------------------


def test_a_prefix_may_be_rated_once_per_direction_in_one_zone() -> None:
    text = (
        BASE + ",direction,max_cost\n"
        "44,UK,0.010,0,60,60,outbound,1\n"
        "44,UK,0.005,0,1,1,inbound,\n"
        "447,UK,0.010,0,60,60,,1\n"
        "49,Germany,0.012,0,1,1,INBOUND,\n"
    )
    deck = parse_deck(text)
    assert list(deck) == parse_deck_rows(text)
    assert deck.zones == ["UK", "UK", "Germany"]
    assert deck.directions == ["outbound", "inbound", "inbound"]
    assert deck.rates == [
        replace(UK, max_cost=1_000_000),
        Rate(0, 1, 1, 5_000),
        Rate(0, 1, 1, 12_000),
    ]
    by_prefix = deck.by_prefix()
    assert [(row.prefix, row.zone) for row in by_prefix] == [
        ("44", "UK"),
        ("447", "UK"),
        ("49", "Germany"),
    ]
    # Each stored prefix rates calls in the directions its rows gave: both, out, in.
    for parsed in (deck, Deck.from_rows(parse_deck_rows(text))):
        directions = parsed.prefix_directions()
        assert directions is not None and directions.tolist() == [3, 1, 2]
    assert parse_deck(BASE_DECK).prefix_directions() is None  # one way: the zones say it


def test_direction_mistakes_are_reported() -> None:
    text = (
        BASE + ",direction\n"
        "44,UK,0.010,0,60,60,outbound\n"
        "44,UK Mobile,0.005,0,1,1,inbound\n"  # one prefix, two zones
        "44,UK,0.005,0,1,1,inbound\n"
        "44,UK,0.005,0,1,1,inbound\n"  # given twice inbound
        "447,UK,0.004,0,1,1,inbound\n"  # UK inbound at another rate
        "44,UK,0.010,0,60,60,\n"  # given twice outbound (empty is outbound)
    )
    assert problems(text) == [
        (3, "zone: prefix 44 is in zone 'UK' at line 2; a prefix has one zone in every direction"),
        (5, "prefix: 44 already given for inbound at line 4"),
        (6, "zone: 'UK' has a different inbound rate at line 4 (price_per_minute differs)"),
        (7, "prefix: 44 already given at line 2"),
    ]


# --- the fast parse and the reference agree ------------------------------------------

CELLS = {
    "direction": ["", "outbound", "inbound", " Inbound ", "in", '"inbound"'],
    "per": ["", "60", "1", "0", "1000000", "x", " 6 ", '"60"', "\u00a060"],
    "max_cost": ["", "5", "5.00", "-1", "0.0000001", '"1.5"', "abc"],
    "max_cost_mode": ["", "free", "cut", "CUT", "maybe"],
    "surcharge_percent": ["", "2.5", "2.50", "2.555", "1000", "1000.5"],
    "surcharge_flat": ["", "0.01", ".01", "x"],
    "tiers": ["", "900:0.1:60", "900:0.10:60:0", " 900 : 0.1 : 60 ", "900:0.1|800:0.2", "900"],
    "band_prices": ["", "peak=0.1", "offpeak=0.05|peak=0.1", "peak=0.1|offpeak=0.05", "p=1|p=2"],
}


@st.composite
def shaped_decks(draw: st.DrawFn) -> str:
    columns = draw(st.lists(st.sampled_from(OPTIONAL_COLUMNS), unique=True, min_size=1))
    lines = [BASE + "," + ",".join(columns)]
    for _ in range(draw(st.integers(0, 10))):
        fields = [
            draw(st.sampled_from(["44", "441", "+44", "4x", '"4""4"'])),
            draw(st.sampled_from(["A", "B", '"C, c"'])),
            draw(st.sampled_from(["0.01", "0.02"])),
            "0",
            "60",
            "60",
        ]
        fields += [draw(st.sampled_from(CELLS[c])) for c in columns]
        if draw(st.integers(0, 19)) == 0:
            fields = fields[:-1]
        lines.append(",".join(fields))
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines) + "\n"


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shaped_decks())
def test_the_compiled_parse_agrees_with_the_reference_on_optional_columns(text: str) -> None:
    assert outcome(parse_deck, text) == outcome(parse_deck_rows, text), repr(text)


def test_a_large_shaped_deck_reads_as_the_reference_reads_it() -> None:
    lines = [SHAPE_HEADER.rstrip("\n") + ",direction"]
    for i in range(6_000):
        # Each prefix twice, outbound then inbound, in one zone; each zone and
        # direction with its own shape.
        zone, inbound = (i // 2) % 7, i % 2
        cells = [
            str(60 if zone else 1),
            f"{zone}.5" if zone % 2 else "",
            "cut" if zone == 3 else "free",
            f"{zone}.2{inbound}",
            "0.01",
            f"{100 + zone}:0.{zone}:6|{200 + zone}:0.0{zone}:60:1",
            f"peak=0.{zone}|offpeak=0",
        ]
        direction = "inbound" if inbound else "outbound"
        lines.append(f"{4000 + i // 2},Z{zone},0.0{zone},0,{zone},1,{','.join(cells)},{direction}")
    lines.insert(100, '4999999,"Z""q",0.01,0,1,1,60,,,,,"900:0.1",,')  # left to the reference
    text = "\n".join(lines) + "\n"
    deck = parse_deck(text)
    assert list(deck) == parse_deck_rows(text)
    assert len(deck.zones) == 15  # 7 zones in two directions, and Z"q
    assert len(deck.by_prefix()) == 3_001
    assert deck.rates[deck.zones.index("Z3")].cut_at_max_cost


# --- the one-cell syntaxes round-trip ------------------------------------------------

micro = st.integers(0, 10**9)
tiers = st.lists(
    st.tuples(st.integers(1, 7 * 24 * 3600), micro, st.integers(1, 86_400), micro),
    max_size=6,
    unique_by=lambda t: t[0],
).map(lambda ts: tuple(Tier(s, p, i, f) for s, p, i, f in sorted(ts)))
band_prices = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz-_ ", min_size=1, max_size=10).map(str.strip).filter(bool),
    micro,
    max_size=16,
).map(lambda d: tuple(sorted(d.items())))
shaped_rates = st.builds(
    Rate,
    connect_fee=micro,
    first_block=st.integers(0, 86_400),
    increment=st.integers(1, 86_400),
    price_per_minute=micro,
    tiers=tiers,
    max_cost=st.integers(0, 10**12),
    cut_at_max_cost=st.booleans(),
    per=st.integers(1, 1_000_000),
    surcharge_percent_bp=st.integers(0, 100_000),
    surcharge_flat=micro,
    band_prices=band_prices,
)


@given(tiers)
def test_tiers_round_trip(value: tuple[Tier, ...]) -> None:
    assert parse_tiers(format_tiers(value)) == value


@given(band_prices)
def test_band_prices_round_trip(value: tuple[tuple[str, int], ...]) -> None:
    assert parse_band_prices(format_band_prices(value)) == value


@settings(max_examples=300, deadline=None)
@given(shaped_rates, st.sampled_from(["outbound", "inbound"]))
def test_a_deck_row_written_from_a_rate_reads_back_that_rate(rate: Rate, direction: str) -> None:
    cells = shape_cells(rate, direction)
    header = BASE + "," + ",".join(cells)

    def amount(value: int) -> str:
        return f"{value // 1_000_000}.{value % 1_000_000:06d}"

    row = (
        f"44,Z,{amount(rate.price_per_minute)},{amount(rate.connect_fee)},"
        f"{rate.first_block},{rate.increment}," + ",".join(cells.values())
    )
    text = f"{header}\n{row}\n"
    deck = parse_deck(text)
    assert deck.rates == [rate] and deck.directions == [direction]
    assert list(deck) == parse_deck_rows(text)


# --- imported into PostgreSQL --------------------------------------------------------


async def _shape(app: RunningApp, plan: str, zone: str, body: dict) -> dict:
    response = await app.client.put(f"/v1/plans/{plan}/tariffs/{quote(zone)}/shape", json=body)
    answer = await response.json()
    assert response.status == 200, answer
    return answer


async def _plan(app: RunningApp, plan: str, deck: str) -> None:
    status, body = await app.post("/v1/plans", {"id": plan, "currency": "EUR"})
    assert status == 201, body
    status, body = await import_over_http(app, plan, deck)
    assert status == 200, body


async def _rate(app: RunningApp, plan: str, zone: str) -> Rate:
    """The zone's outbound rate in a freshly loaded catalog snapshot."""
    await app.services.catalog.reload()
    tariff = app.services.catalog.snapshot.tariff_named(plan, zone)
    assert tariff is not None, (plan, zone)
    return tariff.rate


async def _tariffs(pool: asyncpg.Pool, plan: str) -> list[tuple]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT z.name, t.direction, t.price_per_minute, t.max_cost, t.tiers::text"
            " FROM tariffs t JOIN zones z ON z.id = t.zone_id WHERE t.plan_id = $1"
            " ORDER BY z.name, t.direction",
            plan,
        )
    return [tuple(r.values()) for r in rows]


async def test_an_imported_shape_is_the_one_the_shape_api_sets(app: RunningApp) -> None:
    await _plan(app, "by-api", BASE_DECK)
    await _shape(app, "by-api", "France", FRANCE_SHAPE_JSON)
    await _plan(app, "by-csv", SHAPED_DECK)
    by_api = await _rate(app, "by-api", "France")
    assert by_api == FRANCE_RATE
    assert await _rate(app, "by-csv", "France") == by_api
    assert await _rate(app, "by-csv", "UK") == await _rate(app, "by-api", "UK") == UK
    # Rated alike: a 20-minute call on each plan.
    costs = []
    for plan in ("by-api", "by-csv"):
        status, body = await app.post(
            "/v1/accounts", {"id": f"fr-{plan}", "plan": plan, "balance": "3.00"}
        )
        assert status == 201, body
        status, grant = await app.post(
            "/v1/calls", {"account": f"fr-{plan}", "destination": "33612345678"}
        )
        assert status == 201 and grant["zone"] == "France", grant
        _, stopped = await app.post(f"/v1/calls/{grant['call_id']}/stop", {"duration": 20 * 60})
        costs.append(stopped["cost"])
    # (1.00 connect + 5 minutes at 0.10) + 2.5%, + 0.01 a call.
    assert costs == ["1.547500", "1.547500"]
    assert cost(FRANCE_RATE, 20 * 60) == 1_547_500


async def test_a_reimport_without_shape_columns_keeps_the_shapes(app: RunningApp) -> None:
    await _plan(app, "retail", SHAPED_DECK)
    assert await _rate(app, "retail", "France") == FRANCE_RATE
    status, body = await import_over_http(app, "retail", BASE_DECK)
    assert status == 200, body
    assert await _rate(app, "retail", "France") == FRANCE_RATE
    # A shape set through the API outlives a re-import without its column too.
    await _shape(app, "retail", "UK", {"per": 1, "max_cost": "2.00"})
    status, body = await import_over_http(app, "retail", BASE_DECK)
    assert status == 200, body
    assert await _rate(app, "retail", "UK") == replace(UK, per=1, max_cost=2_000_000)
    assert await _rate(app, "retail", "France") == FRANCE_RATE


async def test_a_shape_column_replaces_its_field_and_leaves_the_others(app: RunningApp) -> None:
    await _plan(app, "retail", SHAPED_DECK)
    await _shape(app, "retail", "UK", {"surcharge_flat": "0.02", "max_cost": "2.00"})
    # Only max_cost in the deck: France's cap moves, UK's goes (an empty cell is no
    # cap), and tiers, surcharges, band prices stay as stored.
    deck = (
        BASE + ",max_cost\n33,France,0,1.00,0,1,7.50\n336,France,0,1.00,0,1,7.5\n"
        "44,UK,0.010,0,60,60,\n"
    )
    status, body = await import_over_http(app, "retail", deck)
    assert status == 200, body
    assert await _rate(app, "retail", "France") == replace(FRANCE_RATE, max_cost=7_500_000)
    assert await _rate(app, "retail", "UK") == replace(UK, surcharge_flat=20_000)
    # Every shape column with empty cells: every shape back to the defaults.
    empty = SHAPE_HEADER + "33,France,0,1.00,0,1,,,,,,,\n44,UK,0.010,0,60,60,,,,,,,\n"
    status, body = await import_over_http(app, "retail", empty)
    assert status == 200, body
    assert await _rate(app, "retail", "France") == Rate(1_000_000, 0, 1, 0)
    assert await _rate(app, "retail", "UK") == UK


async def test_a_shape_change_alone_writes_no_prefix(app: RunningApp) -> None:
    await _plan(app, "retail", BASE_DECK)
    result = await catalog_store.import_deck(app.services.pool, "retail", parse_deck(SHAPED_DECK))
    assert (result.prefixes, result.zones) == (3, 2)
    assert (result.added, result.changed, result.removed) == (0, 0, 0)
    assert await _rate(app, "retail", "France") == FRANCE_RATE


async def test_a_bad_shaped_deck_is_refused_by_line_and_applies_nothing(app: RunningApp) -> None:
    await _plan(app, "retail", SHAPED_DECK)
    before = await _tariffs(app.services.pool, "retail")
    bad = (
        SHAPE_HEADER
        + "33,France,0,1.00,0,1,60,9,cut,2.5,0.01,900:0.10:60,\n"
        + "44,UK,0.010,0,60,60,60,,,,,900:0.10:60|600:1,\n"
        + "49,Germany,0.012,0,1,1,60,,sometimes,,,,\n"
    )
    status, body = await import_over_http(app, "retail", bad)
    assert status == 400, body
    error = body["error"]
    assert (error["reason"], error["field"]) == ("invalid_deck", "deck")
    assert [(p["line"], p["message"].split(":")[0]) for p in error["problems"]] == [
        (3, "tiers"),
        (4, "max_cost_mode"),
    ]
    assert await _tariffs(app.services.pool, "retail") == before
    assert await _rate(app, "retail", "France") == FRANCE_RATE


async def test_inbound_rows_are_stored_beside_the_outbound_ones(app: RunningApp) -> None:
    deck = (
        BASE + ",direction,max_cost\n"
        "44,UK,0.010,0,60,60,outbound,\n"
        "44,UK,0.005,0,1,1,inbound,1\n"
        "447,UK,0.010,0,60,60,outbound,\n"
        "447,UK,0.005,0,1,1,inbound,1\n"
        "49,Germany,0.012,0,1,1,inbound,\n"
    )
    status, body = await _plan_and_answer(app, "retail", deck)
    assert body == {"plan": "retail", "prefixes": 3, "zones": 2} | {
        "added": 3,
        "changed": 0,
        "removed": 0,
    }, (status, body)
    assert await _tariffs(app.services.pool, "retail") == [
        ("Germany", "inbound", 12_000, 0, "[]"),
        ("UK", "inbound", 5_000, 1_000_000, "[]"),
        ("UK", "outbound", 10_000, 0, "[]"),
    ]
    async with app.services.pool.acquire() as conn:
        prefixes = await conn.fetch(
            "SELECT p.prefix, z.name FROM prefixes p JOIN zones z ON z.id = p.zone_id"
            " WHERE p.plan_id = 'retail' ORDER BY p.prefix"
        )
    assert [tuple(r.values()) for r in prefixes] == [("44", "UK"), ("447", "UK"), ("49", "Germany")]
    # The catalog rates outbound calls: UK at its outbound rate, Germany (inbound only) not at all.
    assert await _rate(app, "retail", "UK") == UK
    snapshot = app.services.catalog.snapshot
    assert snapshot.tariff_for("retail", "4930123456") is None
    # The shape API sets the outbound tariff only; a re-import keeps both shapes.
    await _shape(app, "retail", "UK", {"max_cost": "3.00"})
    plain = (
        BASE + ",direction\n44,UK,0.010,0,60,60,outbound\n44,UK,0.005,0,1,1,inbound\n"
        "447,UK,0.010,0,60,60,\n"
    )
    status, body = await import_over_http(app, "retail", plain)
    assert status == 200, body
    assert await _tariffs(app.services.pool, "retail") == [
        ("UK", "inbound", 5_000, 1_000_000, "[]"),
        ("UK", "outbound", 10_000, 3_000_000, "[]"),
    ]


async def test_a_prefix_rates_calls_only_in_the_directions_it_was_given(
    app: RunningApp,
) -> None:
    # 44 is given for inbound calls only, in zone UK, which 447 rates outbound.
    deck = (
        BASE + ",direction\n"
        "4,Europe,0.50,0,1,1,outbound\n"
        "44,UK,0.01,0,1,1,inbound\n"
        "447,UK,0.02,0,1,1,outbound\n"
    )
    await _plan(app, "retail", deck)
    status, body = await app.post(
        "/v1/accounts", {"id": "a-retail", "plan": "retail", "balance": "10.00"}
    )
    assert status == 201, body
    await app.services.catalog.reload()
    snapshot = app.services.catalog.snapshot

    def matched(number: str, direction: str) -> tuple[str, str, int] | None:
        match = snapshot.tariff_for("retail", number, direction)
        return None if match is None else (match[0], match[1].zone, match[1].rate.price_per_minute)

    assert matched("442071234567", "outbound") == ("4", "Europe", 500_000)
    assert matched("447700900123", "outbound") == ("447", "UK", 20_000)
    assert matched("442071234567", "inbound") == ("44", "UK", 10_000)
    assert matched("447700900123", "inbound") == ("44", "UK", 10_000)
    assert matched("4930123456", "inbound") is None
    # A minute to London is charged at Europe's 0.50, not at UK's 0.02.
    assert (await call(app, "a-retail", "442071234567", 60))["cost"] == "0.500000"
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT prefix, direction FROM prefixes WHERE plan_id = 'retail' ORDER BY prefix"
        )
    assert [tuple(r.values()) for r in rows] == [
        ("4", "outbound"),
        ("44", "inbound"),
        ("447", "outbound"),
    ]
    # Given both ways now: a change the import counts, and outbound calls to 4420 are UK's.
    both = deck.replace(
        "447,UK,0.02,0,1,1,outbound", "447,UK,0.02,0,1,1,outbound\n44,UK,0.02,0,1,1,outbound"
    )
    status, body = await import_over_http(app, "retail", both)
    assert (status, body["added"], body["changed"], body["removed"]) == (200, 0, 1, 0), body
    await app.services.catalog.reload()
    match = app.services.catalog.snapshot.tariff_for("retail", "442071234567")
    assert match is not None and (match[0], match[1].zone) == ("44", "UK")


async def _plan_and_answer(app: RunningApp, plan: str, deck: str) -> tuple[int, dict]:
    status, body = await app.post("/v1/plans", {"id": plan, "currency": "EUR"})
    assert status == 201, body
    return await import_over_http(app, plan, deck)


def test_shape_cells_write_a_deck_the_import_reads() -> None:
    cells = shape_cells(FRANCE_RATE)
    assert cells == {
        "direction": "outbound",
        "per": "60",
        "max_cost": "5",
        "max_cost_mode": "cut",
        "surcharge_percent": "2.5",
        "surcharge_flat": "0.01",
        "tiers": "900:0.1:60:0|3600:0.05:60:0.5",
        "band_prices": "offpeak=0.01|peak=0.02",
    }
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*BASE.split(","), *cells])
    writer.writerow(["33", "France", "0", "1", "0", "1", *cells.values()])
    assert parse_deck(out.getvalue()).rates == [FRANCE_RATE]
