"""Area-code tables: which place a number calls ("United Kingdom - London"), by prefix.

The *standard* table names destinations for every plan. A plan's *custom code
list*, when it has one, replaces the standard table for that plan whole: a
number the custom list does not cover has no name, whatever the standard table
says. Names describe and never rate (a deck's zones do): they go into CDRs
(``cdrs.destination_name``) and into the IVR's "how long can I talk" answer.

A list is CSV with a header naming ``prefix`` and ``name`` (other columns are
ignored), one prefix of 1 to 32 digits (an optional '+') a row, each prefix
once. It is stored like a deck (migration 0014, decision 0009): one document
per list, ``prefix<TAB>name`` lines in prefix order, replaced whole in one
transaction that NOTIFYs ``codes:<plan>`` (``codes:`` for the standard table;
ocs.catalog.store writes them), and every ``ocs serve`` process
rebuilds its lists beside the serving snapshot (ocs.catalog.snapshot).
"""

from __future__ import annotations

import csv
import io

import asyncpg
import numpy as np

from ocs.decks.cells import control_character
from ocs.decks.problems import DeckError, Problems, csv_problem, decode_utf8
from ocs.numbers.matcher import MAX_PREFIX_DIGITS, PrefixIndex
from ocs.numbers.prefixes import PrefixTable

STANDARD = ""  # the list id of the standard table; any other is a plan's id
MAX_NAME_CHARS = 120


class CodeListError(DeckError):
    """A code list with bad rows; ``problems`` lists (line, message), ``more`` counts
    the problems past those."""

    def __init__(self, problems: list[tuple[int, str]], *, more: int = 0) -> None:
        super().__init__(problems, more=more, what="code list", field="codes")


def parse_code_list(text: str | bytes) -> list[tuple[str, str]]:
    """(prefix, name) of every row, in prefix order; CodeListError listing every problem
    of every bad line (the first ``MAX_REPORTED``, the rest counted).

    Lists have thousands to a few hundred thousand rows, read here by the csv
    module with a check per row: 1.3-1.5 s for 200,000 rows on the dev machine.
    """
    if isinstance(text, bytes):
        try:
            text = decode_utf8(text, "code list", "codes")
        except DeckError as exc:
            raise CodeListError(exc.problems, more=exc.more) from None
    rows = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    try:
        header = [cell.strip().lower() for cell in next(rows, [])]
    except csv.Error as exc:
        raise CodeListError([(1, csv_problem(exc))]) from None
    missing = [c for c in ("prefix", "name") if c not in header]
    if missing:
        raise CodeListError([(1, f"header: no column {' or '.join(missing)}")])
    at_prefix, at_name = header.index("prefix"), header.index("name")
    problems = Problems()
    first_line: dict[str, int] = {}
    entries: list[tuple[str, str]] = []
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # the reader goes on at the next line
            problems.add(rows.line_num, csv_problem(exc))
            continue
        line = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        found = _row_problems(row, at_prefix, at_name, first_line)
        if isinstance(found, list):
            for message in found:
                problems.add(line, message)
            continue
        first_line[found[0]] = line
        entries.append(found)
    if problems.found:
        error = problems.error()
        raise CodeListError(error.problems, more=error.more)
    if not entries:
        raise CodeListError([(2, "no rows: a list names at least one prefix")])
    entries.sort()
    return entries


def _row_problems(
    row: list[str], at_prefix: int, at_name: int, first_line: dict[str, int]
) -> tuple[str, str] | list[str]:
    """A row's (prefix, name), or every problem it has, prefix first."""
    problems = []
    prefix = row[at_prefix].strip().removeprefix("+") if at_prefix < len(row) else ""
    raw_name = row[at_name].strip() if at_name < len(row) else ""
    name = " ".join(raw_name.split())
    if not (prefix.isascii() and prefix.isdigit() and len(prefix) <= MAX_PREFIX_DIGITS):
        problems.append(f"prefix: expected 1 to {MAX_PREFIX_DIGITS} digits, got {prefix!r}")
    elif prefix in first_line:
        problems.append(f"prefix: {prefix} already given at line {first_line[prefix]}")
    if not name or len(name) > MAX_NAME_CHARS:
        problems.append(f"name: expected 1 to {MAX_NAME_CHARS} characters, got {len(name)}")
    elif (control := control_character(raw_name)) is not None:
        # Checked before split() turns a CR or a line feed into a space.
        problems.append(f"name: {control}")
    return problems or (prefix, name)


def code_list_lines(entries: list[tuple[str, str]]) -> bytes:
    """The stored document of parsed entries (names hold no tab or newline: split() ate them)."""
    return "".join(f"{prefix}\t{name}\n" for prefix, name in entries).encode()


def build_code_table(lines: bytes) -> PrefixTable[str]:
    """A list's table from its stored document. Runs in a worker thread."""
    prefixes: list[str] = []
    names: list[str] = []
    for line in lines.decode().splitlines():
        prefix, _, name = line.partition("\t")
        prefixes.append(prefix)
        names.append(name)
    distinct = list(dict.fromkeys(names))
    slot = {name: i for i, name in enumerate(distinct)}
    index = PrefixIndex.from_strings(prefixes, np.array([slot[n] for n in names], np.int64))
    return PrefixTable.from_index(index, distinct)


async def read_code_lists(conn: asyncpg.Connection) -> dict[str, bytes]:
    """Every stored list's document, by list id (STANDARD or a plan's id)."""
    rows = await conn.fetch("SELECT plan_id, lines FROM code_lists")
    return {r["plan_id"]: bytes(r["lines"]) for r in rows}
