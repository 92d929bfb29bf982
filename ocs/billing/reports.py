"""Revenue reports: MRR, ARR and churn; deferred revenue; revenue by zone, G/L or tax code.

Each report is one set-based SQL statement (no query per account), plus one
small query for the minor units of the currencies in use; a currency without
one (a plan stored before they were refused) is left out and named
(``LeftOut``), never a failure of the whole report. The definitions are
decision 0031's, stated here once:

- **Documents that count**: every invoice or credit note that was posted
  (``state <> 'draft'``), on its own ``invoice_date``. A voided invoice keeps
  counting on its date and its credit note (posted, negative, dated the day
  of the void) counts on its own, so a void nets out from its day on and a
  closed period's figures never change afterwards. Drafts never count.
- **MRR** of a currency at a day: the sum over the recurring items active
  that day (a subscription's charges, its plan's custom recurring charges,
  numbers' triggered charges with a cadence; not pending subscriptions, not
  counter fees, not one-time charges) of each item's **monthly value**:
  amount x quantity x 1 (monthly), 1/3 (quarterly), 1/12 (yearly), 52/12
  (weekly) or 365/(12 N) (every N days), rounded **once per item** to the
  currency's minor unit, half away from zero (decision 0019). An item is
  active on day D when its first day <= D < its end (the earliest of the
  charge's end, the subscription's end and its cancellation day). A period's
  MRR is the MRR at its last day; ARR = 12 x MRR.
- **Churn** in a period: an account with MRR at the previous period's last
  day (opening) and none at this period's last day (closing). Involuntary
  when any of its opening items belongs to a suspended subscription
  (``subscriptions.status = 'suspended'``) or a suspended account
  (``accounts.status = 'suspended'``, dunning); voluntary otherwise (a
  cancellation or an end). The schema keeps no suspension day, so a
  suspension is dated the day the report runs (``today``): a suspended item
  still counts at days before it and no longer from it on. Rates are
  churned / opening, for accounts and for MRR.
- **Deferred revenue** at the end of day D: for every non-tax line of a
  counted document dated on or before D that has a period [start, end)
  ending after D, its amount less the share recognised by D, recognised by
  local day of the plan's zone: ``amount x days of the period up to D /
  days of the period``, rounded **once per line** to the minor unit, half
  away from zero. Deferred = billed - recognised, exactly. A surcharge on a
  charge has the period of the charge lines it surcharges (``surcharges``), so
  it is deferred with them.
- **Revenue** of a period (a calendar month): the lines of the counted
  documents dated in it, taxes excluded, by zone (usage lines and the
  surcharges on a zone, which name it; others under ""), by the G/L code of
  the line's charge ("" for none; a surcharge on a charge names the charge),
  or, by tax code,
  the tax lines: the tax collected and its basis. A credit note's reversal
  line counts as the kind of the line it reverses.
"""

import calendar
import logging
import re
from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

from ocs.billing.currency import CurrencyError, minor_unit_micro
from ocs.errors import invalid

log = logging.getLogger("ocs.billing.reports")

GROUPINGS = ("zone", "gl", "tax")

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True, slots=True)
class Month:
    """A calendar month: its first day and the first day after it."""

    label: str
    first: date
    end: date

    @property
    def last(self) -> date:
        """The month's last day (the MRR and churn reference day)."""
        return self.end - timedelta(days=1)


def month(label: str, field: str = "period") -> Month:
    """A ``YYYY-MM`` label as a month; anything else is an invalid ``field``."""
    found = _PERIOD.match(label)
    if found is None:
        raise invalid(field, f"expected a calendar month YYYY-MM, not {label[:20]!r}")
    year, number = int(found.group(1)), int(found.group(2))
    if not 2000 <= year <= 9998:  # 9999-12's end would be past the last date
        raise invalid(field, "a year from 2000 to 9998")
    days = calendar.monthrange(year, number)[1]
    first = date(year, number, 1)
    return Month(label, first, first + timedelta(days=days))


