"""Rate exports of A2Billing, ASTPP and MagnusBilling imported as a plan's deck.

The samples in tests/data/peer_decks/ are built from each system's documented
columns (docs/peer-decks.md). Each one read gives the rates its columns mean;
imported over the API (``?format=``) or the CLI (``ocs tariffs import-peer``),
calls are charged what the peer's own formula charges, computed here by hand.
A bad export is refused whole, every problem named by line and peer column.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from ocs.config import Settings
from ocs.decks.peers import PEER_FORMATS, peer_deck_to_ocs, read_peer_deck
from ocs.decks.problems import DeckError
from ocs.decks.rate_deck import parse_deck
from ocs.rating.rates import Rate, Tier
from tests.conftest import RunningApp, eventually
from tests.deck_helpers import call, deck_rows, import_over_http, wait_until_served
from tests.helpers import ocs_cli

SAMPLES = Path(__file__).parent / "data" / "peer_decks"
FILES = {
    "a2billing": SAMPLES / "a2billing_ratecard.csv",
    "astpp": SAMPLES / "astpp_origination_rates.csv",
    "magnusbilling": SAMPLES / "magnusbilling_rates.csv",
}

# Each sample's rows: (prefix, zone, rate); amounts in micro-units.
EXPECTED_ROWS: dict[str, list[tuple[str, str, Rate]]] = {
    "a2billing": [
        ("44", "United Kingdom Fixed", Rate(0, 60, 60, 10_000)),
        # connectcharge 0.10 + disconnectcharge 0.05 on every answered call (threshold 0).
        ("447", "United Kingdom Mobile", Rate(150_000, 30, 6, 60_000)),
        # "Germany" carries two rates: a zone each. billingblock 0 is per second.
        ("49", "Germany (49)", Rate(0, 0, 1, 12_000)),
        # initblock 45, billingblock 30: 45 s at least, then the whole call in 30 s steps.
        ("4915", "Germany (4915)", Rate(0, 45, 15, 90_000, tiers=(Tier(60, 90_000, 30),))),
        ("331", "France, Paris", Rate(0, 1, 59, 30_000, tiers=(Tier(60, 30_000, 60),))),
    ],
    "astpp": [
        ("44", "United Kingdom", Rate(0, 60, 60, 10_000)),
        ("447", "United Kingdom Mobile", Rate(100_000, 30, 6, 60_000)),
        # 10 grace seconds free, then per second.
        ("49", "Germany", Rate(20_000, 0, 1, 0, tiers=(Tier(10, 12_000, 1),))),
        # 5 grace seconds, then 30 s whole, then 6 s steps.
        ("33", "France", Rate(0, 0, 1, 0, tiers=(Tier(5, 30_000, 30), Tier(35, 30_000, 6)))),
        # No destination (--): named by its prefix; increment 0 is per second.
        ("1", "1", Rate(0, 0, 1, 15_000)),
    ],
    "magnusbilling": [
        ("5511", "Brasil Sao Paulo Fixo", Rate(0, 30, 6, 50_000)),
        ("55119", "Brasil Sao Paulo Movel", Rate(100_000, 60, 60, 200_000)),
        ("351", "Portugal", Rate(0, 1, 59, 40_000, tiers=(Tier(60, 40_000, 60),))),
    ],
}

# (number, seconds, cost): each worked out by the peer's own formula.
CALLS: dict[str, list[tuple[str, int, str]]] = {
    "a2billing": [
        # 45 s in 6 s blocks = 48 s at 0.06/min = 0.048, + 0.10 connect + 0.05 disconnect.
        ("447700900123", 45, "0.198000"),
        ("442071234567", 10, "0.010000"),  # at least 60 s: 0.01
        ("4930123456", 7, "0.001400"),  # 7 s at 0.012/min
        ("4915112345678", 40, "0.067500"),  # initblock: 45 s at 0.09/min
        ("4915112345678", 50, "0.090000"),  # 50 s rounded up to 30 s blocks: 60 s
        ("4915112345678", 61, "0.135000"),  # 90 s
        ("33112345678", 1, "0.000500"),  # initblock 1 s at 0.03/min
        ("33112345678", 30, "0.030000"),  # rounded up to 60 s
        ("33112345678", 61, "0.060000"),  # 120 s
    ],
    "astpp": [
        # 30 s initial increment + 15 s in 6 s steps = 48 s at 0.06, + 0.10 connection.
        ("447700900123", 45, "0.148000"),
        ("4930123456", 8, "0.020000"),  # within 10 grace seconds: the connection cost
        ("4930123456", 70, "0.032000"),  # 60 s past the grace at 0.012, + 0.02
        ("33123456789", 5, "0.000000"),  # grace only
        ("33123456789", 20, "0.015000"),  # 15 s past the grace: the 30 s initial increment
        ("33123456789", 40, "0.018000"),  # 35 s past: 30 + 6 = 36 s at 0.03
        ("12125550100", 10, "0.002500"),  # per second at 0.015
    ],
    "magnusbilling": [
        ("551130001234", 45, "0.040000"),  # 48 s at 0.05
        ("5511987654321", 61, "0.500000"),  # 120 s at 0.20, + 0.10 connect
        ("351211234567", 1, "0.000667"),  # initblock 1 s at 0.04: 0.000666.., rounded up
        ("351211234567", 2, "0.040000"),  # past initblock: the call rounded up to 60 s
    ],
}


# A number of each sample and its zone: once served, the server rates by the new deck.
SERVED = {
    "a2billing": ("33112345678", "France, Paris"),
    "astpp": ("33123456789", "France"),
    "magnusbilling": ("351211234567", "Portugal"),
}


def as_rows(deck: object) -> list[tuple[str, str, Rate]]:
    """(prefix, zone, rate) of each row of a parsed deck."""
    return [(row.prefix, row.zone, row.rate) for row in deck]  # type: ignore[attr-defined]


def problems_of(error: DeckError) -> list[tuple[int, str | None]]:
    """(line, column) of each problem, as the API's error body names them."""
    body = error.to_json()["error"]
    assert isinstance(body, dict)
    return [(p["line"], p["column"]) for p in body["problems"]]


