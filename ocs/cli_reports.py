"""The revenue reports on the `ocs` command line (decision 0031).

``ocs reports mrr --period 2026-03``, ``ocs reports deferred --at 2026-03-31``
and ``ocs reports revenue --by zone|gl|tax --period 2026-03`` print a table
(``rich``) for a person, or with ``--csv`` the CSV an ERP imports, the same
text as the API's ``?format=csv``. Each report is one query
(``ocs.billing.reports``); the table and the CSV come from one form
(``ocs.billing.report_export``), so they never disagree.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
import sys
from datetime import date
from typing import TYPE_CHECKING

from ocs.cli_support import UsageError, add_command, add_group, checked, date_arg, with_services
from ocs.config import Settings

if TYPE_CHECKING:
    from ocs.billing.report_export import Table
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register ``ocs reports mrr|deferred|revenue``."""
    from ocs.billing.reports import GROUPINGS

    reports = add_group(commands, "reports", "revenue reports: MRR and churn, deferred, revenue")
    mrr = add_command(reports, "mrr", "MRR, ARR and churn of a calendar month", _mrr)
    mrr.add_argument("--period", required=True, help="a calendar month, YYYY-MM")
    deferred = add_command(reports, "deferred", "deferred revenue at the end of a day", _deferred)
    deferred.add_argument("--at", required=True, help="the day, YYYY-MM-DD")
    revenue = add_command(
        reports, "revenue", "a month's revenue by zone, G/L code or tax code", _revenue
    )
    revenue.add_argument("--by", required=True, choices=GROUPINGS)
    revenue.add_argument("--period", required=True, help="a calendar month, YYYY-MM")
    for parser in (mrr, deferred, revenue):
        parser.add_argument("--csv", action="store_true", help="CSV for an ERP, not a table")


# Beyond this many columns a report is shown turned: a row per figure, a column per row.
WIDEST = 7
# Columns that are text, left-aligned (the others are numbers, right-aligned).
TEXT_COLUMNS = frozenset({"period", "at", "currency", "zone", "gl_code", "tax_code"})


def show(table: "Table", title: str, as_csv: bool) -> None:
    """Print a report: its CSV, or a table under its title (no rows: says so).

    The table leaves out the period or day (the title says it) and shows an
    empty key as ``(none)``; a report with many figures (MRR) is turned, one
    row per figure and one column per currency, to stay readable.
    """
    from ocs.billing.report_export import to_csv

    if as_csv:
        sys.stdout.write(to_csv(table))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    # A fixed width and no colour: the same text on a terminal, in a pipe and in a test.
    console = Console(file=sys.stdout, width=160, color_system=None, highlight=False)
    if not table.rows:
        console.print(Text(f"{title}: nothing to report"))
        return
    keep = [n for n, column in enumerate(table.columns) if column not in ("period", "at")]
    columns = [table.columns[n] for n in keep]
    # Every cell and heading is plain text, never rich markup: a G/L code, a zone or a
    # tax code may hold brackets ("[b]4000", "4000[/]"), shown exactly as written.
    rows = [[Text(row[n] or "(none)") for n in keep] for row in table.rows]
    shown = RichTable(title=Text(title), box=box.SIMPLE, title_justify="left")
    if len(columns) > WIDEST:
        shown.add_column(Text(columns[0]), justify="left", no_wrap=True)
        for row in rows:
            shown.add_column(row[0], justify="right", no_wrap=True)
        for n, column in enumerate(columns[1:], start=1):
            shown.add_row(Text(column), *(row[n] for row in rows))
    else:
        for column in columns:
            if column in TEXT_COLUMNS:
                shown.add_column(Text(column), justify="left", no_wrap=True)
            else:
                shown.add_column(Text(column), justify="right", no_wrap=True)
        for row in rows:
            shown.add_row(*row)
    console.print(shown)


def _mrr(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs reports mrr``: MRR, ARR and churn per currency; suspensions dated today.

    A currency the report leaves out (no minor unit) is named on stderr; the exit code
    stays 0, as every other currency was reported."""
    from ocs.billing import reports
    from ocs.billing.report_export import mrr_table

    period = checked(lambda: reports.month(args.period, "--period"))
    today = date.today()
    found = with_services(settings, lambda s: reports.mrr(s.pool, period, today))
    show(mrr_table(period.label, found.rows), f"MRR {period.label}", args.csv)
    # On stderr: the table or the CSV on stdout stays what it was for the others.
    for item in found.left_out:
        print(f"ocs: MRR {period.label} leaves out {item.currency}: {item.reason}", file=sys.stderr)
    return 0


def _deferred(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs reports deferred``: billed, recognised and deferred per currency and G/L code."""
    from ocs.billing import reports
    from ocs.billing.report_export import deferred_table

    at = date_arg(args.at, "--at")
    if at is None:  # a required argument: argparse already said so
        raise UsageError("--at: is required")
    rows = with_services(settings, lambda s: reports.deferred(s.pool, at))
    show(deferred_table(at.isoformat(), rows), f"Deferred revenue at {at}", args.csv)
    return 0


def _revenue(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs reports revenue``: a month's revenue by zone, G/L code or tax code."""
    from ocs.billing import reports
    from ocs.billing.report_export import revenue_table

    period = checked(lambda: reports.month(args.period, "--period"))
    rows = with_services(settings, lambda s: reports.revenue(s.pool, args.by, period))
    title = f"Revenue {period.label} by {args.by}"
    show(revenue_table(period.label, args.by, rows), title, args.csv)
    return 0
