"""The compiled deck parse's shortcuts give what the plain ways give.

``intern_strings`` (slots holding all a lookup compares, strings hashed and compared a
word at a time) and ``intern_keys`` (prefix keys, only repeated ones hashed)
against a dict; ``good_rows`` handing back a view of the scan's rows when the
good lines are its first ones; and whole decks on those paths against the
row-by-row reference.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocs.decks.rate_deck import parse_deck, parse_deck_rows
from ocs.decks.scan import LINE_OK, LINE_SLOW, good_rows, intern_keys, intern_strings
from tests.deck_helpers import outcome

HEADER = "prefix,zone,price_per_minute,connect_fee,first_block,increment"


def reference_ids(strings: list[object]) -> tuple[list[int], list[int]]:
    ids: dict[object, int] = {}
    first: list[int] = []
    out = []
    for r, s in enumerate(strings):
        if s not in ids:
            ids[s] = len(ids)
            first.append(r)
        out.append(ids[s])
    return out, first


def packed(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    buf = np.frombuffer(b"".join(texts) + b"\0", np.uint8)[:-1]
    length = np.array([len(t) for t in texts], np.int64)
    at = np.zeros(len(texts), np.int64)
    np.cumsum(length[:-1], out=at[1:])
    return buf, at, length


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([b"", b"UK", b"Germany Mobile A", b"Germany Mobile B", b"x" * 17]),
            st.integers(0, 50),  # a key
        ),
        max_size=60,
    )
)
def test_intern_agrees_with_a_dict(items: list[object]) -> None:
    texts = [b"k" if isinstance(i, int) else i for i in items]
    keys = np.array([i if isinstance(i, int) else -1 for i in items], np.int64)
    buf, at, length = packed(texts)  # type: ignore[arg-type]
    ids, first = intern_strings(buf, at, length, keys)
    want = reference_ids([("key", i) if isinstance(i, int) else i for i in items])
    assert (ids.tolist(), first.tolist()) == want


def test_intern_grows_past_its_first_table() -> None:
    texts = [f"zone {i % 3000}".encode() for i in range(9000)]
    buf, at, length = packed(texts)
    ids, first = intern_strings(buf, at, length, np.full(len(texts), -1, np.int64))
    assert (ids.tolist(), first.tolist()) == reference_ids(texts)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**62), max_size=80), st.randoms(use_true_random=False))
def test_intern_keys_agrees_with_a_dict(distinct: list[int], rnd) -> None:  # type: ignore[no-untyped-def]
    keys = [rnd.choice(distinct) if distinct and rnd.random() < 0.3 else k for k in distinct]
    array = np.array(keys, np.int64)
    ids, first = intern_keys(array, np.sort(array))
    assert (ids.tolist(), first.tolist()) == reference_ids(keys)  # type: ignore[arg-type]


def test_intern_keys_of_many_repeats() -> None:
    keys = np.random.default_rng(7).integers(0, 5000, 100_000)
    ids, first = intern_keys(keys, np.sort(keys))
    assert (ids.tolist(), first.tolist()) == reference_ids(keys.tolist())
    plain = intern_strings(
        np.zeros(0, np.uint8), np.zeros(len(keys), np.int64), np.zeros(len(keys), np.int64), keys
    )
    assert (ids.tolist(), first.tolist()) == (plain[0].tolist(), plain[1].tolist())


def scan_rows(outcomes: list[int]) -> np.ndarray:
    out = np.arange(len(outcomes) * 10, dtype=np.int64).reshape(len(outcomes), 10)
    out[:, 0] = outcomes
    return out


def test_good_rows_are_a_view_when_they_are_the_first_rows() -> None:
    data = np.zeros(4, np.uint8)
    out = scan_rows([LINE_OK, LINE_OK, LINE_OK, 1])
    good, rows, buf = good_rows(data, out, {})
    assert good.tolist() == [0, 1, 2]
    assert np.shares_memory(rows, out) and (rows == out[:3]).all()
    assert buf is data


def test_good_rows_are_a_copy_when_a_line_between_is_not_good() -> None:
    data = np.zeros(4, np.uint8)
    out = scan_rows([LINE_OK, 1, LINE_OK, LINE_SLOW])
    good, rows, _ = good_rows(data, out, {})
    assert good.tolist() == [0, 2]
    assert not np.shares_memory(rows, out) and (rows == out[[0, 2]]).all()


DECKS = [
    # every prefix once: no repeated key
    f"{HEADER}\n44,UK,0.01,0,60,60\n447,UK Mobile,0.06,0,30,6\n",
    # a line the reference reads, among the first rows (filled in in place)
    f'{HEADER}\n44,UK,0.01,0,60,60\n49,"Ger""many",.012,0,1,1\n33,FR,1,0,1,1\n',
    # a blank line between: the good rows are a copy
    f"{HEADER}\n44,UK,0.01,0,60,60\n\n33,FR,1,0,1,1\n",
    # prefixes longer than a key, and a repeat of one
    f"{HEADER}\n{'4' * 20},X,1,0,1,1\n{'4' * 19},X,1,0,1,1\n{'4' * 20},X,1,0,1,1\n",
    # a repeated short prefix: a duplicate
    f"{HEADER}\n44,UK,0.01,0,60,60\n33,FR,1,0,1,1\n44,UK,0.01,0,60,60\n",
    # each prefix once per direction
    f"{HEADER},direction\n44,UK,1,0,1,1,outbound\n44,UK,2,0,1,1,inbound\n"
    "33,FR,1,0,1,1,inbound\n33,FR,1,0,1,1,\n",
    f"{HEADER},direction\n44,UK,1,0,1,1,outbound\n44,FR,2,0,1,1,inbound\n",
    # zones whose names differ past their first word, or only in length
    f"{HEADER}\n1,Germany Mobile A,1,0,1,1\n2,Germany Mobile B,1,0,1,1\n"
    "3,Germany Mobile A,2,0,1,1\n4,Germany Mobile,1,0,1,1\n5,Germany Mobile AB,1,0,1,1\n",
]


@pytest.mark.parametrize("text", DECKS)
def test_decks_on_each_path_read_as_the_reference_reads_them(text: str) -> None:
    assert outcome(parse_deck, text) == outcome(parse_deck_rows, text)


def test_a_deck_of_many_zones_and_prefixes_reads_as_the_reference() -> None:
    rng = np.random.default_rng(11)
    lines = [HEADER]
    for n, prefix in enumerate(rng.choice(10**9, 5000, replace=False).tolist()):
        zone = n % 1500
        lines.append(f"{prefix},Zone {zone} {'x' * (zone % 23)},{zone % 7}.5,0,60,{1 + zone % 5}")
    text = "\n".join(lines) + "\n"
    assert outcome(parse_deck, text) == outcome(parse_deck_rows, text)
    repeated = text + "\n".join(lines[1:50]) + "\n"
    assert outcome(parse_deck, repeated) == outcome(parse_deck_rows, repeated)
