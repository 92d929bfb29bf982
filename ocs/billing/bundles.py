"""Bundle lines: free units, discounts, commitments, flat fees and resiliation fees.

A bundle (migration 0024, decision 0023) sits on a subscription and defines
indicators over the cycle's CDRs (SUM, AVG, MIN, MAX or COUNT of calls'
seconds, usage events' consumption or the amount debited, filtered by zone,
rate type or service) and rules over them. ``bundle_lines`` computes a chunk's
lines set-based: one query for the accounts' bundles, one for their rules, and
one aggregation over their CDRs (per-CDR free units by a window function,
indicators by GROUP BY), then each rule gives at most one line per
subscription bundle and invoice:

- **free** (``bundle_free``): the first ``allowance`` units of the cycle, in
  the order the CDRs stopped, are credited with what the real-time path
  debited for them; the CDR that crosses the allowance is credited pro rata
  (its amount x included units / its units, rounded half away from zero to
  the micro-unit in SQL's ``round(numeric)``);
- **discount** (``bundle_discount``): when the indicator reaches a tier's
  threshold, the highest tier reached takes its rate off the usage amount of
  the indicator's CDRs, net of the free credits already given on them;
- **commitment** (``bundle_commitment``): a minimum spend per cycle, prorated
  by the bundle's days in the cycle (``proration.prorate``), the shortfall of
  the indicator charged;
- **flat fee** (``bundle_fee``): per one-shot, monthly or yearly period from the
  bundle's start, prorated by its days in the period; billed upfront (the
  invoice billing advance charges of the period's start) or on the due date
  (the invoice whose arrears period holds the period's last day);
- **resiliation** (``resiliation``, from the bundle itself): the bundle ends
  (its own end, the subscription's end or cancellation) before its commitment
  term: a fixed fee, or the fee x months left, the month in progress counted as
  left; billed by the invoice whose arrears period holds the last day of service.

Every amount is net of tax (taxes apply after bundles), every line is rounded
once (``currency.round_line``) and moves money at posting (credits through the
ledger like any credit). Each line's description shows its basis and rate.
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

import asyncpg

from ocs.billing.currency import minor_unit_exponent, round_half_away, round_line
from ocs.billing.lines import Line, Targets
from ocs.billing.periods import Period, Unit, local_midnight, month_day
from ocs.billing.periods import Schedule as PeriodSchedule
from ocs.billing.proration import prorate
from ocs.money import MICRO

# A rate in millionths of a percent (as taxes' rates): 100% is 100_000_000.
FULL_RATE = 100_000_000

_BUNDLES_SQL = """
SELECT s.account_id, sb.id, b.id AS bundle_id, b.name, b.currency,
       GREATEST(s.start_date, COALESCE(sb.start_date, s.start_date)) AS start,
       LEAST(sb.end_date, s.end_date, s.cancelled_on) AS "end",
       b.commitment_months, b.resiliation, b.resiliation_fee
FROM subscriptions s
JOIN subscription_bundles sb ON sb.subscription_id = s.id
JOIN bundles b ON b.id = sb.bundle_id
WHERE s.account_id = ANY($1::text[]) AND s.status <> 'pending'
"""

_RULES_SQL = """
SELECT r.bundle_id, r.position, r.kind, r.description, r.indicator, r.allowance, r.amount,
       r.periodicity, r.timing, i.function, i.measure, i.unit,
       COALESCE((SELECT array_agg(t.threshold ORDER BY t.threshold) FROM bundle_discount_tiers t
                 WHERE (t.bundle_id, t.position) = (r.bundle_id, r.position)), '{}') AS thresholds,
       COALESCE((SELECT array_agg(t.rate ORDER BY t.threshold) FROM bundle_discount_tiers t
                 WHERE (t.bundle_id, t.position) = (r.bundle_id, r.position)), '{}') AS rates