def refused(fmt: str, text: str, currency: str | None = None) -> DeckError:
    """The DeckError reading ``text`` must raise."""
    with pytest.raises(DeckError) as caught:
        read_peer_deck(fmt, text, currency=currency)
    return caught.value


# --- reading -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", PEER_FORMATS)
def test_each_sample_reads_to_the_rates_its_columns_mean(fmt: str) -> None:
    deck = read_peer_deck(fmt, FILES[fmt].read_bytes(), currency="EUR")
    assert as_rows(deck) == EXPECTED_ROWS[fmt]


@pytest.mark.parametrize("fmt", PEER_FORMATS)
def test_the_ocs_deck_written_reads_back_to_the_same_rates(fmt: str) -> None:
    text = peer_deck_to_ocs(fmt, FILES[fmt].read_bytes())
    assert text.startswith("prefix,zone,price_per_minute,connect_fee,first_block,increment,tiers\n")
    assert as_rows(parse_deck(text)) == EXPECTED_ROWS[fmt]


def test_an_export_without_tiers_is_written_with_an_empty_tiers_column() -> None:
    # Imported, the written deck replaces every zone's tiers as the export itself does.
    text = peer_deck_to_ocs("astpp", "49,Germany,0,0,0.50,60,60\n")
    assert text == (
        "prefix,zone,price_per_minute,connect_fee,first_block,increment,tiers\n"
        "49,Germany,0.5,0,60,60,\n"
    )
    assert "tiers" in parse_deck(text).columns


def test_astpp_patterns_and_its_import_file_without_a_header() -> None:
    text = "^44.*,UK,0.01,0,0.02,60,60\n+49,Germany,0,0,0.012,0,1\n"
    assert as_rows(read_peer_deck("astpp", text)) == [
        ("44", "UK", Rate(10_000, 60, 60, 20_000)),
        ("49", "Germany", Rate(0, 0, 1, 12_000)),
    ]


