"""Invoice rounding: each line rounded once to its currency's ISO 4217 minor unit.

ocs keeps money in integer micro-units (``ocs.money``). An invoice shows
amounts in the currency's minor unit (JPY 0 decimals, EUR 2, BHD 3), taken
from ISO 4217's own table as the ``iso4217`` package ships it (looked up by
``ocs.minor_units``, below the catalog, which refuses a plan currency without one;
its names are re-exported here for billing's callers). The one rule
(decision 0019): an invoice line is rounded **once**, half away from zero;
totals are sums of rounded lines. Integer arithmetic only.
"""

from ocs.minor_units import CurrencyError as CurrencyError
from ocs.minor_units import minor_unit_exponent as minor_unit_exponent
from ocs.money import MICRO

# 10**e for every exponent a micro-unit can hold (0..6), as plain ints.
_TEN_TO: tuple[int, ...] = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)


def round_half_away(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to an integer, exact halves away from zero.

    ``7/2 -> 4``, ``-7/2 -> -4``, ``5/3 -> 2``. Integers only, so no float ever
    touches money. ``denominator`` must be positive.
    """
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    quotient, remainder = divmod(abs(numerator), denominator)
    # Compare 2r with d instead of r with d/2: exact for odd denominators too.
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


def minor_unit_micro(code: str) -> int:
    """Micro-units in one minor unit of ``code``: JPY 1_000_000, EUR 10_000, BHD 1_000."""
    return MICRO // _TEN_TO[minor_unit_exponent(code)]


def round_line(amount_micro: int, currency: str) -> int:
    """Micro-units rounded once to the currency's minor unit, half away from zero.

    EUR: 1.2345 -> 1.23, 1.235 -> 1.24, -1.235 -> -1.24; JPY: 10.5 -> 11;
    BHD: 1.2345 -> 1.235. The result is still micro-units (``1_240_000``).
    """
    step = minor_unit_micro(currency)
    return round_half_away(amount_micro, step) * step


def format_amount(amount_micro: int, currency: str) -> str:
    """A rounded amount in the currency's minor unit: ``"1.24"``, ``"11"``, ``"1.235"``.

    Formatting never rounds: an amount that is not a whole number of minor
    units raises ValueError, because it was not put through ``round_line``
    (a total made of unrounded lines would show here).
    """
    exponent = minor_unit_exponent(currency)
    step = minor_unit_micro(currency)
    if amount_micro % step:
        raise ValueError(
            f"{amount_micro} micro-units is not a whole number of {currency} minor units;"
            " round it with round_line first"
        )
    sign = "-" if amount_micro < 0 else ""
    whole, fraction = divmod(abs(amount_micro), MICRO)
    if exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction // step:0{exponent}d}"
