"""A usage import's rejected rows: written back in each file's own format and text
encoding to a rejects file (which can be fixed and imported again with the same
template), with every problem in a report (UTF-8)."""

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ocs.mediation.classify import CompiledTemplate
from ocs.mediation.summary import ProblemRow

# Problems an import's answer lists; the report file has them all.
SHOWN_PROBLEMS = 100


def written_encoding(encoding: str) -> str:
    """The encoding a rejects file of a template's files is written in: the template's,
    but plain UTF-8 for ``utf-8-sig`` (which reads it too), so it starts with no byte
    order mark."""
    return "utf-8" if codecs.lookup(encoding).name == "utf-8-sig" else encoding


@dataclass(slots=True)
class FileLayout:
    """What comes before a file's data (its skipped lines and header, as text) and its
    header's column names (None: no header)."""

    head: str | None
    header: tuple[str, ...] | None


@dataclass(slots=True)
class Rejects:
    """The rejects file (rows in the file's own format) and the problems report.

    The rejects file takes the layout of the first file a row is rejected from. A row
    of another file whose header names the same columns in another order is written
    in that order; a file with other columns gets a rejects file of its own beside
    it (``<its name>.import-<id>.rejects.<ext>``), named in the report.
    """

    compiled: CompiledTemplate
    # Where the files go, and the import's first file (their names start with its).
    directory: Path
    first: Path
    # Set once the import's row is made (its files are named after it).
    import_id: int = 0
    rows: IO[str] | None = None
    report: IO[str] | None = None
    shown: list[ProblemRow] = field(default_factory=list)
    count: int = 0
    layouts: dict[str, FileLayout] = field(default_factory=dict)
    written: FileLayout | None = None
    own_files: dict[str, IO[str]] = field(default_factory=dict)

    @property
    def encoding(self) -> str:
        """The rejects files' text encoding: the template's (``written_encoding``)."""
        return written_encoding(self.compiled.template.format.encoding)

    @property
    def rows_path(self) -> Path:
        """The rejects file: the rejected rows in the first file's format."""
        first = self.first
        return (
            self.directory / f"{first.stem}.import-{self.import_id}.rejects{first.suffix or '.csv'}"
        )

    @property
    def report_path(self) -> Path:
        """The problems report: each rejected row's file, line and problems."""
        return self.directory / f"{self.first.stem}.import-{self.import_id}.problems.txt"

    def opened(self, file: str, compiled: CompiledTemplate) -> None:
        """Note a file's layout once its header is read (its rows may be rejected later,
        while the next file is read)."""
        self.layouts[file] = FileLayout(compiled.render_header(), compiled.header)

    def add(self, file: str, line: int, cells: tuple[str, ...], problems: tuple[str, ...]) -> None:
        """Write one rejected row and its problems."""
        layout = self.layouts.get(file) or FileLayout(None, None)
        if self.rows is None or self.report is None or self.written is None:
            self.rows = self.rows_path.open("w", encoding=self.encoding, newline="")
            self.report = self.report_path.open("w", encoding="utf-8")
            self.written = layout
            if layout.head is not None:
                self.rows.write(layout.head)
        out = self.rows
        first = self.written.header
        if layout.header != first:
            if _same_columns(layout.header, first, cells):
                assert layout.header is not None and first is not None
                cells = tuple(cells[layout.header.index(name)] for name in first)
            else:
                out = self.own_file(file, layout)
        out.write(self.compiled.render(cells))
        self.report.write(f"{file}:{line}: {'; '.join(problems)}\n")
        self.count += 1
        if len(self.shown) < SHOWN_PROBLEMS:
            self.shown.append(ProblemRow(file, line, problems))

    def own_file(self, file: str, layout: FileLayout) -> IO[str]:
        """The rejects file of a file whose columns differ from the first one's."""
        handle = self.own_files.get(file)
        if handle is None:
            name = Path(file)
            path = self.rows_path.with_name(
                f"{name.stem}.import-{self.import_id}.rejects{name.suffix or '.csv'}"
            )
            handle = self.own_files[file] = path.open("w", encoding=self.encoding, newline="")
            if layout.head is not None:
                handle.write(layout.head)
            assert self.report is not None
            self.report.write(f"{file}: its columns differ; its rejected rows are in {path}\n")
        return handle

    def close(self) -> None:
        """Close the files (nothing is written when no row was rejected)."""
        for handle in (self.rows, self.report, *self.own_files.values()):
            if handle is not None:
                handle.close()


def _same_columns(
    header: tuple[str, ...] | None, first: tuple[str, ...] | None, cells: tuple[str, ...]
) -> bool:
    """Whether a row under ``header`` can be written under ``first``: the same distinct
    column names in another order, and the row has a cell for each."""
    return (
        header is not None
        and first is not None
        and len(cells) == len(header) == len(first) == len(set(header))
        and sorted(header) == sorted(first)
    )