FROM bundle_rules r
LEFT JOIN bundle_indicators i ON (i.bundle_id, i.name) = (r.bundle_id, r.indicator)
WHERE r.bundle_id = ANY($1::text[])
ORDER BY r.bundle_id, r.position
"""

# One pass over the bundles' CDRs. ``u`` is what a free allowance counts (1 per CDR
# for a count indicator), ``v`` the measured value. A free rule's running total of u
# in stop order gives each CDR's included units and credit (CDRs stopped at the same
# instant are ordered by entry id, so a recomputed draft is equal). Indicators sum
# ``charged`` net of the free credits on the same CDRs (capped at what each debited).
_USAGE_SQL = """
WITH sb AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[],
                         $5::timestamptz[]) AS t(sb_id, account_id, bundle_id, w_start, w_end)
), ev AS (
    SELECT sb.sb_id, sb.bundle_id, i.name AS indicator, c.entry_id, c.stopped_at, c.charged,
           CASE WHEN i.function = 'count' THEN 1
                WHEN i.measure = 'amount' THEN c.charged ELSE c.duration END AS u,
           CASE WHEN i.measure = 'amount' THEN c.charged ELSE c.duration END AS v
    FROM sb
    JOIN bundle_indicators i ON i.bundle_id = sb.bundle_id
    JOIN cdrs c ON c.account_id = sb.account_id
               AND c.stopped_at >= sb.w_start AND c.stopped_at < sb.w_end
    WHERE (i.measure = 'amount' OR (i.measure = 'consumption') = (c.termination_cause = 'usage'))
      AND (i.zone IS NULL OR c.zone = i.zone)
      AND (i.rate_type IS NULL OR c.rate_type = i.rate_type)
      AND (i.service IS NULL OR (c.termination_cause = 'usage' AND c.destination = i.service))
), running AS (
    SELECT e.sb_id, r.position, e.entry_id, e.charged, e.u, r.allowance,
           sum(e.u) OVER (PARTITION BY e.sb_id, r.position
                          ORDER BY e.stopped_at, e.entry_id) AS upto
    FROM ev e
    JOIN bundle_rules r ON (r.bundle_id, r.indicator) = (e.bundle_id, e.indicator)
                       AND r.kind = 'free'
), credited AS (
    SELECT sb_id, position, entry_id, charged,
           LEAST(u, GREATEST(allowance - (upto - u), 0)) AS included,
           CASE WHEN u = 0 THEN CASE WHEN upto < allowance THEN charged ELSE 0 END
                ELSE round(charged::numeric * LEAST(u, GREATEST(allowance - (upto - u), 0)) / u)
           END AS credit
    FROM running
), per_cdr AS (
    SELECT sb_id, entry_id, sum(credit) AS credit FROM credited GROUP BY sb_id, entry_id
)
SELECT 'indicator' AS what, e.sb_id, e.indicator, 0 AS position,
       count(*)::bigint AS events, sum(e.v)::bigint AS total,
       round(avg(e.v))::bigint AS average, min(e.v)::bigint AS low, max(e.v)::bigint AS high,
       (sum(e.charged) - sum(LEAST(COALESCE(p.credit, 0), e.charged)))::bigint AS net
FROM ev e LEFT JOIN per_cdr p ON (p.sb_id, p.entry_id) = (e.sb_id, e.entry_id)
GROUP BY e.sb_id, e.indicator
UNION ALL
SELECT 'free', sb_id, NULL, position, count(*) FILTER (WHERE included > 0)::bigint,
       sum(included)::bigint, NULL, NULL, NULL, sum(credit)::bigint
FROM credited
GROUP BY sb_id, position
"""


@dataclass(frozen=True, slots=True)
class BundleInvoice:
    """One invoice of a chunk: its account, currency, target periods and usage window."""

    account_id: str
    currency: str
    which: Targets
    window: tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class Held:
    """A bundle on one of an account's subscriptions, active over local days [start, end)."""

    id: int
    account_id: str
    bundle_id: str
    name: str
    currency: str
    start: date
    end: date | None
    commitment_months: int | None
    resiliation: str
    resiliation_fee: int


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a bundle, with its indicator's definition and its discount tiers."""

    bundle_id: str
    position: int
    kind: str
    description: str
    indicator: str | None
    allowance: int | None
    amount: int | None
    periodicity: str | None
    timing: str | None
    function: str | None
    measure: str | None
    unit: str
    tiers: tuple[tuple[int, int], ...]  # (threshold, rate), thresholds ascending


