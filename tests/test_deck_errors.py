"""A bad deck, cost deck or code list is refused with every problem of every bad line.

Field trials: a line with a bad prefix and a bad price named only the prefix, so
an operator fixed a deck one mistake per upload; a carriage return inside a
field escaped as the csv module's own error (a 500), and a NUL in a zone name
went on to PostgreSQL. Now every problem of each line is listed (line, column,
what is wrong), the first ``MAX_REPORTED`` in the file with a count of the rest,
and CR, NUL and bytes that are not UTF-8 are line errors like any other.
"""

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from ocs.catalog import routes_store
from ocs.config import Settings
from ocs.decks import cost_deck
from ocs.decks.code_lists import CodeListError, parse_code_list
from ocs.decks.problems import MAX_REPORTED, DeckError
from ocs.decks.rate_deck import parse_deck, parse_deck_rows
from ocs.services import Services
from tests.conftest import RunningApp
from tests.deck_helpers import (
    HEADER,
    assert_deck_a_still_serves,
    import_over_http,
    plan_with_deck_a,
)
from tests.helpers import ocs_cli

COST_HEADER = "prefix,connect_fee,first_block,increment,price_per_minute\n"
CODES_HEADER = "prefix,name\n"
BAD_PREFIX = "prefix: expected 1 to 32 digits, got '44A'"
BAD_PRICE = "price_per_minute: not a decimal amount: 'abc'"


def refusal(parse: Callable[[str | bytes], object], text: str | bytes) -> DeckError:
    """The DeckError ``parse`` raises for ``text`` (never a csv.Error or another one)."""
    try:
        parse(text)
    except DeckError as exc:
        return exc
    except csv.Error as exc:  # pragma: no cover - what the fix is about
        pytest.fail(f"csv.Error escaped: {exc}")
    pytest.fail("the text was accepted")


# Each kind of file: its parsers, and a text of it with `cell` in a textual column.
KINDS: dict[str, tuple[list[Callable[[str | bytes], object]], Callable[[str], str]]] = {
    "rate deck": (
        [parse_deck, parse_deck_rows],  # type: ignore[list-item]
        lambda cell: HEADER + "33,France,0.03,0,60,1\n" + f"44,{cell},0.01,0,60,60\n",
    ),
    "cost deck": (
        [cost_deck.parse_carrier_deck, cost_deck.parse_carrier_deck_rows],  # type: ignore[list-item]
        lambda cell: COST_HEADER + "33,0,60,1,0.03\n" + f"{cell},0,60,60,0.01\n",
    ),
    "code list": ([parse_code_list], lambda cell: CODES_HEADER + "33,France\n" + f"44,{cell}\n"),
}


# --- every problem of a line -----------------------------------------------------------


@pytest.mark.parametrize("parse", [parse_deck, parse_deck_rows])
def test_a_line_with_a_bad_prefix_and_a_bad_price_reports_both(
    parse: Callable[[str], object],
) -> None:
    text = HEADER + "33,France,0.03,0,60,1\n" + "44A,UK,abc,0,60,0\n"
    error = refusal(parse, text)  # type: ignore[arg-type]
    assert error.problems == [
        (3, BAD_PREFIX),
        (3, "increment: expected 1 to 86400 seconds"),
        (3, BAD_PRICE),
    ]
    assert error.more == 0
    body = error.to_json()["error"]
    assert body["problems"] == [  # type: ignore[index]
        {"line": 3, "column": "prefix", "message": BAD_PREFIX},
        {"line": 3, "column": "increment", "message": "increment: expected 1 to 86400 seconds"},
        {"line": 3, "column": "price_per_minute", "message": BAD_PRICE},
    ]
    assert body["more_problems"] == 0  # type: ignore[index]


