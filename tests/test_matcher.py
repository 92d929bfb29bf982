"""The numba prefix matcher against a brute-force longest-prefix reference.

Every answer of ``PrefixTable`` (single lookups from the hot path, batches for
billing) must be the one a plain scan of all prefixes gives: the longest
prefix the number starts with. Hypothesis draws the awkward shapes: prefix
sets grown from shared stems, one-digit prefixes, prefixes longer than the 18
digits a key holds, numbers shorter than every prefix, an empty table.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ocs.catalog.snapshot import CatalogSnapshot, PlanTariffs, Tariff, build_deck
from ocs.errors import OcsError
from ocs.numbers import matcher
from ocs.numbers.matcher import (
    INVALID,
    LENGTH_BITS,
    NO_MATCH,
    PrefixIndex,
    encode_numbers,
)
from ocs.numbers.prefixes import PrefixTable, normalize_number
from ocs.rating.rates import Rate
from ocs.warm_up import warm_up

DIGITS = "0123456789"
digit_strings = st.text(alphabet=DIGITS, min_size=1, max_size=8)


def longest(prefixes: dict[str, int], number: str) -> tuple[str, int] | None:
    """The reference: scan every prefix."""
    hits = [p for p in prefixes if number.startswith(p)]
    if not hits:
        return None
    best = max(hits, key=len)
    return best, prefixes[best]


@st.composite
def prefix_sets(draw: st.DrawFn) -> dict[str, int]:
    """Prefixes grown from a few shared stems, some one digit, a few longer than 18."""
    stems = draw(st.lists(digit_strings, min_size=1, max_size=4))
    prefixes = set(draw(st.lists(st.sampled_from(DIGITS), max_size=3)))
    for stem in stems:
        for tail in draw(st.lists(st.text(alphabet=DIGITS, max_size=6), max_size=12)):
            prefixes.add(stem + tail)
    if draw(st.booleans()):
        stem = draw(st.sampled_from(stems))
        for length in draw(st.lists(st.integers(19, 32), max_size=3)):
            prefixes.add((stem + draw(st.text(alphabet=DIGITS, min_size=32, max_size=32)))[:length])
    return {p: i for i, p in enumerate(sorted(prefixes))}


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, int], list[str]]:
    prefixes = draw(prefix_sets())
    numbers = []
    for _ in range(draw(st.integers(1, 25))):
        if prefixes and draw(st.booleans()):
            base = draw(st.sampled_from(sorted(prefixes)))
            base = base[: draw(st.integers(1, len(base)))]  # sometimes shorter than the prefix
            number = base + draw(st.text(alphabet=DIGITS, max_size=14))
        else:
            number = draw(st.text(alphabet=DIGITS, min_size=1, max_size=32))
        numbers.append(number[:32])
    return prefixes, numbers


def table_of(prefixes: dict[str, int]) -> PrefixTable[int]:
    return PrefixTable(prefixes.items())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
@example(({}, ["1", "44"]))
@example(({"4": 0, "44": 1, "447": 2}, ["4", "44", "447", "4478", "448", "5"]))
@example(({"1" * 18: 0, "1" * 19: 1, "1" * 32: 2}, ["1" * 17, "1" * 18, "1" * 25, "1" * 32]))
@example(({"0": 0, "00": 1, "0000": 2}, ["0", "000", "00000", "1"]))
def test_single_and_batch_lookups_agree_with_brute_force(
    case: tuple[dict[str, int], list[str]],
) -> None:
    prefixes, numbers = case
    table = table_of(prefixes)
    assert len(table) == len(prefixes)
    expected = [longest(prefixes, n) for n in numbers]
    assert [table.match(n) for n in numbers] == expected
    slots, lengths = table.match_many(numbers)
    batch = [
        None if slot < 0 else (n[:length], table.values[slot])
        for n, slot, length in zip(numbers, slots.tolist(), lengths.tolist(), strict=True)
    ]
    assert batch == expected
    # With a '+', as switches send them, and as a numpy bytes array.
    plus = np.array(["+" + n for n in numbers], dtype="S")
    assert (table.match_many(plus)[0] == slots).all()
    if not any(len(p) > 18 for p in prefixes):
        codes = table.index.lookup_keys(encode_numbers(numbers))
        assert (codes == table.index.lookup_many(numbers)).all()


def test_an_empty_table_matches_nothing() -> None:
    table: PrefixTable[str] = PrefixTable()
    assert len(table) == 0
    assert table.match("447700900123") is None
    assert table.match("0") is None
    slots, lengths = table.match_many(["1", "+44", "9" * 32])
    assert slots.tolist() == [-1, -1, -1] and lengths.tolist() == [0, 0, 0]
    assert table.match_many([])[0].tolist() == []


def test_one_digit_prefixes_and_numbers_shorter_than_every_prefix() -> None:
    table = PrefixTable({"1": "nanp", "7": "russia", "4420": "london", "44207": "inner"})
    assert table.match("12125551234") == ("1", "nanp")
    assert table.match("7") == ("7", "russia")
    assert table.match("44") is None  # shorter than 4420: no prefix of it is in the table
    assert table.match("442") is None
    assert table.match("4420") == ("4420", "london")
    assert table.match("442071234567") == ("44207", "inner")
    assert table.match("442081234567") == ("4420", "london")
    assert table.match("2") is None


def test_non_digits_are_refused_with_a_clear_error() -> None:
    for bad in ("44 20", "44-20", "abc", "", "+", "++44", "4\u0664", "44\x00"):
        with pytest.raises(OcsError) as refused:
            normalize_number(bad, "destination")
        assert refused.value.field == "destination"
        assert "digits" in str(refused.value)
    with pytest.raises(OcsError, match="longer than 32 digits"):
        normalize_number("1" * 33)
    assert normalize_number(" +447700900123 ") == "447700900123"
    assert normalize_number("0044") == "0044"

    table = PrefixTable({"44": "uk"})
    with pytest.raises(ValueError, match="normalised number"):
        table.match("44a")
    with pytest.raises(ValueError, match="number 1"):
        table.match_many(["44", "4x4"])
    codes = table.index.lookup_many(
        np.array([b"44", b"+44", b"4 4", b"", b"+", b"++44", b"4" * 33, b"44\x0044", b"\xb44"])
    )
    assert codes[:2].tolist() == [(0 << LENGTH_BITS) | 2] * 2
    assert (codes[2:] == INVALID).all()
    with pytest.raises(ValueError, match="must be digits"):
        table.index.lookup_many(["4\u00e94"])


def test_a_prefix_given_twice_or_not_digits_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="4420: given twice"):
        PrefixIndex.from_strings(["44", "4420", "4420"], [0, 1, 2])
    with pytest.raises(ValueError, match="given twice"):
        PrefixIndex.from_strings(["1" * 20, "1" * 20], [0, 1])
    with pytest.raises(ValueError, match="'44a'"):
        PrefixIndex.from_strings(["44a"], [0])
    with pytest.raises(ValueError, match="1 to 32 digits"):
        PrefixIndex.from_strings(["1" * 33], [0])
    # The dict-like constructor keeps a repeated prefix's last value, as a dict does.
    assert PrefixTable([("44", "a"), ("44", "b")]).match("4420") == ("44", "b")


def test_equal_values_share_one_slot() -> None:
    uk = Tariff("UK", Rate(connect_fee=0, first_block=60, increment=60, price_per_minute=10_000))
    table = PrefixTable({f"44{i}": uk for i in range(100)} | {"33": uk})
    assert len(table) == 101 and list(table.values) == [uk]


def test_a_plan_deck_from_copy_text_keeps_only_prefixes_with_a_tariff() -> None:
    fixed = Tariff(
        "UK Fixed", Rate(connect_fee=0, first_block=60, increment=60, price_per_minute=1)
    )
    mobile = Tariff(
        "UK Mobile", Rate(connect_fee=1, first_block=30, increment=6, price_per_minute=2)
    )
    # Zone 12 has no tariff in the plan: its prefix 4477 is as if absent.
    deck = build_deck(b"44\t5\n447\t9\n4477\t12\n", PlanTariffs((5, 9), (fixed, mobile)))
    snapshot = CatalogSnapshot(plans={}, decks={"retail": deck})
    assert snapshot.tariff_for("retail", "447712345678") == ("447", mobile)
    assert snapshot.tariff_for("retail", "442071234567") == ("44", fixed)
    assert snapshot.tariff_for("retail", "33123") is None
    assert snapshot.tariff_for("other", "447712345678") is None
    assert len(deck) == 2


def test_batches_of_every_length_around_the_pipelines_edges_answer_as_single_lookups() -> None:
    # A batch lookup works LOOKAHEAD numbers apart in four stages, in rings of RING,
    # and parses CHUNK numbers at a time: lengths around those edges, invalid
    # numbers among valid ones, must each answer as the single lookup does.
    rng = np.random.default_rng(3)
    prefixes = sorted({str(p) for p in rng.integers(10**3, 10**7, 5_000)})
    index = PrefixTable({p: i for i, p in enumerate(prefixes)}).index
    edges = {matcher.LOOKAHEAD, 2 * matcher.LOOKAHEAD, 3 * matcher.LOOKAHEAD}
    edges |= {matcher.RING, 2 * matcher.RING, matcher.CHUNK, 2 * matcher.CHUNK}
    lengths = sorted({0, 1} | {e + d for e in edges for d in (-1, 0, 1)})
    pool = [
        prefixes[i] + "5" * int(rng.integers(0, 8)) for i in rng.integers(0, len(prefixes), 3_000)
    ]
    pool[::9] = ["44x"] * len(pool[::9])  # invalid: not digits
    pool[::13] = ["9" * 33] * len(pool[::13])  # invalid: too long
    for n in lengths:
        numbers = pool[:n]
        expected = [index.lookup(number) for number in numbers]
        assert index.lookup_many(numbers).tolist() == expected, n
        assert index.lookup_many(np.array(numbers, dtype="S")).tolist() == expected, n
        assert index.lookup_keys(encode_numbers(numbers)).tolist() == expected, n
    # A key no number has would read past the table: refused, not looked up.
    with pytest.raises(ValueError, match="out of range"):
        index.lookup_keys(np.array([5, 11**18], np.int64))


def test_a_large_table_matches_its_own_prefixes() -> None:
    rng = np.random.default_rng(7)
    prefixes = {str(p) for p in rng.integers(10**5, 10**9, 50_000)}
    prefixes |= {p[:4] for p in list(prefixes)[:500]}
    ordered = sorted(prefixes)
    slot_of = {p: i for i, p in enumerate(ordered)}
    table = PrefixTable(slot_of)
    numbers = [p + "123456" for p in ordered[::7]]
    slots, lengths = table.match_many(numbers)
    for number, slot, length in zip(numbers, slots.tolist(), lengths.tolist(), strict=True):
        # The reference, every prefix of the number probed, longest first.
        best = next(number[:n] for n in range(len(number), 0, -1) if number[:n] in slot_of)
        assert (number[:length], slot) == (best, slot_of[best])
        assert table.match(number) == (best, slot_of[best])


def test_warm_up_compiles_every_kernel_and_reports_its_time() -> None:
    took = warm_up()
    assert 0 <= took < 600
    assert PrefixIndex.from_strings(["9"], [0]).lookup("99") == (0 << LENGTH_BITS) | 1
    assert PrefixIndex.from_strings([], []).lookup("99") == NO_MATCH


WARM_UP_CHECK = """
import numba, numpy as np
from ocs.catalog import snapshot as catalog
from ocs.catalog import store as catalog_store
from ocs.decks import rate_deck as deck
from ocs.decks import scan
from ocs.decks.problems import DeckError
from ocs.numbers import matcher
from ocs.numbers import prefixes
from ocs.warm_up import warm_up

