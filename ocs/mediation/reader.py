"""Reading a usage file into rows per its template's format: CSV or fixed-width.

``open_rows`` reads what comes before the data (the ``skip_lines`` lines, kept
verbatim, and a CSV file's header row) at once, then iterates the data rows as
``(line, values, cells)``: ``line`` is the 1-based physical line the row starts on,
``values`` the row's fields (a list the caller may extend), ``cells`` what is kept
of the row to write it back (a CSV row's cells; a fixed-width row's line itself).
Blank lines are skipped. A file that stops being CSV (a cell over the csv module's
size limit) or text in its encoding raises OcsError (invalid_field, field ``file``)
naming the line after which it did. ``write_row`` and ``write_header`` write rows back in the
file's own format, so that a file of rejected rows imports with the same template.

A file is opened with ``open_file``: the template's encoding, and ``newline=""``
as the csv module needs (a quoted cell may hold a line break).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ocs.errors import OcsError, invalid
from ocs.mediation.template import CsvFormat, FixedFormat, Format

Row = tuple[int, list[str], tuple[str, ...]]


def open_file(path: str | Path, fmt: Format) -> TextIO:
    """A usage file opened for ``open_rows``: its template's encoding, newlines kept."""
    return open(path, encoding=fmt.encoding, newline="")  # the caller closes it


def csv_dialect(fmt: CsvFormat) -> dict[str, Any]:
    """The csv module's reader and writer options for a CSV format."""
    if fmt.quote is None:
        return {"delimiter": fmt.delimiter, "quoting": csv.QUOTE_NONE, "quotechar": None}
    return {"delimiter": fmt.delimiter, "quotechar": fmt.quote, "doublequote": True}


class Rows:
    """A file's preamble, header and data rows (module docstring); iterate it once."""

    def __init__(self, stream: TextIO, fmt: Format) -> None:
        self.format = fmt
        self.header: tuple[str, ...] | None = None
        self._rows: Iterator[Row]
        try:
            # The skipped lines, verbatim with their line breaks: written back before the header.
            self.preamble = "".join(stream.readline() for _ in range(fmt.skip_lines))
            if isinstance(fmt, FixedFormat):
                self._rows = _fixed_rows(stream, fmt, fmt.skip_lines)
                return
            reader = csv.reader(stream, **csv_dialect(fmt))
            if fmt.header:
                for row in reader:
                    if row:
                        self.header = tuple(row)
                        break
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable(0, exc) from None
        self._rows = _csv_rows(reader, fmt.skip_lines)

    def __iter__(self) -> Iterator[Row]:
        return self._rows


def open_rows(stream: TextIO, fmt: Format) -> Rows:
    """The rows of a file read from ``stream`` per ``fmt``; its preamble and header read now."""
    return Rows(stream, fmt)


def _unreadable(after: int, exc: Exception) -> OcsError:
    """A file that stops being readable (not CSV, not in its encoding) after a line."""
    return invalid("file", f"unreadable after line {after}: {exc}")


def _csv_rows(reader: Any, offset: int) -> Iterator[Row]:
    """A CSV file's data rows; ``offset`` lines were read before the csv reader's first."""
    done = offset + reader.line_num
    try:
        for row in reader:
            # line_num counts physical lines, so a quoted line break is counted too.
            line = done + 1
            done = offset + reader.line_num
            if row:
                yield line, row, tuple(row)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise _unreadable(done, exc) from None


def _fixed_rows(stream: TextIO, fmt: FixedFormat, offset: int) -> Iterator[Row]:
    """A fixed-width file's data rows: each field sliced from the line and stripped."""
    slices = [(start, start + width) for start, width in fmt.fields.values()]
    line = offset
    try:
        for text in stream:
            line += 1
            body = text.rstrip("\r\n")
            if body.strip():
                yield line, [body[start:end].strip() for start, end in slices], (body,)
    except UnicodeDecodeError as exc:
        raise _unreadable(line, exc) from None


def write_row(fmt: Format, cells: tuple[str, ...]) -> str:
    """One row back in the file's own format, with a trailing line break."""
    if isinstance(fmt, FixedFormat):
        return cells[0] + "\n"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n", **csv_dialect(fmt)).writerow(cells)
    return buffer.getvalue()


def write_header(rows: Rows) -> str | None:
    """What comes before the data rows (the skipped lines, the header row), or None."""
    text = rows.preamble
    if rows.header is not None:
        text += write_row(rows.format, rows.header)
    return text or None