@dataclass(frozen=True, slots=True)
class MrrRow:
    """One currency's MRR report for a period; amounts in micro-units (whole minor units)."""

    currency: str
    mrr: int
    arr: int
    opening_mrr: int
    accounts: int
    opening_accounts: int
    new_accounts: int
    churned_voluntary: int
    churned_involuntary: int
    churned_voluntary_mrr: int
    churned_involuntary_mrr: int

    @property
    def account_churn(self) -> str:
        """Churned accounts / opening accounts, a percentage with 2 places."""
        return percent(self.churned_voluntary + self.churned_involuntary, self.opening_accounts)

    @property
    def revenue_churn(self) -> str:
        """Churned MRR / opening MRR, a percentage with 2 places."""
        churned = self.churned_voluntary_mrr + self.churned_involuntary_mrr
        return percent(churned, self.opening_mrr)


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A currency a report leaves out, and why: it has no minor unit to round to.

    Plans are refused such a currency (``ocs.catalog.store.validate_currency``), but a
    row stored before that check may hold one (XTS, XAU, a typo); the report leaves its
    amounts out and says so, rather than failing for every currency.
    """

    currency: str
    reason: str


@dataclass(frozen=True, slots=True)
class MrrReport:
    """The MRR report of a period: a row per currency, and the currencies left out."""

    rows: list[MrrRow]
    left_out: list[LeftOut]


@dataclass(frozen=True, slots=True)
class DeferredRow:
    """Deferred revenue of one currency and G/L code at a day (micro-units)."""

    currency: str
    gl_code: str
    lines: int
    billed: int
    recognised: int
    deferred: int


@dataclass(frozen=True, slots=True)
class RevenueRow:
    """Revenue of one currency and key (a zone, G/L code or tax code) in a period.

    ``amount``: revenue net of tax, or for a tax code the tax; ``basis``: for a
    tax code, what the tax applied to (None otherwise).
    """

    currency: str
    key: str
    lines: int
    amount: int
    basis: int | None


def percent(part: int, whole: int) -> str:
    """``part / whole`` as a percentage with 2 places, half away from zero ("0.00" of 0)."""
    if whole == 0:
        return "0.00"
    scaled = (2 * abs(part) * 10_000 + abs(whole)) // (2 * abs(whole))
    sign = "-" if (part < 0) != (whole < 0) and scaled else ""
    return f"{sign}{scaled // 100}.{scaled % 100:02d}"


async def _minor_units(
    conn: asyncpg.Connection, sql: str, report: str
) -> tuple[list[str], list[int], list[LeftOut]]:
    """The currencies ``sql`` lists that can be rounded, micro-units in one minor unit of
    each, and those left out of ``report`` (no minor unit), each logged as a warning."""
    codes: list[str] = []
    units: list[int] = []
    left_out: list[LeftOut] = []
    for code in sorted({r[0] for r in await conn.fetch(sql)}):
        try:
            units.append(minor_unit_micro(code))
        except CurrencyError as error:
            left_out.append(LeftOut(code, str(error)))
            log.warning(
                "a currency left out of a report",
                extra={"report": report, "currency": code, "reason": str(error)},
            )
            continue
        codes.append(code)
    return codes, units, left_out


# Every recurring item an account has, with its days [first, after) and whether it is
# suspended (its subscription or its account): the three sources the drafts bill.
_ITEMS = """
items AS (
    SELECT s.account_id, c.currency, c.cadence, c.every_days,
           c.amount * sc.quantity AS amount,
           GREATEST(s.start_date, sc.start_date) AS first,
           LEAST(sc.end_date, s.end_date, s.cancelled_on) AS after,
           s.status = 'suspended' OR a.status = 'suspended' AS suspended
    FROM subscriptions s
    JOIN accounts a ON a.id = s.account_id
    JOIN subscription_charges sc ON sc.subscription_id = s.id
    JOIN charges c ON c.id = sc.charge_id
    WHERE s.status <> 'pending' AND c.kind IN ('recurring', 'triggered') AND c.cadence IS NOT NULL
    UNION ALL
    SELECT s.account_id, c.currency, c.cadence, c.every_days, c.amount,
           s.start_date, LEAST(s.end_date, s.cancelled_on),
           s.status = 'suspended' OR a.status = 'suspended'
    FROM subscriptions s
    JOIN accounts a ON a.id = s.account_id
    JOIN charges c ON c.plan_id = s.plan_id AND c.kind = 'recurring'
    WHERE s.status <> 'pending'
    UNION ALL
    SELECT n.account_id, c.currency, c.cadence, c.every_days, c.amount,
           n.start_date, n.end_date, a.status = 'suspended'
    FROM account_numbers n
    JOIN accounts a ON a.id = n.account_id
    JOIN charges c ON c.id = n.charge_id
    WHERE c.cadence IS NOT NULL
)"""

# MRR at the opening and closing days ($1, $2) per account, then per currency. $3: the
# day suspensions are dated; $4/$5: currencies and their minor units in micro-units.
# An item's monthly value: amount x num / den rounded half away from zero to the minor
# unit f (amounts are >= 0): floor((2 x amount x num + den x f) / (2 x den x f)) x f.
_MRR_SQL = f"""
WITH {_ITEMS},
valued AS (
    SELECT i.account_id, i.currency, i.first, i.after, i.suspended,
           div(2 * i.amount::numeric * k.num + k.den * m.f, 2 * k.den * m.f) * m.f AS monthly
    FROM items i
    JOIN unnest($4::text[], $5::bigint[]) AS m(currency, f) ON m.currency = i.currency
    CROSS JOIN LATERAL (
        SELECT CASE i.cadence WHEN 'weekly' THEN 52 WHEN 'days' THEN 365 ELSE 1 END AS num,
               CASE i.cadence WHEN 'quarterly' THEN 3 WHEN 'yearly' THEN 12
                              WHEN 'weekly' THEN 12 WHEN 'days' THEN 12 * i.every_days
                              ELSE 1 END AS den
    ) AS k
),
at_day AS (
    SELECT d.which, v.account_id, v.currency, sum(v.monthly) AS mrr,
           bool_or(v.suspended) AS suspended
    FROM valued v
    CROSS JOIN (VALUES ('opening', $1::date), ('closing', $2::date)) AS d(which, day)
    WHERE v.first <= d.day AND (v.after IS NULL OR v.after > d.day)
      AND NOT (v.suspended AND d.day >= $3::date)
    GROUP BY d.which, v.account_id, v.currency
),
opening AS (SELECT * FROM at_day WHERE which = 'opening'),
closing AS (SELECT * FROM at_day WHERE which = 'closing')
SELECT COALESCE(c.currency, o.currency) AS currency,
       COALESCE(sum(c.mrr), 0)::bigint AS mrr,
       COALESCE(sum(o.mrr), 0)::bigint AS opening_mrr,
       count(c.account_id) AS accounts,
       count(o.account_id) AS opening_accounts,
       count(*) FILTER (WHERE o.account_id IS NULL) AS new_accounts,
       count(*) FILTER (WHERE c.account_id IS NULL AND NOT o.suspended) AS churned_voluntary,
       count(*) FILTER (WHERE c.account_id IS NULL AND o.suspended) AS churned_involuntary,
       COALESCE(sum(o.mrr) FILTER (WHERE c.account_id IS NULL AND NOT o.suspended), 0)::bigint
           AS churned_voluntary_mrr,
       COALESCE(sum(o.mrr) FILTER (WHERE c.account_id IS NULL AND o.suspended), 0)::bigint
           AS churned_involuntary_mrr