modules = (matcher, scan, catalog, catalog_store)
kernels = {
    f"{m.__name__}.{name}": obj
    for m in modules
    for name, obj in vars(m).items()
    if isinstance(obj, numba.core.registry.CPUDispatcher)
}
warm_up()
before = {name: len(k.signatures) for name, k in kernels.items()}

header = "prefix,zone,price_per_minute,connect_fee,first_block,increment\\n"
plain = deck.parse_deck(header + "".join(f"{4400 + i},Z{i % 3},0.01,0,60,60\\n" for i in range(50)))
quoted = deck.parse_deck(header + '44,"A ""B"" C",1,0,1,1\\n' + "9" * 25 + ",C,1,0,1,1\\n")
for parsed in (plain, quoted):
    index = matcher.PrefixIndex.from_buffer(
        parsed.buf, parsed.prefix_at, parsed.prefix_len, parsed.zone_of
    )
    table = prefixes.PrefixTable.from_index(index, parsed.zones)
    table.match("4401555"), table.match("9" * 30)
    table.match_many(["4401", "+4402"]), table.match_many(np.array([b"4401" * 8]))
    index.lookup_many(np.array(["4401"])), index.lookup_many(np.array([b"4401"], dtype="S48"))
    zone_of_row = np.arange(len(parsed), dtype=np.int64)
    ordered = catalog_store._prefix_order(parsed)
    catalog_store._difference(parsed, ordered, zone_of_row, b"")
    catalog_store._difference(
        parsed, ordered, zone_of_row, b"4400\\t1\\n" + b"9" * 25 + b"\\t2\\n"
    )
    catalog_store._deck_lines(parsed, ordered, zone_of_row)
