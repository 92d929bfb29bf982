"""Invoice rounding: ISO 4217 minor units, half away from zero, once per line (decision 0019)."""

from decimal import ROUND_HALF_UP, Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.billing.currency import (
    CurrencyError,
    format_amount,
    minor_unit_exponent,
    minor_unit_micro,
    round_half_away,
    round_line,
)

MICRO_AMOUNTS = st.integers(min_value=-(10**15), max_value=10**15)


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("JPY", 0),
        ("ISK", 0),
        ("CLP", 0),
        ("EUR", 2),
        ("USD", 2),
        ("BHD", 3),
        ("KWD", 3),
        # ISO says 3; CLDR (and so babel) says 0: the table is ISO's own.
        ("IQD", 3),
        ("CLF", 4),
    ],
)
def test_exponents_come_from_iso_4217(code: str, exponent: int) -> None:
    """The minor-unit exponent is ISO 4217's, and the micro-units in one minor unit follow."""
    assert minor_unit_exponent(code) == exponent
    assert minor_unit_micro(code) == 1_000_000 // 10**exponent


@pytest.mark.parametrize("code", ["ZZZ", "eur", "EURO", "", "XYZ"])
def test_an_unknown_code_is_refused_by_name(code: str) -> None:
    """A code ISO 4217 does not list is a ValueError naming the code."""
    with pytest.raises(ValueError, match=f"unknown currency code {code!r}"):
        minor_unit_exponent(code)
    with pytest.raises(CurrencyError):
        round_line(1_000_000, code)


@pytest.mark.parametrize("code", ["XAU", "XAG", "XDR", "XTS", "XXX"])
def test_a_code_without_minor_unit_is_refused(code: str) -> None:
    """Gold, the SDR and test codes have minor unit "N.A." in ISO: ocs does not invoice in them."""
    with pytest.raises(CurrencyError, match=f"{code!r} has no minor unit"):
        minor_unit_exponent(code)


@pytest.mark.parametrize(
    ("amount", "currency", "rounded", "shown"),
    [
        # EUR, 2 decimals: one cent = 10_000 micro.
        (1_234_500, "EUR", 1_230_000, "1.23"),  # 1.2345: 0.45 cent is under half
        (1_235_000, "EUR", 1_240_000, "1.24"),  # 1.235: exact half, away from zero
        (-1_235_000, "EUR", -1_240_000, "-1.24"),  # negative half: away from zero too
        (-1_234_999, "EUR", -1_230_000, "-1.23"),
        (1_234_999, "EUR", 1_230_000, "1.23"),
        (5_000, "EUR", 10_000, "0.01"),  # half a cent
        (-5_000, "EUR", -10_000, "-0.01"),
        (4_999, "EUR", 0, "0.00"),
        (-4_999, "EUR", 0, "0.00"),  # no "-0.00"
        (0, "EUR", 0, "0.00"),
        (1_240_000, "EUR", 1_240_000, "1.24"),  # already whole cents: unchanged
        # JPY, 0 decimals: one yen = 1_000_000 micro.
        (10_500_000, "JPY", 11_000_000, "11"),  # 10.5 -> 11
        (-10_500_000, "JPY", -11_000_000, "-11"),
        (10_499_999, "JPY", 10_000_000, "10"),
        (11_500_000, "JPY", 12_000_000, "12"),  # 11.5 -> 12 (banker's rounding agrees here)
        (12_500_000, "JPY", 13_000_000, "13"),  # 12.5 -> 13, where banker's rounding gives 12
        # BHD, 3 decimals: one fils = 1_000 micro.
        (1_234_500, "BHD", 1_235_000, "1.235"),  # 1.2345: half a fils rounds away
        (-1_234_500, "BHD", -1_235_000, "-1.235"),
        (1_234_499, "BHD", 1_234_000, "1.234"),
        (2_000_000, "BHD", 2_000_000, "2.000"),
        # CLF, 4 decimals: 100 micro.
        (1_234_550, "CLF", 1_234_600, "1.2346"),
    ],
)
def test_round_line_and_format(amount: int, currency: str, rounded: int, shown: str) -> None:
    """One rule for every line: half away from zero at the currency's minor unit."""
    assert round_line(amount, currency) == rounded
    assert format_amount(rounded, currency) == shown


def test_totals_are_sums_of_rounded_lines() -> None:
    """Three lines of 0.335 EUR show 0.34 each; the total is 1.02, not round(1.005) = 1.01."""
    lines = [round_line(335_000, "EUR") for _ in range(3)]
    assert lines == [340_000, 340_000, 340_000]
    assert format_amount(sum(lines), "EUR") == "1.02"


def test_format_refuses_an_unrounded_amount() -> None:
    """Formatting never rounds silently: 1.2345 EUR was not put through round_line."""
    with pytest.raises(ValueError, match="round it with round_line first"):
        format_amount(1_234_500, "EUR")
    with pytest.raises(ValueError):
        format_amount(10_500_000, "JPY")
    assert format_amount(1_234_500, "CLF") == "1.2345"


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(7, 2, 4), (-7, 2, -4), (5, 3, 2), (-5, 3, -2), (4, 3, 1), (-4, 3, -1), (0, 7, 0), (6, 3, 2)],
)
def test_round_half_away(numerator: int, denominator: int, expected: int) -> None:
    """Integer division rounding halves away from zero, exactly."""
    assert round_half_away(numerator, denominator) == expected


def test_round_half_away_needs_a_positive_denominator() -> None:
    """Dividing by zero or a negative is a caller's mistake, not a rounding case."""
    with pytest.raises(ValueError):
        round_half_away(1, 0)
    with pytest.raises(ValueError):
        round_half_away(1, -2)


@given(st.integers(min_value=-(10**20), max_value=10**20), st.integers(1, 10**9))
def test_round_half_away_matches_decimal_half_up(numerator: int, denominator: int) -> None:
    """The integer rule equals Decimal's ROUND_HALF_UP (half away from zero) on exact quotients."""
    with localcontext() as ctx:
        ctx.prec = 60  # exact for these sizes: no rounding before the quantize
        oracle = (Decimal(numerator) / Decimal(denominator)).quantize(
            Decimal(1), rounding=ROUND_HALF_UP
        )
    assert round_half_away(numerator, denominator) == int(oracle)


@given(MICRO_AMOUNTS, st.sampled_from(["JPY", "EUR", "BHD", "CLF"]))
def test_round_line_properties(amount: int, currency: str) -> None:
    """Rounded once: idempotent, symmetric in sign, never more than half a minor unit off."""
    step = minor_unit_micro(currency)
    rounded = round_line(amount, currency)
    assert rounded % step == 0
    assert round_line(rounded, currency) == rounded
    assert round_line(-amount, currency) == -rounded
    assert 2 * abs(rounded - amount) <= step
    # A formatted amount reads back as the same micro-units.
    text = format_amount(rounded, currency)
    assert int(Decimal(text) * 1_000_000) == rounded