@dataclass(frozen=True, slots=True)
class Indicator:
    """An indicator's figures over the cycle: events, sum, average, min, max, net amount."""

    events: int
    total: int
    average: int | None
    low: int | None
    high: int | None
    net: int

    def value(self, function: str) -> int | None:
        """The indicator's value by its function (None: AVG/MIN/MAX of no events)."""
        return {
            "count": self.events,
            "sum": self.total,
            "avg": self.average,
            "min": self.low,
            "max": self.high,
        }[function]


NO_EVENTS = Indicator(0, 0, None, None, None, 0)


def add_months(day: date, months: int) -> date:
    """``day`` plus whole months, on the same day of the month or the month's last day."""
    index = day.year * 12 + day.month - 1 + months
    return month_day(index // 12, index % 12 + 1, day.day)


def months_left(start: date, term_months: int, end: date) -> int:
    """Months of a term from ``start`` not fully served by ``end`` (the month in progress
    counts as left): 12 months from Jan 15, ended on May 20, served 4 whole months -> 8."""
    served = 0
    while served < term_months and add_months(start, served + 1) <= end:
        served += 1
    return term_months - served


def money(micro: int, currency: str) -> str:
    """An amount for a description: the currency's decimals, more when not whole."""
    exponent = minor_unit_exponent(currency)
    text = f"{Decimal(micro) / MICRO:f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(exponent, "0")
    return f"{whole}.{fraction}" if fraction else whole


def percent(rate: int) -> str:
    """A rate in millionths of a percent as a percentage: ``10%``, ``12.5%``."""
    text = f"{Decimal(rate) / 1_000_000:f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "%"


def quantity_text(value: int, measure: str | None, function: str | None, unit: str) -> str:
    """An indicator value a customer reads: ``1000 min``, ``16 min 40 s``, ``250 MB``."""
    if function == "count":
        what = {"duration": "calls", "consumption": "events"}.get(measure or "", "transactions")
        return f"{value} {what}"
    if measure == "duration":
        minutes, seconds = divmod(value, 60)
        return f"{minutes} min" if seconds == 0 else f"{minutes} min {seconds} s"
    return f"{value} {unit}".rstrip()


def _line(
    kind: str,
    description: str,
    span: tuple[datetime, datetime | None],
    quantity: int,
    exact: int,
    cur: str,
) -> Line:
    """A bundle line, rounded once; it moves money at posting."""
    return Line(kind, description, span[0], span[1], quantity, exact, round_line(exact, cur), True)


def _active_window(held: Held, invoice: BundleInvoice) -> tuple[datetime, datetime] | None:
    """The part of the usage window the bundle is active in (None: not at all)."""
    zone = invoice.which.arrears.zone
    start = max(invoice.window[0], local_midnight(held.start, zone), key=datetime.timestamp)
    end = invoice.window[1]
    if held.end is not None:
        end = min(end, local_midnight(held.end, zone), key=datetime.timestamp)
    return (start, end) if start.timestamp() < end.timestamp() else None


def _active_days(held: Held, period: Period) -> int:
    """Local days of ``period`` the bundle is active in."""
    first = max(held.start, period.first_day)
    after = period.end_day if held.end is None else min(held.end, period.end_day)
    return max((after - first).days, 0)


def usage_rule_line(
    held: Held,
    rule: Rule,
    figures: Indicator,
    free: Indicator | None,
    invoice: BundleInvoice,
    span: tuple[datetime, datetime],
) -> Line | None:
    """The line a free, discount or commitment rule gives over one cycle, if any."""
    cur = invoice.currency
    label = f"{held.name}: {rule.description}"
    if rule.kind == "free":
        if free is None or free.total == 0:
            return None
        allowance = rule.allowance or 0
        used = quantity_text(free.total, rule.measure, rule.function, rule.unit)
        of = quantity_text(allowance, rule.measure, rule.function, rule.unit)
        return _line(
            "bundle_free",
            f"{label}: {used} of {of} included, {money(free.net, cur)} credited (100%)",
            span,
            free.total,
            -free.net,
            cur,
        )
    value = figures.value(rule.function or "sum")
    if rule.kind == "discount":
        reached = [(t, r) for t, r in rule.tiers if value is not None and value >= t]
        if value is None or not reached:
            return None
        threshold, rate = reached[-1]
        exact = -round_half_away(figures.net * rate, FULL_RATE)
        shown = quantity_text(value, rule.measure, rule.function, rule.unit)
        at = quantity_text(threshold, rule.measure, rule.function, rule.unit)
        return _line(
            "bundle_discount",
            f"{label}: {percent(rate)} off {money(figures.net, cur)} ({shown}, tier from {at})",
            span,
            value,
            exact,
            cur,
        )
    if rule.kind == "commitment":
        arrears = invoice.which.arrears
        days = _active_days(held, arrears)
        minimum = prorate(rule.amount or 0, days, arrears.days)
        spent = value or 0
        if spent >= minimum:
            return None
        share = "" if days == arrears.days else f" ({days}/{arrears.days} days)"
        return _line(
            "bundle_commitment",
            f"{label}: minimum {money(minimum, cur)}{share}, used {money(spent, cur)},"
            f" shortfall charged",
            span,
            spent,
            minimum - spent,
            cur,
        )
    return None


def _fee_periods(held: Held, rule: Rule, zone: str) -> PeriodSchedule | None:
    """A flat fee's periods from the bundle's start (None: one-shot)."""
    if rule.periodicity == "one_shot":
        return None
    months = 12 if rule.periodicity == "yearly" else 1
    return PeriodSchedule(Unit.MONTHS, months, held.start, zone)


def fee_lines(held: Held, rule: Rule, invoice: BundleInvoice) -> list[Line]:
    """The flat fee's lines on this invoice: periods starting in the advance target
    (upfront) or whose last day lies in the arrears target (due date)."""
    cur, amount = invoice.currency, rule.amount or 0
    label = f"{held.name}: {rule.description}"
    upfront = rule.timing == "upfront"
    target = invoice.which.advance if upfront else invoice.which.arrears
    zone = target.zone
    schedule = _fee_periods(held, rule, zone.key)
    if schedule is None:
        day = held.start
        if not target.first_day <= day < target.end_day:
            return []
        when = local_midnight(day, zone)
        return [_line("bundle_fee", f"{label} (one-off)", (when, None), 1, amount, cur)]
    found = []
    n = max(schedule.index_of_day(target.first_day) - 1, 0)
    while schedule.start_day(n) < target.end_day:
        part = schedule.period(n)
        n += 1
        day = part.first_day if upfront else part.last_day
        if not target.first_day <= day < target.end_day:
            continue
        days = _active_days(held, part)
        if days == 0:
            continue
        share = "" if days == part.days else f" ({days}/{part.days} days)"
        exact = prorate(amount, days, part.days)
        found.append(
            _line(
                "bundle_fee",
                f"{label} {part.label}{share}, {money(amount, cur)} per {rule.periodicity}"[:200],
                (part.start, part.end),
                1,
                exact,
                cur,
            )
        )
    return found


def resiliation_line(held: Held, invoice: BundleInvoice) -> Line | None:
    """The early-termination fee, on the invoice whose arrears period holds the last day."""
    if held.resiliation == "none" or held.commitment_months is None or held.end is None:
        return None
    arrears = invoice.which.arrears
    term_end = add_months(held.start, held.commitment_months)
    last = held.end - timedelta(days=1)
    if held.end >= term_end or not arrears.first_day <= last < arrears.end_day:
        return None
    cur, fee = invoice.currency, held.resiliation_fee
    zone = arrears.zone
    span = (local_midnight(held.end, zone), local_midnight(term_end, zone))
    if held.resiliation == "fixed":
        return _line(
            "resiliation",
            f"{held.name}: early termination before {term_end}, fixed fee {money(fee, cur)}",
            span,
            1,
            fee,
            cur,
        )
    left = months_left(held.start, held.commitment_months, held.end)
    return _line(
        "resiliation",
        f"{held.name}: early termination, {left} of {held.commitment_months} months left"
        f" x {money(fee, cur)}",
        span,
        left,
        left * fee,
        cur,
    )


async def bundle_lines(
    conn: asyncpg.Connection, invoices: Sequence[BundleInvoice]
) -> dict[str, list[Line]]:
    """Account -> its bundle lines on its invoice, for a chunk's invoices; reads only.

    Lines come per subscription bundle (by id), its rules in order, then its
    resiliation fee. Bundles in a currency other than the invoice's give none.
    """
    by_account = {i.account_id: i for i in invoices}
    held = [
        Held(
            r["id"],
            r["account_id"],
            r["bundle_id"],
            r["name"],
            r["currency"],
            r["start"],
            r["end"],
            r["commitment_months"],
            r["resiliation"],
            r["resiliation_fee"],
        )
        for r in await conn.fetch(_BUNDLES_SQL, sorted(by_account))
    ]
    held = [h for h in held if h.currency == by_account[h.account_id].currency]
    if not held:
        return {}
    rules: dict[str, list[Rule]] = defaultdict(list)
    for r in await conn.fetch(_RULES_SQL, sorted({h.bundle_id for h in held})):
        rules[r["bundle_id"]].append(
            Rule(
                r["bundle_id"],
                r["position"],
                r["kind"],
                r["description"],
                r["indicator"],
                r["allowance"],
                r["amount"],
                r["periodicity"],
                r["timing"],
                r["function"],
                r["measure"],
                r["unit"] or "",
                tuple(zip(r["thresholds"], r["rates"], strict=True)),
            )
        )
    spans = {h.id: _active_window(h, by_account[h.account_id]) for h in held}
    active = [h for h in held if spans[h.id] is not None]
    windows = [w for h in active if (w := spans[h.id]) is not None]
    figures: dict[tuple[int, str], Indicator] = {}
    free: dict[tuple[int, int], Indicator] = {}
    if active:
        rows = await conn.fetch(
            _USAGE_SQL,
            [h.id for h in active],
            [h.account_id for h in active],
            [h.bundle_id for h in active],
            [w[0] for w in windows],
            [w[1] for w in windows],
        )
        for r in rows:
            found = Indicator(
                r["events"], r["total"] or 0, r["average"], r["low"], r["high"], r["net"] or 0
            )
            if r["what"] == "free":
                free[r["sb_id"], r["position"]] = found
            else:
                figures[r["sb_id"], r["indicator"]] = found
    lines: dict[str, list[Line]] = defaultdict(list)
    for h in sorted(held, key=lambda h: h.id):
        invoice = by_account[h.account_id]
        span = spans[h.id]
        for rule in rules.get(h.bundle_id, []):
            if rule.kind == "flat_fee":
                lines[h.account_id] += fee_lines(h, rule, invoice)
                continue
            if span is None and rule.kind != "commitment":
                continue
            line = usage_rule_line(
                h,
                rule,
                figures.get((h.id, rule.indicator or ""), NO_EVENTS),
                free.get((h.id, rule.position)),
                invoice,
                span or invoice.window,
            )
            if line is not None:
                lines[h.account_id].append(line)
        if (fee := resiliation_line(h, invoice)) is not None:
            lines[h.account_id].append(fee)
    return dict(lines)
