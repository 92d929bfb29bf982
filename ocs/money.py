"""Exact money: integer micro-units (1e-6 of the currency) and their decimal strings.

Every amount in ocs is an ``int`` of micro-units. This module is the only
place that turns user-facing decimal strings into micro-units and back, so no
float ever touches money.
"""

import re

MICRO = 1_000_000
MICRO_DIGITS = 6

# Redis Lua numbers are IEEE doubles: integers are exact up to 2**53. Keeping every
# stored amount well below that keeps the scripts' arithmetic exact.
MAX_AMOUNT = 10**15  # one thousand million currency units

# ASCII digits only (``\d`` would take any script's), and nothing after the last digit:
# ``$`` would let a final newline through.
_DECIMAL_RE = re.compile(r"([+-]?)(?:(\d+)(?:\.(\d*))?|\.(\d+))\Z", re.ASCII)
# More integer digits than MAX_AMOUNT has, once leading zeros are gone: too large.
_MAX_WHOLE_DIGITS = len(str(MAX_AMOUNT // MICRO))


class MoneyError(ValueError):
    """A decimal string that is not a valid amount; the message says why."""


def parse_amount(text: object, *, allow_negative: bool = False) -> int:
    """Parse a decimal string such as ``"0.198"`` into micro-units.

    Integers are accepted too (as whole currency units). Floats are refused:
    a float has already lost the exact value the caller meant.
    """
    if isinstance(text, (bool, float)):
        raise MoneyError('must be a decimal string such as "1.50", not a float')
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        raise MoneyError('must be a decimal string such as "1.50"')
    stripped = text.strip()
    match = _DECIMAL_RE.match(stripped)
    if match is None:
        raise MoneyError(f"not a decimal amount: {text[:40]!r}")
    sign, whole, fraction, bare_fraction = match.groups()
    # Exact digit by digit: no decimal context rounds what the caller wrote.
    whole = (whole or "").lstrip("0")
    fraction = (fraction if fraction is not None else bare_fraction or "").rstrip("0")
    if len(fraction) > MICRO_DIGITS:
        raise MoneyError(f"more than {MICRO_DIGITS} decimal places: {text[:40]!r}")
    if len(whole) > _MAX_WHOLE_DIGITS:
        raise MoneyError(f"too large: {text[:40]!r}")
    result = int(whole or "0") * MICRO + int(fraction.ljust(MICRO_DIGITS, "0"))
    if sign == "-":
        result = -result
    if result < 0 and not allow_negative:
        raise MoneyError(f"must not be negative: {text[:40]!r}")
    if abs(result) > MAX_AMOUNT:
        raise MoneyError(f"too large: {text[:40]!r}")
    return result


def format_amount(micro: int) -> str:
    """Format micro-units as a decimal string with six places: ``198000 -> "0.198000"``."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), MICRO)
    return f"{sign}{whole}.{frac:06d}"
