"""The revenue reports as tables of text: one form for the CLI's table, the CSV export
for an ERP and the API's CSV answer, so all three say the same thing.

Amounts are written in the currency's minor unit (``"10.00"``, ``"1000"`` for
JPY), never rounded here: every figure of ``reports`` is already whole minor
units. CSV is RFC 4180 (CRLF line ends, quoting where needed), one header row.
"""

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from ocs.billing.csv_cells import safe_row
from ocs.billing.currency import format_amount
from ocs.billing.reports import DeferredRow, MrrRow, RevenueRow


@dataclass(frozen=True, slots=True)
class Table:
    """A report's column names and its rows, every cell as text."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


def mrr_table(period: str, rows: Sequence[MrrRow]) -> Table:
    """The MRR report: one row per currency."""
    return Table(
        (
            "period",
            "currency",
            "mrr",
            "arr",
            "opening_mrr",
            "accounts",
            "opening_accounts",
            "new_accounts",
            "churned_voluntary",
            "churned_involuntary",
            "churned_voluntary_mrr",
            "churned_involuntary_mrr",
            "account_churn_pct",
            "revenue_churn_pct",
        ),
        [
            (
                period,
                r.currency,
                format_amount(r.mrr, r.currency),
                format_amount(r.arr, r.currency),
                format_amount(r.opening_mrr, r.currency),
                str(r.accounts),
                str(r.opening_accounts),
                str(r.new_accounts),
                str(r.churned_voluntary),
                str(r.churned_involuntary),
                format_amount(r.churned_voluntary_mrr, r.currency),
                format_amount(r.churned_involuntary_mrr, r.currency),
                r.account_churn,
                r.revenue_churn,
            )
            for r in rows
        ],
    )


def deferred_table(at: str, rows: Sequence[DeferredRow]) -> Table:
    """The deferred revenue report: one row per currency and G/L code."""
    return Table(
        ("at", "currency", "gl_code", "lines", "billed", "recognised", "deferred"),
        [
            (
                at,
                r.currency,
                r.gl_code,
                str(r.lines),
                format_amount(r.billed, r.currency),
                format_amount(r.recognised, r.currency),
                format_amount(r.deferred, r.currency),
            )
            for r in rows
        ],
    )


def revenue_table(period: str, by: str, rows: Sequence[RevenueRow]) -> Table:
    """The revenue report by zone, G/L code or tax code (tax: the tax and its basis)."""
    key = {"zone": "zone", "gl": "gl_code", "tax": "tax_code"}[by]
    if by == "tax":
        return Table(
            ("period", "currency", key, "lines", "basis", "tax"),
            [
                (
                    period,
                    r.currency,
                    r.key,
                    str(r.lines),
                    format_amount(r.basis or 0, r.currency),
                    format_amount(r.amount, r.currency),
                )
                for r in rows
            ],
        )
    return Table(
        ("period", "currency", key, "lines", "revenue"),
        [
            (period, r.currency, r.key, str(r.lines), format_amount(r.amount, r.currency))
            for r in rows
        ],
    )


def to_csv(table: Table) -> str:
    """The table as CSV text: a header row, then its rows (CRLF line ends); a cell a
    spreadsheet would run as a formula is written as text (``csv_cells``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(table.columns)
    writer.writerows(safe_row(row) for row in table.rows)
    return out.getvalue()
