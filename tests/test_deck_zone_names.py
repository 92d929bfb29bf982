"""Zone names as a real numbering deck has them (issue 19): non-ASCII letters at their
edges, ':' and ',' inside; tens of thousands of them. The compiled scan reads them
itself, unless the edge is whitespace str.strip() removes (then the reference reads
the line), and the parse decodes all the names at once; both as the reference does."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocs.decks.rate_deck import _read_header, parse_deck, parse_deck_rows
from ocs.decks.scan import LINE_OK, LINE_SLOW, scan_deck, texts_at
from tests.deck_helpers import outcome

HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment"
# Every character beyond ASCII that str.strip() removes, and letters beside them in
# UTF-8's byte ranges (two, three and four bytes; U+0085 is also a C1 control).
SPACES = [chr(c) for c in range(0x80, 0x3001) if chr(c).isspace()]
LETTERS = ["é", "Ü", "ł", "ё", "ᚁ", "\u2010", "\u202e", "\u205e", "\u2060", "京", "\u3001", "😀"]


def test_the_spaces_are_those_str_strip_removes() -> None:
    assert [chr(c) for c in range(0x80, 0x110000) if chr(c).isspace()] == SPACES


@pytest.mark.parametrize("char", SPACES + LETTERS)
def test_a_name_with_a_character_at_an_edge_reads_as_the_reference(char: str) -> None:
    names = [f"{char}Zone", f"Zone{char}", f"{char}", f'"Zone, {char}"', f"{char}: x{char}"]
    text = f"{HEADER}\n" + "".join(f"{n + 1},{name},0.1,0,1,1\n" for n, name in enumerate(names))
    assert outcome(parse_deck, text) == outcome(parse_deck_rows, text)
    scanned = scan_deck(text.encode(), _read_header)
    assert scanned is not None
    # The scan leaves a line to the reference only for a space at an edge.
    want = LINE_SLOW if char in SPACES else LINE_OK
    assert scanned[1][:, 0].tolist() == [want] * len(names)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.text(
            st.sampled_from([*SPACES, *LETTERS, "a", " ", ":", ",", "\t"]), min_size=1, max_size=8
        ),
        min_size=1,
        max_size=12,
    )
)
def test_any_name_of_edge_characters_reads_as_the_reference(names: list[str]) -> None:
    lines = [HEADER]
    for n, name in enumerate(names):
        cell = f'"{name}"' if "," in name else name
        lines.append(f"{n + 1},{cell},0.{n % 10},0,1,1")
    text = "\n".join(lines) + "\n"
    assert outcome(parse_deck, text) == outcome(parse_deck_rows, text)


def test_texts_at_decodes_every_span() -> None:
    names = ["Germany: Köln", "", "Côte d'Ivoire: Abidjan, Plateau", "日本: 東京", "a\tb"]
    encoded = [n.encode() for n in names]
    buf = np.frombuffer(b"xx" + b"".join(encoded), np.uint8)
    length = np.array([len(e) for e in encoded], np.int64)
    at = 2 + np.concatenate(([0], np.cumsum(length)[:-1]))
    assert texts_at(buf, at, length) == names
    assert texts_at(buf, at[::-1].copy(), length[::-1].copy()) == names[::-1]
    assert texts_at(buf, at[:0], length[:0]) == []


def test_a_deck_of_many_named_zones_reads_as_the_reference() -> None:
    rng = np.random.default_rng(19)
    lines = [HEADER]
    for n, prefix in enumerate(rng.choice(10**9, 4000, replace=False).tolist()):
        zone = f"Land {n % 1200}: Stadt {LETTERS[n % len(LETTERS)]}"
        cell = f'"{zone}, Nord"' if n % 3 else zone
        lines.append(f"{prefix},{cell},0.{n % 1200:04d},0,60,60")
    text = "\n".join(lines) + "\n"
    deck = parse_deck(text)
    assert outcome(parse_deck, text) == outcome(parse_deck_rows, text)
    assert len(deck.zones) == len(set(deck.zones)) == 1200