def test_magnusbilling_with_its_column_names_as_header() -> None:
    text = (
        "prefix,destination,rateinitial,initblock,billingblock,connectcharge,status,id_plan\n"
        "351,Portugal,0.04,60,60,0.01,1,3\n"
    )
    assert as_rows(read_peer_deck("magnusbilling", text)) == [
        ("351", "Portugal", Rate(10_000, 60, 60, 40_000))
    ]


def test_a_bad_a2billing_export_is_refused_with_every_problem_by_line_and_column() -> None:
    error = refused("a2billing", (SAMPLES / "a2billing_bad.csv").read_text())
    assert problems_of(error) == [
        (3, "rateinitial"),  # abc
        (4, "dialprefix"),  # defaultprefix
        (5, "disconnectcharge_after"),  # a disconnect charge from 30 s only
        (6, "minimal_cost"),
        (6, "chargea"),  # progressive rates
        (7, "stopdate"),
        (8, "starttime"),  # part of the week only
        (9, "dialprefix"),  # 33 again
        (10, "rateinitial"),  # seven decimals
        (10, "initblock"),  # x
    ]
    assert "already given at line 2" in error.problems[7][1]
    assert "0.50" in error.problems[3][1]
    assert error.message.startswith("A2Billing rate export rejected, nothing applied: line 3:")


def test_seconds_of_4400_digits_are_a_problem_of_their_cell_not_a_crash() -> None:
    # Python's int() refuses text past 4,300 digits: the cell is refused by its length.
    text = "dialprefix,dest_name,rateinitial,initblock\n44,UK,0.01," + "6" * 4400 + "\n"
    error = refused("a2billing", text)
    assert problems_of(error) == [(2, "initblock")]
    assert "expected whole seconds from 0 to" in error.problems[0][1]


def test_a_bad_astpp_export_names_its_own_header_labels() -> None:
    text = (
        "Code,Destination,Connection Cost(EUR),Grace Time,Cost / Min(EUR),Initial Increment,"
        "Increment,Status\n"
        "44,UK,0,0,0.01,60,60,Active\n"
        "^44[0-9].*,UK,0,0,0.01,60,60,Active\n"
        "45,Denmark,0,0,0.0x,60,60,Inactive\n"
    )
    error = refused("astpp", text)
    assert problems_of(error) == [(3, "pattern"), (4, "cost"), (4, "status")]
    assert 'column "Cost / Min(EUR)"' in error.problems[1][1]
    assert "dial pattern" in error.problems[0][1]


def test_a_bad_magnusbilling_file_refuses_the_money_ocs_cannot_charge_the_same_way() -> None:
    text = "351;Portugal;0,04;60;60;5;0;0\n352;Luxembourg;0,04;60;60;0;0;0,05\n353;Ireland;0,04\n"
    error = refused("magnusbilling", text)
    assert problems_of(error) == [
        (1, "minimal_time_charge"),  # calls up to 5 s free
        (2, "disconnectcharge"),
        (3, None),  # 3 fields where the first line has 8
    ]


def test_a_header_in_another_currency_than_the_plans_is_refused() -> None:
    text = FILES["astpp"].read_text()
    error = refused("astpp", text, currency="USD")
    assert problems_of(error) == [(1, "connectcost"), (1, "cost")]
    assert "prices in EUR, the plan's currency is USD" in error.problems[0][1]


def test_an_unknown_column_is_refused_rather_than_ignored() -> None:
    error = refused("a2billing", "dialprefix,rateinitial,surcharge\n44,0.01,0.5\n")
    assert error.problems == [
        (
            1,
            "unknown column(s) surcharge: not among A2Billing's rate columns"
            " (docs/peer-decks.md lists them)",
        )
    ]


def test_an_unnamed_column_may_only_stay_empty() -> None:
    text = "dialprefix,dest_name,rateinitial,\n44,UK,0.01,\n"
    assert as_rows(read_peer_deck("a2billing", text)) == [("44", "UK", Rate(0, 0, 1, 10_000))]
    error = refused("a2billing", text + "45,Denmark,0.02,0.01\n")
    assert error.problems == [(3, "field 4 holds '0.01' under no column name")]


