"""What a usage import template makes of a file's rows: a record to rate, or a row's problems.

These are the values the reading side (``ocs.mediation.classify``) hands to the
importer (``ocs.mediation.importer`` and ``ocs.mediation.import_run``); neither side
imports the other.
"""

import msgspec


class UsageRecord(msgspec.Struct, frozen=True, gc=False):
    """One usage transaction read from a file, classified but not yet overridden or rated.

    ``quantity`` is whole seconds for a call and whole units (MB, kWh, messages) for
    usage of a service; ``start_ms`` is the call's or the event's own start, epoch
    milliseconds UTC (time bands apply to it). ``rate_type`` is what the template's
    classification rules gave, None when no rule matched and the template has no
    default; the supplier's overrides apply after. ``cells`` are the row's cells as
    read (a fixed-width row: the line itself), so a rejected row is written back in
    the file's own format.
    """

    line: int
    record_id: str
    account: str | None
    member: str | None
    caller: str | None
    called: str | None
    service: str | None
    direction: str
    start_ms: int
    quantity: int
    rate_type: str | None
    cells: tuple[str, ...]


class RowProblem(msgspec.Struct, frozen=True, gc=False):
    """A row the template refused, with every problem found on it, each naming its column."""

    line: int
    problems: tuple[str, ...]
    cells: tuple[str, ...]
