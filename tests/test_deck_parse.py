"""The compiled deck parse reads every deck exactly as the row-by-row reference does.

``parse_deck`` (one numba pass over the bytes, the csv module only for rows it
cannot vouch for) must give the same rows, or refuse with the same problems
on the same lines, as ``parse_deck_rows`` reading the deck with the csv
module one row at a time. Hypothesis builds decks from the pieces real decks
and real mistakes are made of: quotes, commas in zone names, '+', spaces and
Unicode spaces, CRLF, blank lines, wrong field counts, bad amounts,
duplicates and zones with two rates.
"""

from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocs.decks import problems as deck_problems
from ocs.decks.cost_deck import CARRIER_COLUMNS, parse_carrier_deck, parse_carrier_deck_rows
from ocs.decks.problems import MAX_REPORTED, DeckError
from ocs.decks.rate_deck import Deck, parse_deck, parse_deck_rows
from tests.deck_helpers import BAD_DECKS, DECK_A, DECK_B, HEADER, outcome


def same_as_reference(text: str) -> None:
    assert outcome(parse_deck, text) == outcome(parse_deck_rows, text), repr(text)


PREFIXES = [
    "44",
    "+44",
    "447",
    " 4478 ",
    "4a",
    "",
    "+",
    "++4",
    "1" * 32,
    "1" * 33,
    '"44"',
    '"4""4"',
]
ZONES = ["UK", "UK Mobile", '"UK, Fixed"', " UK ", "\u00a0UK", "C\u00f4te d'Ivoire", '""']
ZONES += ["x" * 201, "\u00e9" * 200, '"A"B', 'A"B', "\x00", "\t7\t", "A\tB", '"U\rK"', "\x85"]
ZONES += ['"A"\rB', "U\rK", "A\x7fB"]
AMOUNTS = ["0.01", "0.0100000", "0.0100001", "-0.01", ".5", "5.", "1e3", "9999999999", "0", " 1 "]
AMOUNTS += ["999999999.999999", "0.150", '"0.06"', "abc"]
SECONDS = ["0", "00", "1", "60", " 6 ", "86400", "86401", "-1", "abc", "\u0661", ""]
SECONDS += ["\u00b2", "\u2460", "6\u00b9"]  # digits to str.isdigit, not to int


@st.composite
def decks(draw: st.DrawFn) -> str:
    header = HEADER.rstrip("\n")
    if draw(st.integers(0, 19)) == 0:
        header = draw(st.sampled_from([header + ",extra", "zone,prefix", header.upper(), ""]))
    lines = [header]
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append(draw(st.sampled_from(["", ",,,,,", "  ", "\u00a0,,,,,", '""'])))
            continue
        if kind <= 4:  # plausible rows: duplicates and zones at two rates happen
            fields = [
                "4" + str(draw(st.integers(0, 20))),
                draw(st.sampled_from(["A", "B", '"C, c"'])),
                draw(st.sampled_from(["0.01", "0.02"])),
                "0",
                "60",
                draw(st.sampled_from(["60", "6"])),
            ]
        else:
            fields = [
                draw(st.sampled_from(PREFIXES)),
                draw(st.sampled_from(ZONES)),
                draw(st.sampled_from(AMOUNTS)),
                draw(st.sampled_from(AMOUNTS)),
                draw(st.sampled_from(SECONDS)),
                draw(st.sampled_from(SECONDS)),
            ]
        count = draw(st.integers(0, 19))
        if count == 0:
            fields = fields[:5]
        elif count == 1:
            fields = [*fields, "x"]
        lines.append(",".join(fields))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    ending = newline if draw(st.booleans()) else ""
    bom = "\ufeff" if draw(st.integers(0, 9)) == 0 else ""
    return bom + newline.join(lines) + ending


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decks())
def test_the_compiled_parse_agrees_with_the_reference(text: str) -> None:
    same_as_reference(text)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decks())
def test_with_a_small_cap_both_parses_list_and_count_the_same_problems(text: str) -> None:
    # A cap of 3 puts the cut, and the count of the rest, inside Hypothesis's small decks.
    with mock.patch.object(deck_problems, "MAX_REPORTED", 3):
        same_as_reference(text)


@pytest.mark.parametrize("name", sorted(BAD_DECKS))
def test_bad_decks_are_refused_as_the_reference_refuses_them(name: str) -> None:
    same_as_reference(BAD_DECKS[name][0])