plain_index = matcher.PrefixIndex.from_buffer(
    plain.buf, plain.prefix_at, plain.prefix_len, plain.zone_of
)
plain_index.lookup_keys(matcher.encode_numbers(["4401", "44"]))
catalog.build_deck(b"44\\t7\\n", catalog.PlanTariffs((7,), ("t",)))
try:
    deck.parse_deck(header + "44,A,1,0,1,1\\n44,A,2,0,1,1\\nx,A,1,0,1,1\\n")
except DeckError:
    pass
after = {name: len(k.signatures) for name, k in kernels.items()}
print({name: (before[name], after[name]) for name in kernels if after[name] != before[name]})
"""


def test_warm_up_leaves_nothing_to_compile_for_imports_reloads_and_lookups() -> None:
    # In a fresh process, so that kernels compiled by other tests do not hide a gap.
    result = subprocess.run(
        [sys.executable, "-c", WARM_UP_CHECK],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{}", "compiled after warm_up: " + result.stdout


def test_a_crowded_corner_of_a_table_is_searched_not_scanned() -> None:
    # 20,000 long prefixes under one 12-digit stem: all in one level-2 sub-bucket.
    stem = "447700900123"
    prefixes = {stem + f"{i:05d}": i for i in range(0, 100_000, 5)} | {stem: -1, "44": -2}
    table = table_of(prefixes)
    for number in (stem + "00000", stem + "00001", stem + "99995", stem + "5000", "4477", stem):
        assert table.match(number) == longest(prefixes, number), number
    numbers = [stem + f"{i:05d}9" for i in range(0, 100_000, 7)]
    slots, lengths = table.match_many(numbers)
    for number, slot, length in zip(numbers, slots.tolist(), lengths.tolist(), strict=True):
        best = next(number[:n] for n in range(len(number), 0, -1) if number[:n] in prefixes)
        assert (number[:length], table.values[slot]) == (best, prefixes[best])


def test_many_tables_answer_the_same_encoded_numbers_at_once() -> None:
    """Standard area codes, a plan's custom code list, a carrier's cost deck and access
    numbers are separate indexes; billing encodes a day's numbers once and asks each."""
    from ocs.numbers.matcher import LENGTH_BITS, NO_MATCH, PrefixIndex, encode_numbers

    tables = {
        "standard": {"44": 0, "4420": 1, "447": 2, "49": 3, "1": 4},
        "custom": {"44": 0, "447700": 1},
        "carrier": {"4": 0, "44": 1, "4477": 2, "491": 3},
        "access": {"448001234567": 0, "448009876543": 1},
    }
    numbers = [
        "442079460000",
        "447700900123",
        "4915112345678",
        "12125550100",
        "448001234567",
        "33123456789",
    ]
    keys = encode_numbers(numbers)
    for name, prefixes in tables.items():
        index = PrefixIndex.from_strings(list(prefixes), list(prefixes.values()))
        got = index.lookup_keys(keys).tolist()
        # A code is (slot << LENGTH_BITS) | length of the matched prefix.
        want = [
            (prefixes[match] << LENGTH_BITS) | len(match)
            if (match := longest_key(prefixes, n)) is not None
            else NO_MATCH
            for n in numbers
        ]
        assert got == want, name
        assert [index.lookup(n) for n in numbers] == want, name


def longest_key(prefixes: dict[str, int], number: str) -> str | None:
    found = [p for p in prefixes if number.startswith(p)]
    return max(found, key=len) if found else None