# --- over the API ----------------------------------------------------------------------


async def import_peer_over_http(
    app: RunningApp, plan_id: str, fmt: str, data: bytes
) -> tuple[int, dict[str, Any]]:
    """POST a peer's export to the plan's tariffs: (status, the JSON answer)."""
    response = await app.client.post(
        f"/v1/plans/{plan_id}/tariffs?format={fmt}",
        data=data,
        headers={"Content-Type": "text/csv"},
    )
    return response.status, await response.json()


async def plan_and_account(app: RunningApp, plan_id: str) -> str:
    """A EUR plan and an account on it with 10.00: the account's id."""
    status, body = await app.post("/v1/plans", {"id": plan_id, "currency": "EUR"})
    assert status == 201, body
    status, body = await app.post(
        "/v1/accounts", {"id": f"a-{plan_id}", "plan": plan_id, "balance": "10.00"}
    )
    assert status == 201, body
    return f"a-{plan_id}"


@pytest.mark.parametrize("fmt", PEER_FORMATS)
async def test_each_export_imported_over_the_api_charges_calls_as_the_peer_did(
    app: RunningApp, fmt: str
) -> None:
    account = await plan_and_account(app, fmt)
    status, body = await import_peer_over_http(app, fmt, fmt, FILES[fmt].read_bytes())
    assert status == 200, body
    expected = EXPECTED_ROWS[fmt]
    assert (body["prefixes"], body["added"]) == (len(expected), len(expected))
    stored = await deck_rows(app, fmt)
    assert sorted((prefix, zone) for prefix, zone, *_ in stored) == sorted(
        (prefix, zone) for prefix, zone, _ in expected
    )
    await wait_until_served(app, fmt, *SERVED[fmt])
    costs = [
        (number, seconds, (await call(app, account, number, seconds))["cost"])
        for number, seconds, _ in CALLS[fmt]
    ]
    assert costs == CALLS[fmt]


# (format, an export whose German rate needs tiers, the next export: none, 0.50 a minute).
REIMPORTS = [
    (
        "a2billing",
        # initblock 30, billingblock 60: a tier from second 60 at 0.10.
        "dest_name,dialprefix,rateinitial,initblock,billingblock\nGermany,49,0.10,30,60\n",
        "dest_name,dialprefix,rateinitial,initblock,billingblock\nGermany,49,0.50,60,60\n",
    ),
    (
        "astpp",
        # 30 included seconds: a free base and a tier from second 30 at 0.10.
        "49,Germany,0,30,0.10,1,1\n",
        "49,Germany,0,0,0.50,60,60\n",
    ),
]


@pytest.mark.parametrize(("fmt", "first", "second"), REIMPORTS)
async def test_a_reimported_export_replaces_the_tiers_of_the_one_before(
    app: RunningApp, fmt: str, first: str, second: str
) -> None:
    account = await plan_and_account(app, fmt)
    for export in (first, second):
        status, body = await import_peer_over_http(app, fmt, fmt, export.encode())
        assert status == 200, body

    async def second_served() -> bool:
        match = app.services.catalog.snapshot.tariff_for(fmt, "4930123456")
        return match is not None and match[1].rate.price_per_minute == 500_000

    await eventually(second_served, what="the second export's price served")
    # Ten minutes at the second export's 0.50 a minute, none at the first's tier price.
    assert (await call(app, account, "4930123456", 600))["cost"] == "5.000000"


async def test_an_unknown_format_is_a_400_naming_format(app: RunningApp) -> None:
    await plan_and_account(app, "retail")
    status, body = await import_peer_over_http(app, "retail", "freeswitch", b"44,UK,0.01\n")
    assert status == 400, body
    assert body["error"]["field"] == "format"
    assert "'freeswitch'" in body["error"]["message"]
    # The formats it takes are in the API's description.
    status, spec = await app.get("/openapi.json")
    operation = spec["paths"]["/v1/plans/{plan_id}/tariffs"]["post"]
    (param,) = [p for p in operation["parameters"] if p["name"] == "format"]
    assert (status, param["in"]) == (200, "query")


