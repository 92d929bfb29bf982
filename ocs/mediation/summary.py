"""What a usage import comes to, as ``usage_imports`` stores it and the API answers it."""

import msgspec


class ProblemRow(msgspec.Struct, frozen=True):
    """A rejected row as the answer lists it: file, line and every problem."""

    file: str
    line: int
    problems: tuple[str, ...]


class ImportSummary(msgspec.Struct):
    """An import's outcome, as stored in ``usage_imports`` and answered."""

    id: int
    template: str
    template_version: str
    supplier: str
    mode: str
    state: str
    rows_read: int = 0
    rows_filtered: int = 0
    rows_charged: int = 0
    rows_repeated: int = 0
    rows_rejected: int = 0
    # Charged records that started before their plan's prices last changed: rated at the
    # prices of the import, not of their time (decks and tariffs have no effective dates).
    rows_priced_after_start: int = 0
    amounts: dict[str, int] = msgspec.field(default_factory=dict)
    rejects_path: str | None = None
    report_path: str | None = None
    problems: list[ProblemRow] = msgspec.field(default_factory=list)
    error: str | None = None
