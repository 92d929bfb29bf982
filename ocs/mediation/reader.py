"""Reading a usage file into rows per its template's format: CSV or fixed-width.

``open_rows`` reads what comes before the data (the ``skip_lines`` lines, kept
verbatim, and a CSV file's header row) at once, then iterates the data rows as
``(line, values, cells)``: ``line`` is the 1-based physical line the row starts on,
``values`` the row's fields (a list the caller may extend), ``cells`` what is kept
of the row to write it back (a CSV row's cells; a fixed-width row's line itself).
Blank lines are skipped. A file that stops being CSV (a cell over the csv module's
size limit, a quote that no later line closes) or text in its encoding raises
OcsError (invalid_field, field ``file``) naming the line after which it did: the rows
before it come first, none after it. ``write_row`` and ``write_header`` write rows back in the
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


class _Lines:
    """A stream's lines for the csv reader, noting when they run out.

    The csv reader ends a row at the end of its last line without asking for the next
    one; it asks past the file's end only within a quoted cell (lenient, it then ends
    the row there). A row read once the lines ran out is thus one whose quote no
    line closed: the rest of the file, read as one cell.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.ended = False

    def __iter__(self) -> Iterator[str]:
        yield from self.stream
        self.ended = True


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
            lines = _Lines(stream)
            reader = csv.reader(lines, **csv_dialect(fmt))
            if fmt.header:
                before = fmt.skip_lines  # lines read before the row being read
                for row in reader:
                    if lines.ended:
                        raise _unclosed(fmt, before + 1, fmt.skip_lines + reader.line_num)
                    before = fmt.skip_lines + reader.line_num
                    if row:
                        self.header = tuple(row)
                        break
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable(0, exc) from None
        self._rows = _csv_rows(reader, lines, fmt)

    def __iter__(self) -> Iterator[Row]:
        return self._rows


def open_rows(stream: TextIO, fmt: Format) -> Rows:
    """The rows of a file read from ``stream`` per ``fmt``; its preamble and header read now."""
    return Rows(stream, fmt)


def _unreadable(after: int, exc: Exception) -> OcsError:
    """A file that stops being readable (not CSV, not in its encoding) after a line."""
    return invalid("file", f"unreadable after line {after}: {exc}")


def _unclosed(fmt: CsvFormat, first: int, last: int) -> OcsError:
    """A file whose row on line ``first`` opens a quote that no line up to the file's
    end (``last``) closes: the rest of the file would be one cell of that row."""
    return invalid(
        "file",
        f"unreadable after line {first - 1}: the row on line {first} opens a quote"
        f" ({fmt.quote}) that no later line closes, so lines {first} to {last} would be"
        " one cell; close or remove the quote and import the file again",
    )


def _csv_rows(reader: Any, lines: _Lines, fmt: CsvFormat) -> Iterator[Row]:
    """A CSV file's data rows; ``fmt.skip_lines`` lines were read before the csv
    reader's first."""
    offset = fmt.skip_lines
    done = offset + reader.line_num
    try:
        for row in reader:
            # line_num counts physical lines, so a quoted line break is counted too.
            line = done + 1
            done = offset + reader.line_num
            if lines.ended:
                raise _unclosed(fmt, line, done)
            if row:
                yield line, row, tuple(row)
    except (csv.Error, UnicodeDecodeError) as exc:
        spans = offset + reader.line_num - done
        if isinstance(exc, csv.Error) and spans > 1:
            # A cell over the size limit across lines: a quote no line closed, most often.
            raise invalid(
                "file",
                f"unreadable after line {done}: the row on line {done + 1} runs over"
                f" {spans} lines, within a quote ({fmt.quote}) no line closes? ({exc})",
            ) from None
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