async def test_a_bad_export_over_the_api_is_a_400_naming_lines_and_columns_and_changes_nothing(
    app: RunningApp,
) -> None:
    await plan_and_account(app, "retail")
    status, body = await import_over_http(
        app,
        "retail",
        "prefix,zone,price_per_minute,connect_fee,first_block,increment\n44,UK,0.01,0,60,60\n",
    )
    assert status == 200, body
    bad = (SAMPLES / "a2billing_bad.csv").read_bytes()
    status, body = await import_peer_over_http(app, "retail", "a2billing", bad)
    assert status == 400, body
    error = body["error"]
    assert (error["reason"], error["field"]) == ("invalid_deck", "deck")
    assert [(p["line"], p["column"]) for p in error["problems"]][:3] == [
        (3, "rateinitial"),
        (4, "dialprefix"),
        (5, "disconnectcharge_after"),
    ]
    assert len(error["problems"]) == 10
    assert await deck_rows(app, "retail") == [("44", "UK", 10_000, 0, 60, 60)]


async def test_an_export_priced_in_another_currency_is_refused_over_the_api(
    app: RunningApp,
) -> None:
    status, body = await app.post("/v1/plans", {"id": "usd", "currency": "USD"})
    assert status == 201, body
    status, body = await import_peer_over_http(app, "usd", "astpp", FILES["astpp"].read_bytes())
    assert status == 400, body
    assert [p["column"] for p in body["error"]["problems"]] == ["connectcost", "cost"]
    assert await deck_rows(app, "usd") == []


# --- the command line ------------------------------------------------------------------


async def test_the_cli_imports_an_export_and_calls_are_charged_by_it(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    account = await plan_and_account(app, "cli")
    code, out, err = await ocs_cli(
        settings,
        tmp_path,
        "tariffs",
        "import-peer",
        "--plan",
        "cli",
        "--format",
        "magnusbilling",
        str(FILES["magnusbilling"]),
    )
    assert code == 0, err
    assert json.loads(out) == {
        "plan": "cli",
        "prefixes": 3,
        "zones": 3,
        "added": 3,
        "changed": 0,
        "removed": 0,
    }
    await wait_until_served(app, "cli", "351211234567", "Portugal")
    assert (await call(app, account, "351211234567", 2))["cost"] == "0.040000"


async def test_the_cli_refuses_a_bad_export_printing_every_problem(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    await plan_and_account(app, "cli")
    code, out, err = await ocs_cli(
        settings,
        tmp_path,
        "tariffs",
        "import-peer",
        "--plan",
        "cli",
        "--format",
        "a2billing",
        str(SAMPLES / "a2billing_bad.csv"),
    )
    assert (code, out) == (1, "")
    lines = err.strip().splitlines()
    lines = lines[next(n for n, line in enumerate(lines) if line.startswith("ocs: ")) :]
    assert lines[0] == "ocs: invalid_deck: A2Billing rate export rejected, nothing applied"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        f"line {n}" for n in (3, 4, 5, 6, 6, 7, 8, 9, 10, 10)
    ]
    assert lines[1] == "  line 3: rateinitial: not a decimal amount: 'abc'"
    assert await deck_rows(app, "cli") == []


async def test_the_cli_converts_an_export_to_an_ocs_deck_without_importing(
    settings: Settings, tmp_path: Path
) -> None:
    code, out, err = await ocs_cli(
        settings,
        tmp_path,
        "tariffs",
        "import-peer",
        "--format",
        "astpp",
        "--convert-only",
        str(FILES["astpp"]),
    )
    assert code == 0, err
    assert out == peer_deck_to_ocs("astpp", FILES["astpp"].read_bytes())
    assert "49,Germany,0,0.02,0,1,10:0.012:1:0\n" in out
    code, out, err = await ocs_cli(
        settings, tmp_path, "tariffs", "import-peer", "--format", "astpp", str(FILES["astpp"])
    )
    assert code == 2 and "--plan" in err