FROM opening o FULL JOIN closing c ON c.account_id = o.account_id AND c.currency = o.currency
GROUP BY 1 ORDER BY 1
"""


# The currencies of the charges MRR can read: recurring and triggered ones (a one-time
# charge has no cadence; a counter's fee is not MRR, so its currency is not asked).
_MRR_CURRENCIES = "SELECT DISTINCT currency FROM charges WHERE kind IN ('recurring', 'triggered')"


async def mrr(pool: asyncpg.Pool, period: Month, today: date) -> MrrReport:
    """MRR, ARR and churn of ``period`` per currency; suspensions dated ``today``.

    A currency without a minor unit cannot be rounded: its items are left out and the
    report names it (``left_out``), while every other currency is reported.
    """
    async with pool.acquire() as conn:
        codes, units, left_out = await _minor_units(conn, _MRR_CURRENCIES, "mrr")
        rows = await conn.fetch(
            _MRR_SQL, period.first - timedelta(days=1), period.last, today, codes, units
        )
    return MrrReport(
        [
            MrrRow(
                currency=r["currency"],
                mrr=r["mrr"],
                arr=12 * r["mrr"],
                opening_mrr=r["opening_mrr"],
                accounts=r["accounts"],
                opening_accounts=r["opening_accounts"],
                new_accounts=r["new_accounts"],
                churned_voluntary=r["churned_voluntary"],
                churned_involuntary=r["churned_involuntary"],
                churned_voluntary_mrr=r["churned_voluntary_mrr"],
                churned_involuntary_mrr=r["churned_involuntary_mrr"],
            )
            for r in rows
        ],
        left_out,
    )


# The lines of counted documents dated on or before $1 with days left after $1, in the
# plan's local days; the recognised share of each rounded once, half away from zero, to
# the minor unit f: sign(n) x floor((2|n| + days x f) / (2 x days x f)) x f, n = amount x
# elapsed days. A reversal line counts as the kind of the line it reverses.
_DEFERRED_SQL = """
WITH spans AS (
    SELECT i.currency, COALESCE(c.gl_code, '') AS gl_code, l.amount,
           (l.period_start AT TIME ZONE COALESCE(b.time_zone, 'UTC'))::date AS first,
           (l.period_end AT TIME ZONE COALESCE(b.time_zone, 'UTC'))::date AS after
    FROM invoices i
    JOIN invoice_lines l ON l.invoice_id = i.id
    LEFT JOIN invoice_lines o ON o.id = l.reverses_line
    LEFT JOIN plan_billing b ON b.plan_id = i.plan_id
    LEFT JOIN charges c ON c.id = l.charge_id
    WHERE i.state <> 'draft' AND i.invoice_date <= $1::date
      AND COALESCE(o.kind, l.kind) <> 'tax'
      AND l.period_start IS NOT NULL AND l.period_end IS NOT NULL
),
shares AS (
    SELECT s.currency, s.gl_code, s.amount,
           sign(s.amount) * div(2 * abs(s.amount::numeric)
                                * LEAST(GREATEST($1::date + 1 - s.first, 0), s.after - s.first)
                                + (s.after - s.first) * m.f,
                                2 * (s.after - s.first) * m.f) * m.f AS recognised
    FROM spans s
    JOIN unnest($2::text[], $3::bigint[]) AS m(currency, f) ON m.currency = s.currency
    WHERE s.after > $1::date + 1 AND s.after > s.first
)
SELECT currency, gl_code, count(*) AS lines, sum(amount)::bigint AS billed,
       sum(recognised)::bigint AS recognised, sum(amount - recognised)::bigint AS deferred
