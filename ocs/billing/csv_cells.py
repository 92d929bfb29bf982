"""CSV for people: cells a spreadsheet would run as a formula are written as text.

A report or call list opened in a spreadsheet runs any cell that starts with
``=``, ``+``, ``-`` or ``@`` (and some with a tab or carriage return) as a
formula; a zone, rate type, customer or caller id that a customer or carrier can
choose could then fetch or leak data ("CSV injection"). Such a cell gets a
leading ``'``, which spreadsheets show as text. Numbers stay as they are, signed
amounts (``-1.500000``) and international numbers (``+442071234567``) included,
so the columns still add up.
"""

import re
from collections.abc import Iterable

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A plain number (an amount, a count, a phone number in E.164): never a formula.
_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def safe_cell(value: object) -> object:
    """``value`` as a spreadsheet should read it: text that would start a formula quoted."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_row(row: Iterable[object]) -> list[object]:
    """Every cell of a row through ``safe_cell``."""
    return [safe_cell(cell) for cell in row]
