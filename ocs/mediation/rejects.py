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


def file_labels(paths: list[Path]) -> list[str]:
    """How the import's answer and report name each of its files: its name, but its path
    as given where another file of the import has the same name, and its place in the
    import too (``file 2``) where the same path is given twice, so no two files read
    the same."""
    names = [path.name for path in paths]
    given = [str(path) for path in paths]
    labels = []
    for index, path in enumerate(paths):
        if names.count(path.name) == 1:
            labels.append(path.name)
        elif given.count(str(path)) == 1:
            labels.append(str(path))
        else:
            labels.append(f"{path} (file {index + 1})")
    return labels


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
    it, named in the report: ``<its name>.import-<id>.file-<its place>.rejects.<ext>``,
    its place in the import (from 1) keeping it apart from the rejects file (named
    after the first file, which may be this one) and from another file of the same
    name in another folder. Files are told apart by their place, never their name.
    """

    compiled: CompiledTemplate
    # Where the files go, and the import's files in order (their names start with the
    # first one's).
    directory: Path
    paths: list[Path]
    # Set once the import's row is made (its files are named after it).
    import_id: int = 0
    rows: IO[str] | None = None
    report: IO[str] | None = None
    shown: list[ProblemRow] = field(default_factory=list)
    # How the answer and the report name each file (``file_labels``).
    labels: list[str] = field(init=False)
    count: int = 0
    # By the file's place in the import (two files may have the same name).
    layouts: dict[int, FileLayout] = field(default_factory=dict)
    written: FileLayout | None = None
    own_files: dict[int, IO[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Name the files."""
        self.labels = file_labels(self.paths)

    @property
    def first(self) -> Path:
        """The import's first file, which the rejects file and the report are named after."""
        return self.paths[0]

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

    def opened(self, file: int, compiled: CompiledTemplate) -> None:
        """Note the layout of the import's ``file``-th file (from 0) once its header is
        read (its rows may be rejected later, while the next file is read)."""
        self.layouts[file] = FileLayout(compiled.render_header(), compiled.header)

    def add(self, file: int, line: int, cells: tuple[str, ...], problems: tuple[str, ...]) -> None:
        """Write one rejected row of the import's ``file``-th file and its problems."""
        layout = self.layouts.get(file) or FileLayout(None, None)
        label = self.labels[file]
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
        self.report.write(f"{label}:{line}: {'; '.join(problems)}\n")
        self.count += 1
        if len(self.shown) < SHOWN_PROBLEMS:
            self.shown.append(ProblemRow(label, line, problems))

    def own_path(self, file: int) -> Path:
        """Where the rejected rows of the import's ``file``-th file go when its columns
        differ from the rejects file's (never the rejects file itself)."""
        name = self.paths[file]
        return self.rows_path.with_name(
            f"{name.stem}.import-{self.import_id}.file-{file + 1}.rejects{name.suffix or '.csv'}"
        )

    def own_file(self, file: int, layout: FileLayout) -> IO[str]:
        """The rejects file of a file whose columns differ from the first one's."""
        handle = self.own_files.get(file)
        if handle is None:
            path = self.own_path(file)
            handle = self.own_files[file] = path.open("w", encoding=self.encoding, newline="")
            if layout.head is not None:
                handle.write(layout.head)
            assert self.report is not None
            self.report.write(
                f"{self.labels[file]}: its columns differ; its rejected rows are in {path}\n"
            )
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
