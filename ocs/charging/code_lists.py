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
ocs.charging.catalog_store writes them), and every ``ocs serve`` process
rebuilds its lists beside the serving snapshot (ocs.charging.catalog).
"""

from __future__ import annotations

import csv
import io

import asyncpg
import numpy as np

from ocs.charging.deck import DeckError
from ocs.charging.matcher import PrefixIndex
from ocs.charging.prefixes import PrefixTable

STANDARD = ""  # the list id of the standard table; any other is a plan's id
MAX_NAME_CHARS = 120
MAX_PREFIX_DIGITS = 32
MAX_REPORTED = 20  # problems reported at once, as for decks


class CodeListError(DeckError):
    """A code list with bad rows; ``problems`` lists (line, message)."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        super().__init__(problems, what="code list", field="codes")


def parse_code_list(text: str | bytes) -> list[tuple[str, str]]:
    """(prefix, name) of every row, in prefix order; CodeListError naming each bad line.

    Lists have thousands to a few hundred thousand rows, read here by the csv
    module with a check per row: 1.3-1.5 s for 200,000 rows on the dev machine.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodeListError([(1, f"not UTF-8 text (byte {exc.start})")]) from None
    rows = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header = [cell.strip().lower() for cell in next(rows, [])]
    missing = [c for c in ("prefix", "name") if c not in header]
    if missing:
        raise CodeListError([(1, f"header: no column {' or '.join(missing)}")])
    at_prefix, at_name = header.index("prefix"), header.index("name")
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    entries: list[tuple[str, str]] = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        problem = None
        prefix = row[at_prefix].strip().removeprefix("+") if at_prefix < len(row) else ""
        name = " ".join(row[at_name].split()) if at_name < len(row) else ""
        if not (prefix.isascii() and prefix.isdigit() and len(prefix) <= MAX_PREFIX_DIGITS):
            problem = f"prefix: expected 1 to {MAX_PREFIX_DIGITS} digits, got {prefix!r}"
        elif not name or len(name) > MAX_NAME_CHARS:
            problem = f"name: expected 1 to {MAX_NAME_CHARS} characters, got {len(name)}"
        elif prefix in first_line:
            problem = f"prefix: {prefix} already given at line {first_line[prefix]}"
        if problem is not None:
            problems.append((line, problem))
            if len(problems) == MAX_REPORTED:
                break
            continue
        first_line[prefix] = line
        entries.append((prefix, name))
    if problems:
        raise CodeListError(problems)
    if not entries:
        raise CodeListError([(2, "no rows: a list names at least one prefix")])
    entries.sort()
    return entries


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