FROM shares GROUP BY currency, gl_code ORDER BY currency, gl_code
"""


async def deferred(pool: asyncpg.Pool, at: date) -> list[DeferredRow]:
    """Deferred revenue at the end of day ``at``, per currency and G/L code."""
    async with pool.acquire() as conn:
        # Invoicing refuses a currency without a minor unit, so no posted document has
        # one; were one stored by hand, its lines are left out and the warning logged.
        codes, units, _left_out = await _minor_units(
            conn, "SELECT DISTINCT currency FROM invoices WHERE state <> 'draft'", "deferred"
        )
        rows = await conn.fetch(_DEFERRED_SQL, at, codes, units)
    return [
        DeferredRow(
            r["currency"], r["gl_code"], r["lines"], r["billed"], r["recognised"], r["deferred"]
        )
        for r in rows
    ]


# The key of each grouping and which lines it reads (fixed text, never a caller's).
_KEYS = {
    "zone": ("COALESCE(l.zone, '')", "<> 'tax'"),
    "gl": ("COALESCE(c.gl_code, '')", "<> 'tax'"),
    "tax": ("COALESCE(l.tax_code, '')", "= 'tax'"),
}


def _revenue_sql(by: str) -> str:
    """The revenue statement of one grouping."""
    key, kinds = _KEYS[by]
    return f"""
SELECT i.currency, {key} AS key, count(*) AS lines, sum(l.amount)::bigint AS amount,
       sum(l.basis)::bigint AS basis
FROM invoices i
JOIN invoice_lines l ON l.invoice_id = i.id
LEFT JOIN invoice_lines o ON o.id = l.reverses_line
LEFT JOIN charges c ON c.id = l.charge_id
WHERE i.state <> 'draft' AND i.invoice_date >= $1 AND i.invoice_date < $2
  AND COALESCE(o.kind, l.kind) {kinds}
GROUP BY 1, 2 ORDER BY 1, 2
"""


async def revenue(pool: asyncpg.Pool, by: str, period: Month) -> list[RevenueRow]:
    """Revenue of ``period`` per currency and zone, G/L code or tax code (``by``)."""
    if by not in _KEYS:
        raise invalid("by", f"expected one of {', '.join(GROUPINGS)}")
    async with pool.acquire() as conn:
        rows = await conn.fetch(_revenue_sql(by), period.first, period.end)
    return [
        RevenueRow(
            r["currency"],
            r["key"],
            r["lines"],
            r["amount"],
            r["basis"] if by == "tax" else None,
        )
        for r in rows
    ]
