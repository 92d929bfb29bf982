"""Revenue reports in the admin API (decision 0031): viewers read them.

``GET /v1/reports/mrr?period=2026-03``, ``GET /v1/reports/deferred?at=2026-03-31``
and ``GET /v1/reports/revenue?by=zone&period=2026-03``. Each answers JSON, or
with ``format=csv`` the CSV an ERP imports (``text/csv``, as an attachment):
the same text as ``ocs reports ... --csv``. Amounts are decimal strings in the
currency's minor unit ("10.00"), every one already whole minor units.
"""

from collections.abc import Sequence
from datetime import date
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ocs.billing import reports
from ocs.billing.report_export import Table, deferred_table, mrr_table, revenue_table, to_csv
from ocs.http.context import services_of
from ocs.http.endpoint import Answer, Endpoint, Params, Role

PeriodText = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\d{4}-(0[1-9]|1[0-2])(?!\n)$",
        description="a calendar month, YYYY-MM",
        examples=["2026-03"],
    ),
]
Format = Annotated[
    Literal["json", "csv"], msgspec.Meta(description="json, or csv (an attachment for an ERP)")
]
Grouping = Literal["zone", "gl", "tax"]


class MrrQuery(Params):
    """The month whose MRR and churn are reported, and the form of the answer."""

    period: PeriodText
    format: Format = "json"


class DeferredQuery(Params):
    """The day at whose end deferred revenue is reported, and the form of the answer."""

    at: date
    format: Format = "json"


class RevenueQuery(Params):
    """The month, the grouping and the form of the answer."""

    by: Grouping
    period: PeriodText
    format: Format = "json"


class LeftOutView(Answer):
    """A currency whose amounts a report leaves out, and why (it has no minor unit)."""

    currency: str
    reason: str


class Report(Answer):
    """A report: which one, what it covers, its column names and its rows; ``left_out``
    names the currencies it could not report (empty when none)."""

    report: str
    covers: str
    columns: list[str]
    rows: list[dict[str, str]]
    left_out: list[LeftOutView] = msgspec.field(default_factory=list)


# Names the currencies a CSV leaves out (the CSV itself is rows only, for an ERP).
LEFT_OUT_HEADER = "OCS-Left-Out-Currencies"


def _answer(
    name: str,
    covers: str,
    table: Table,
    form: str,
    left_out: Sequence[reports.LeftOut] = (),
) -> Report | web.Response:
    """A report as JSON, or as a CSV attachment."""
    if form == "csv":
        headers = {"Content-Disposition": f'attachment; filename="{name}-{covers}.csv"'}
        if left_out:
            headers[LEFT_OUT_HEADER] = ",".join(item.currency for item in left_out)
        return web.Response(text=to_csv(table), content_type="text/csv", headers=headers)
    return Report(
        report=name,
        covers=covers,
        columns=list(table.columns),
        rows=[dict(zip(table.columns, row, strict=True)) for row in table.rows],
        left_out=[LeftOutView(currency=i.currency, reason=i.reason) for i in left_out],
    )


async def mrr_report(request: web.Request, params: MrrQuery) -> Report | web.Response:
    """GET /v1/reports/mrr: MRR, ARR and churn per currency; suspensions dated today.

    A currency without a minor unit (a plan stored before such currencies were refused)
    is left out and named in ``left_out``; every other currency is still reported."""
    period = reports.month(params.period)
    found = await reports.mrr(services_of(request).pool, period, date.today())
    table = mrr_table(period.label, found.rows)
    return _answer("mrr", period.label, table, params.format, found.left_out)


async def deferred_report(request: web.Request, params: DeferredQuery) -> Report | web.Response:
    """GET /v1/reports/deferred: billed, recognised and deferred per currency and G/L code."""
    rows = await reports.deferred(services_of(request).pool, params.at)
    at = params.at.isoformat()
    return _answer("deferred", at, deferred_table(at, rows), params.format)


async def revenue_report(request: web.Request, params: RevenueQuery) -> Report | web.Response:
    """GET /v1/reports/revenue: a month's revenue by zone, G/L code or tax code."""
    period = reports.month(params.period)
    rows = await reports.revenue(services_of(request).pool, params.by, period)
    table = revenue_table(period.label, params.by, rows)
    return _answer(f"revenue-{params.by}", period.label, table, params.format)


_CSV_NOTE = "format=csv answers text/csv (an attachment) with the same columns."

ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "GET",
        "/v1/reports/mrr",
        Role.VIEWER,
        "MRR, ARR and churn (voluntary, involuntary) of a calendar month, per currency",
        mrr_report,
        MrrQuery,
        Report,
        description="MRR at the month's last day; churn against the previous month's last"
        " day (decision 0031). " + _CSV_NOTE,
    ),
    Endpoint(
        "GET",
        "/v1/reports/deferred",
        Role.VIEWER,
        "Deferred revenue at the end of a day, per currency and G/L code",
        deferred_report,
        DeferredQuery,
        Report,
        description="Advance-billed lines recognised by day over their periods (decision"
        " 0031). " + _CSV_NOTE,
    ),
    Endpoint(
        "GET",
        "/v1/reports/revenue",
        Role.VIEWER,
        "A calendar month's revenue by zone, G/L code or tax code, per currency",
        revenue_report,
        RevenueQuery,
        Report,
        description="Posted documents dated in the month; voids net out by their credit"
        " notes (decision 0031). " + _CSV_NOTE,
    ),
)