def test_a_cost_deck_line_and_a_code_list_line_report_every_problem() -> None:
    cost = refusal(cost_deck.parse_carrier_deck, COST_HEADER + "44A,x,60,60,abc\n")
    assert cost.problems == [
        (2, BAD_PREFIX),
        (2, "connect_fee: not a decimal amount: 'x'"),
        (2, BAD_PRICE),
    ]
    codes = refusal(parse_code_list, CODES_HEADER + "44,UK\n44,\n")
    assert codes.problems == [
        (3, "prefix: 44 already given at line 2"),
        (3, "name: expected 1 to 120 characters, got 0"),
    ]


def test_a_duplicate_prefix_at_another_rate_reports_both_conflicts() -> None:
    text = HEADER + "44,UK,0.01,0,60,60\n" + "44,UK,0.02,0,60,60\n"
    for parse in (parse_deck, parse_deck_rows):
        assert refusal(parse, text).problems == [  # type: ignore[arg-type]
            (3, "prefix: 44 already given at line 2"),
            (3, "zone: 'UK' has a different rate at line 2 (price_per_minute differs)"),
        ]


# --- the cap -------------------------------------------------------------------------


def test_many_bad_lines_are_capped_with_a_count_of_the_rest() -> None:
    # 300 lines with two problems each: the first 100 problems are lines 2 to 51.
    text = HEADER + "".join(f"x{n},UK,abc,0,60,60\n" for n in range(300))
    for parse in (parse_deck, parse_deck_rows):
        error = refusal(parse, text)  # type: ignore[arg-type]
        assert len(error.problems) == MAX_REPORTED == 100
        assert error.problems[:2] == [
            (2, "prefix: expected 1 to 32 digits, got 'x0'"),
            (2, BAD_PRICE),
        ]
        assert error.problems[-1] == (51, BAD_PRICE)
        assert error.more == 500
        assert error.message.endswith("; and 500 more problems (only the first 100 are listed)")
        assert error.to_json()["error"]["more_problems"] == 500  # type: ignore[index]


def test_a_bad_cost_deck_and_a_bad_code_list_are_capped_too() -> None:
    cost = refusal(
        cost_deck.parse_carrier_deck,
        COST_HEADER + "".join(f"{n},0,60,60,x\n" for n in range(100, 350)),
    )
    assert [line for line, _ in cost.problems] == list(range(2, 102))
    assert cost.more == 150
    codes = refusal(parse_code_list, CODES_HEADER + "".join(f"x{n},\n" for n in range(100)))
    assert isinstance(codes, CodeListError)
    assert len(codes.problems) == 100 and codes.problems[-1][0] == 51
    assert codes.more == 100


# --- CR, NUL and bytes that are not UTF-8 ----------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    ("cell", "words"),
    [
        ('"UK\rMobile"', "U+000D"),  # inside quotes: a name cannot hold it
        ('"UK"\rMobile', "carriage return (CR) inside an unquoted field"),
        ("UK\rMobile", "carriage return (CR) inside an unquoted field"),
        ("UK\x00Mobile", "U+0000"),
    ],
)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_carriage_return_or_a_nul_in_a_field_is_a_line_error(
    kind: str, cell: str, words: str, as_bytes: bool
) -> None:
    parsers, text_with = KINDS[kind]
    text = text_with(cell)
    for parse in parsers[:1] if as_bytes else parsers:  # the references read text only
        error = refusal(parse, text.encode() if as_bytes else text)
        ((line, message),) = error.problems
        if kind == "cost deck" and words.startswith("U+"):  # the cell is the prefix there
            words = "prefix: expected 1 to 32 digits"
        assert line == 3 and words in message, (kind, parse, error.problems)
        assert error.to_json()["error"]["code"] == 400  # type: ignore[index]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bytes_that_are_not_utf8_are_refused_naming_each_line(kind: str) -> None:
    parsers, text_with = KINDS[kind]
    # Line 3 holds a Latin-1 "ô", line 4 a lone 0xFF.
    data = text_with("Cote").encode().replace(b"Cote", b"C\xf4te") + b"\xff\n"
    at = 2 if kind == "cost deck" else 5  # where the cell starts, 1-based, plus one
    error = refusal(parsers[0], data)
    assert error.problems == [
        (3, f"not UTF-8 text: byte {at} of the line is 0xF4; save the file as UTF-8"),
        (4, "not UTF-8 text: byte 1 of the line is 0xFF; save the file as UTF-8"),
    ]
    assert [p["column"] for p in error.to_json()["error"]["problems"]] == [None, None]  # type: ignore[index]


