"""Problems of a CSV file of prefixes (a rate deck, a cost deck, a code list), and their error.

Every problem of every bad line is reported, each naming its line number and
column, so an operator can fix a file in one pass: the first ``MAX_REPORTED`` in
the file are listed and the rest counted (``DeckError.more``). A CSV line the csv
module cannot read and a line that is not UTF-8 are problems of that line like
any other, worded here (``csv_problem``, ``decode_utf8``).
"""

from __future__ import annotations

import csv
import re

from ocs.errors import OcsError, Reason

MAX_REPORTED = 100  # problems listed at once; the rest are counted


class DeckError(OcsError):
    """A deck (or another CSV file of prefixes: ``what``) with bad rows.

    ``problems`` lists (line, message), in line order, every problem of each line
    up to MAX_REPORTED in all; ``more`` counts the problems found past those. A
    message about one column starts with its name and a colon (``problem_column``).
    """

    def __init__(
        self,
        problems: list[tuple[int, str]],
        *,
        more: int = 0,
        what: str = "rate deck",
        field: str = "deck",
    ) -> None:
        self.problems = problems
        self.more = more
        self.what = what
        shown = "; ".join(f"line {line}: {message}" for line, message in problems)
        if more:
            shown += f"; and {more} more problem{'s' if more > 1 else ''}"
            shown += f" (only the first {len(problems)} are listed)"
        super().__init__(
            Reason.INVALID_DECK, f"{what} rejected, nothing applied: {shown}", field=field
        )

    def to_json(self) -> dict[str, object]:
        """The error body, with every problem's line, column and message."""
        body = super().to_json()
        error = body["error"]
        assert isinstance(error, dict)
        error["problems"] = [
            {"line": line, "column": problem_column(message), "message": message}
            for line, message in self.problems
        ]
        error["more_problems"] = self.more
        return body


_COLUMN_NAME = re.compile(r"[a-z_]+")


def problem_column(message: str) -> str | None:
    """The column a problem's message is about (the word before its first colon), or
    None for a problem of the whole line (a field count, a byte that is not UTF-8)."""
    name, colon, _ = message.partition(":")
    return name if colon and _COLUMN_NAME.fullmatch(name) else None


class LineProblems(ValueError):
    """Every problem of one line, each its own message (str(): all of them)."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def line_messages(exc: ValueError) -> list[str]:
    """The messages of a line's ValueError: each of a ``LineProblems``, else its text."""
    return exc.messages if isinstance(exc, LineProblems) else [str(exc)]


class Problems:
    """Problems found so far: the first ``most`` (MAX_REPORTED) by line, kept, and a
    count of the rest. Problems of one line keep the order they were added in."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.cut = 0  # problems found that are not among the first ``most``
        # Read once here, so that every part of one parse lists the same number.
        self.most = MAX_REPORTED

    def add(self, line: int, message: str) -> None:
        """Note a problem of ``line``."""
        self.found.append((line, message))
        if len(self.found) >= 4 * self.most:
            self._trim()

    def skip(self, count: int) -> None:
        """Count problems known to lie past ``most`` others, without their words."""
        self.cut += count

    def _trim(self) -> None:
        self.found.sort(key=lambda problem: problem[0])  # stable: a line's order stays
        self.cut += max(0, len(self.found) - self.most)
        del self.found[self.most :]

    def error(self, what: str = "rate deck", field: str = "deck") -> DeckError:
        """The DeckError listing the first problems and counting the rest."""
        self._trim()
        return DeckError(self.found, more=self.cut, what=what, field=field)


def csv_problem(exc: csv.Error) -> str:
    """A csv module error in words an operator can act on."""
    text = str(exc)
    if text.startswith("new-line character seen in unquoted field"):
        return (
            "a carriage return (CR) inside an unquoted field: quote the field,"
            " or save the file with one kind of line end"
        )
    if text.startswith("field larger than field limit"):
        return f"a field longer than {csv.field_size_limit()} characters (a quote left open?)"
    return f"cannot read this CSV line: {text}"


def field_count(ncols: int, found: int) -> str:
    """The problem of a line with ``found`` fields where the header has ``ncols``."""
    return f"expected {ncols} fields, found {found}"


def decode_utf8(
    data: bytes, what: str = "rate deck", field: str = "deck", first_line: int = 1
) -> str:
    """``data`` as text; DeckError naming each line that is not UTF-8 (``first_line``:
    the number of the first line in ``data``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    problems = Problems()
    for line, raw in enumerate(data.split(b"\n"), first_line):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add(
                line,
                f"not UTF-8 text: byte {exc.start + 1} of the line is 0x{raw[exc.start]:02X};"
                " save the file as UTF-8",
            )
    raise problems.error(what, field)