@pytest.mark.parametrize(
    "text",
    [
        DECK_A,
        DECK_B,
        "",
        "\n",
        HEADER,
        HEADER.rstrip("\n"),
        HEADER + "44,UK,0.01,0,60,60",  # no newline at the end
        HEADER + "44,UK,0.01,0,60,60\r",
        HEADER + "44,UK,0.01,0,60,60\r\r\n",  # a bare CR: the csv module's business
        HEADER + "44,UK\r,0.01,0,60,60\n",
        HEADER + '44,"UK\nFixed",0.01,0,60,60\n',  # a quoted zone over two lines
        HEADER + '44,"UK\r\nFixed",0.01,0,60,60\n',
        HEADER + '44,"UK,0.01,0,60,60\n',  # a quote never closed
        '"prefix",zone,price_per_minute,connect_fee,first_block,increment\n44,UK,1,0,1,1\n',
        "zone,increment,prefix,first_block,connect_fee,price_per_minute\nUK,6,44,30,0.1,0.5\n",
        HEADER + "\n".join(f"4{i},Z{i % 3},0.0{i % 3},0,60,60" for i in range(40)),
        HEADER + "\n".join(f"x{i},UK,0.01,0,60,60" for i in range(MAX_REPORTED + 10)),
    ],
)
def test_edge_cases_read_as_the_reference_reads_them(text: str) -> None:
    same_as_reference(text)


def refusal(parse: Callable[[Any], object], text: str | bytes) -> tuple[object, int]:
    """The problems a parse refuses ``text`` with, and the count of the rest."""
    with pytest.raises(DeckError) as refused:
        parse(text)
    return refused.value.problems, refused.value.more


@pytest.mark.parametrize("digit", ["\u00b2", "\u2460", "6\u00b9"])
def test_seconds_in_digits_int_cannot_read_are_refused_naming_the_column(digit: str) -> None:
    # "²".isdigit() holds, int("²") raises: the row is refused as any other text is.
    plan = HEADER + f"44,UK,0.1,0,{digit},60\n"
    expected = ([(2, f"first_block: expected whole seconds, got {digit!r}")], 0)
    for parse in (parse_deck_rows, parse_deck):
        assert refusal(parse, plan) == expected, parse
    assert refusal(parse_deck, plan.encode()) == expected
    carrier = ",".join(CARRIER_COLUMNS) + f"\n44,0,60,{digit},0.1\n"
    expected = ([(2, f"increment: expected whole seconds, got {digit!r}")], 0)
    for parse in (parse_carrier_deck_rows, parse_carrier_deck):
        assert refusal(parse, carrier) == expected, parse
    assert refusal(parse_carrier_deck, carrier.encode()) == expected


def test_a_large_deck_with_every_plain_form_reads_as_the_reference() -> None:
    rng = np.random.default_rng(11)
    zones = ['"Korea, Republic of"', "UK Mobile", " Germany ", "C\u00f4te d'Ivoire", '"France"']
    lines = [HEADER.rstrip("\n")]
    for i, prefix in enumerate(np.unique(rng.integers(10**6, 10**9, 20_000)).tolist()):
        z = i % len(zones)
        plus = "+" if i % 7 == 0 else ""
        lines.append(f"{plus}{prefix},{zones[z]},0.0{z}0, 0.001 ,{z * 6},{z + 1}")
    text = "\r\n".join(lines) + "\r\n"
    deck = parse_deck(text)
    assert list(deck) == parse_deck_rows(text)
    assert deck.zones == [
        "Korea, Republic of",
        "UK Mobile",
        "Germany",
        "C\u00f4te d'Ivoire",
        "France",
    ]


def test_a_parsed_deck_is_a_sequence_of_rows() -> None:
    deck = parse_deck(DECK_A)
    rows = parse_deck_rows(DECK_A)
    assert isinstance(deck, Deck)
    assert len(deck) == 3
    assert deck[0] == rows[0] and deck[-1] == rows[-1] and deck[1:] == rows[1:]
    assert [row.prefix for row in deck] == ["44", "447", "49"]
    with pytest.raises(IndexError):
        deck[3]
    again = Deck.from_rows(rows)
    assert list(again) == rows and again.zones == deck.zones and again.rates == deck.rates


def test_only_the_first_problems_are_reported_in_line_order() -> None:
    lines = [f"4{i},UK,0.01,0,60,60" for i in range(5)]
    lines += ["41,UK,0.01,0,60,60"]  # a duplicate found by the cross-row pass
    # Bad rows found by the scan, past the cap.
    lines += [f"x{i},UK,0.01,0,60,60" for i in range(MAX_REPORTED + 40)]
    text = HEADER + "\n".join(lines) + "\n"
    with pytest.raises(DeckError) as refused:
        parse_deck(text)
    problems = refused.value.problems
    assert len(problems) == MAX_REPORTED
    assert problems[0] == (7, "prefix: 41 already given at line 3")
    assert [line for line, _ in problems] == list(range(7, 7 + MAX_REPORTED))
    assert refused.value.more == 41  # 1 + 140 problems in all, 100 listed
    same_as_reference(text)