def test_a_tab_inside_a_zone_name_is_still_a_name() -> None:
    deck = parse_deck(HEADER + "44,UK\tMobile,0.01,0,60,60\n")
    assert deck.zones == ["UK\tMobile"]


async def test_a_bad_cost_deck_is_refused_by_the_import_function_and_nothing_is_stored(
    services: Services,
) -> None:
    async with services.pool.acquire() as conn:
        await conn.execute("TRUNCATE carriers, carrier_rates CASCADE")
    await routes_store.create_carrier(services.pool, "A", "Carrier A", "EUR")
    await routes_store.import_carrier_rates(services.pool, "A", COST_HEADER + "44,0,1,1,0.01\n")
    with pytest.raises(DeckError) as refused:
        await routes_store.import_carrier_rates(
            services.pool, "A", COST_HEADER + '45,0,1,1,"0.02"\r0.03\n4\x006,0,1,1,x\n'
        )
    assert [line for line, _ in refused.value.problems] == [2, 3, 3]
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT prefix, price_per_minute FROM carrier_rates")
    assert [(r["prefix"], r["price_per_minute"]) for r in rows] == [("44", 10_000)]


# --- over HTTP and the CLI -------------------------------------------------------------


async def test_a_bad_deck_over_http_lists_each_problem_with_its_column(app: RunningApp) -> None:
    await plan_with_deck_a(app)
    bad_lines = "".join(f"x{n},UK,abc,0,60,60\n" for n in range(60))
    deck = HEADER + '44A,"UK\rFixed",abc,0,60,60\n' + "45,UK\x00,0.01,0,60,60\n" + bad_lines
    status, body = await import_over_http(app, "retail", deck)
    assert status == 400, body
    error = body["error"]
    assert (error["reason"], error["field"]) == ("invalid_deck", "deck")
    assert [(p["line"], p["column"]) for p in error["problems"][:5]] == [
        (2, "prefix"),
        (2, "zone"),
        (2, "price_per_minute"),
        (3, "zone"),
        (4, "prefix"),
    ]
    assert "U+000D" in error["problems"][1]["message"]
    assert "U+0000" in error["problems"][3]["message"]
    assert len(error["problems"]) == 100
    assert error["more_problems"] == 4 + 120 - 100
    await assert_deck_a_still_serves(app)


async def test_a_code_list_with_a_carriage_return_over_http_is_a_400_naming_the_line(
    app: RunningApp,
) -> None:
    response = await app.client.put(
        "/v1/area-codes",
        data=(CODES_HEADER + "44,UK\n" + "33,France\rParis\n").encode(),
        headers={"Content-Type": "text/csv"},
    )
    body = await response.json()
    assert response.status == 400, body
    assert [(p["line"], p["column"]) for p in body["error"]["problems"]] == [(3, None)]
    assert "carriage return" in body["error"]["problems"][0]["message"]


async def test_the_cli_names_every_problem_of_a_bad_deck(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    await plan_with_deck_a(app)
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "44A,UK,abc,0,60,60\n" + "45,U\x00K,0.01,0,60,60\n")
    code, out, err = await ocs_cli(
        settings, tmp_path, "tariffs", "import", "--plan", "retail", str(path)
    )
    assert code == 1, (out, err)
    assert f"line 2: {BAD_PREFIX}" in err and f"line 2: {BAD_PRICE}" in err, err
    assert "line 3: zone: holds the control character U+0000" in err, err
    await assert_deck_a_still_serves(app)
