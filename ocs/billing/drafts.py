"""Draft invoices: the lines a group of accounts should have for one period, written whole.

Kill Bill style recomputation: a draft is never patched. A run (or a rerun)
loads what the accounts have, with one query for their charge items and one
set-based aggregation of their CDRs (GROUP BY account, zone, direction), asks
``lines`` which lines follow, then in one transaction creates any missing
invoice (the unique key on account and period makes that idempotent), locks
the accounts' invoices, deletes the drafts' lines and writes them again.
Posted and void invoices are left as they are. The same inputs give the same
lines and totals, so repeating a run changes nothing.

``preview`` computes one account's invoice for the period holding an instant
without storing anything (a dry run).

After the charge, usage and reporting lines come the bundle lines
(``bundles``: free units, discounts, commitments, fees), the plan's surcharges
(``surcharges``) and, when the run calculates taxes, the tax lines
(``taxes``: per tax code, rounded once). A run with taxes off writes untaxed
drafts (``taxes_calculated`` false); ``taxing.tax_drafts`` adds their tax lines
at posting, from the stored lines, by the same rule.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg

from ocs.billing.bundles import BundleInvoice, bundle_lines
from ocs.billing.cycles import UNSCHEDULED, PlanBilling, schedule
from ocs.billing.lines import (
    Billed,
    Item,
    Line,
    Targets,
    advance_window_start,
    invoice_lines,
    targets,
)
from ocs.billing.periods import Period, Schedule, Unit
from ocs.billing.realtime import cdr_totals, realtime_lines
from ocs.billing.statement import write_statements
from ocs.billing.surcharges import load_surcharges, surcharge_lines
from ocs.billing.taxes import (
    exemptions,
    load_rules,
    tax_lines,
)
from ocs.errors import OcsError, Reason

_ITEMS_SQL = """
SELECT s.account_id, c.id AS charge_id, sc.id AS item_id, c.name, c.amount, sc.quantity,
       c.kind, c.cadence, c.every_days, c.timing,
       GREATEST(s.start_date, sc.start_date) AS start,
       LEAST(sc.end_date, s.end_date, s.cancelled_on) AS "end", NULL::text AS number
FROM subscriptions s
JOIN subscription_charges sc ON sc.subscription_id = s.id
JOIN charges c ON c.id = sc.charge_id
WHERE s.account_id = ANY($1::text[]) AND s.status <> 'pending'
  AND ($2::timestamptz IS NULL OR sc.created_at <= $2)
UNION ALL
SELECT s.account_id, c.id, NULL, c.name, c.amount, 1,
       c.kind, c.cadence, c.every_days, c.timing,
       s.start_date, LEAST(s.end_date, s.cancelled_on), NULL
FROM subscriptions s
JOIN charges c ON c.plan_id = s.plan_id AND c.kind <> 'counter'
WHERE s.account_id = ANY($1::text[]) AND s.status <> 'pending'
  AND ($2::timestamptz IS NULL OR c.created_at <= $2)
UNION ALL
SELECT n.account_id, c.id, NULL, c.name, c.amount, 1,
       c.kind, c.cadence, c.every_days, c.timing, n.start_date, n.end_date, n.number
FROM account_numbers n
JOIN charges c ON c.id = n.charge_id
WHERE n.account_id = ANY($1::text[]) AND ($2::timestamptz IS NULL OR n.created_at <= $2)
"""

# The accounts with an invoice before this one (their billing has begun).
_EARLIER_SQL = """
SELECT DISTINCT account_id FROM invoices
WHERE account_id = ANY($1::text[]) AND kind = 'invoice' AND state <> 'void' AND period_start < $2
"""

# What earlier invoices billed of the charges, from the first charge period to reconcile.
_BILLED_SQL = """
SELECT i.account_id, l.charge_id, l.item_id, l.number, l.period_start, l.period_end,
       l.exact_amount < 0 AS credit
FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id
WHERE i.account_id = ANY($1::text[]) AND i.kind = 'invoice' AND i.state <> 'void'
  AND i.period_start < $2 AND l.charge_id IS NOT NULL AND l.moves_money
  AND l.kind IN ('recurring', 'proration') AND l.period_start >= $3
"""

LINE_COLUMNS = (
    "invoice_id",
    "position",
    "kind",
    "description",
    "period_start",
    "period_end",
    "quantity",
    "amount",
    "exact_amount",
    "moves_money",
    "charge_id",
    "item_id",
    "zone",
    "direction",
    "calls",
    "seconds",
    "billed_seconds",
    "first_cdr",
    "last_cdr",
    "number",
    "counter_id",
    "bundle_seconds",
    "paid_seconds",
    "billed_quantity",
    "source_entry",
    "tax_code",
    "basis",
    "rate",
    "rate_type",
)


# An invoice's subtotal (every line but taxes), tax total and total, from its lines.
TOTALS_SQL = (
    "UPDATE invoices i SET subtotal = COALESCE(t.net, 0), tax_total = COALESCE(t.tax, 0),"
    " total = COALESCE(t.net, 0) + COALESCE(t.tax, 0), tax_error = NULL"
)
TOTALS_JOIN = (
    " LEFT JOIN (SELECT invoice_id, sum(amount) FILTER (WHERE kind <> 'tax') AS net,"
    "   sum(amount) FILTER (WHERE kind = 'tax') AS tax FROM invoice_lines"
    "   WHERE invoice_id = ANY($1::bigint[]) GROUP BY invoice_id) t ON t.invoice_id = d.id"
    " WHERE i.id = d.id"
)


@dataclass(frozen=True, slots=True)
class Group:
    """Accounts of one plan sharing one invoice period (one chunk of a run)."""

    billing: PlanBilling
    anchor: date | None  # a subscription-date cycle's start date, else None
    period: Period
    account_ids: list[str]

    @property
    def cycle(self) -> Schedule:
        """The plan's (or, for the subscription-date cycle, the accounts') schedule.

        A manual or on-demand plan has none: its period is named by an operator
        or a session, so the schedule is that period repeated (every as many
        days from its first day), and its recurring charges count from there.
        """
        if self.billing.cycle in UNSCHEDULED:
            return Schedule(
                Unit.DAYS, max(1, self.period.days), self.period.first_day, self.billing.time_zone
            )
        return schedule(self.billing, self.anchor)


@dataclass(frozen=True, slots=True)
class Options:
    """A run's settings that shape a draft."""

    invoice_date: date
    charge_cutoff: datetime | None = None
    usage_cutoff: datetime | None = None
    calculate_taxes: bool = True
    run_id: int | None = None


@dataclass(frozen=True, slots=True)
class Written:
    """What writing a group's drafts did: drafts (re)computed, invoices left as posted/void."""

    drafts: int
    final: int


def usage_window(which: Targets, usage_cutoff: datetime | None) -> tuple[datetime, datetime]:
    """[start, end) of the usage an invoice bills: its arrears period, up to the cut-off."""
    start, end = which.arrears.start, which.arrears.end
    if usage_cutoff is not None and usage_cutoff.astimezone(UTC) < end.astimezone(UTC):
        end = max(usage_cutoff.astimezone(start.tzinfo), start)
    return start, end


async def billed_spans(
    conn: asyncpg.Connection, group: Group, which: Targets, items: dict[str, list[Item]]
) -> dict[str, dict[tuple[str, int | None, str | None], list[Billed]]]:
    """Account -> what its earlier invoices billed of each charge, for accounts that have one.

    An account missing from the answer has no earlier invoice.
    """
    ids = group.account_ids
    earlier = {r["account_id"] for r in await conn.fetch(_EARLIER_SQL, ids, group.period.start)}
    found: dict[str, dict[tuple[str, int | None, str | None], list[Billed]]] = {
        a: {} for a in earlier
    }
    starts = [
        start
        for account in earlier
        if (start := advance_window_start(items.get(account, []), group.cycle, which))
    ]
    if not starts:
        return found
    zone = group.cycle.zone
    since = min(starts, key=lambda start: start.timestamp())
    for r in await conn.fetch(_BILLED_SQL, sorted(earlier), group.period.start, since):
        key = (r["charge_id"], r["item_id"], r["number"])
        spans = found[r["account_id"]].setdefault(key, [])
        spans.append(
            Billed(
                r["period_start"].astimezone(zone).date(),
                r["period_end"].astimezone(zone).date(),
                r["credit"],
            )
        )
    return found


async def compute(
    conn: asyncpg.Connection, group: Group, options: Options
) -> dict[str, tuple[str, list[Line]]]:
    """Account -> (currency, lines) for every account of the group; reads only."""
    which = targets(group.cycle, group.period, group.billing.invoice_timing)
    window = usage_window(which, options.usage_cutoff)
    ids = group.account_ids
    currencies = {
        r["id"]: r["currency"]
        for r in await conn.fetch("SELECT id, currency FROM accounts WHERE id = ANY($1)", ids)
    }
    items: dict[str, list[Item]] = defaultdict(list)
    for r in await conn.fetch(_ITEMS_SQL, ids, options.charge_cutoff):
        items[r["account_id"]].append(
            Item(
                r["charge_id"],
                r["item_id"],
                r["name"],
                r["amount"],
                r["quantity"],
                r["kind"],
                r["cadence"],
                r["every_days"],
                r["timing"],
                r["start"],
                r["end"],
                r["number"],
            )
        )
    billed = await billed_spans(conn, group, which, items)
    # One read of the accounts' CDRs for the usage lines and the real-time path's lines.
    totals = await cdr_totals(conn, ids, window)
    reported = await realtime_lines(conn, currencies, window, totals)
    bundled = await bundle_lines(
        conn, [BundleInvoice(a, c, which, window) for a, c in sorted(currencies.items())]
    )
    surcharges = await load_surcharges(conn, group.billing.plan_id)
    rules = await load_rules(conn, group.billing.plan_id) if options.calculate_taxes else None
    exempt = await exemptions(conn, ids) if rules is not None else {}
    found: dict[str, tuple[str, list[Line]]] = {}
    for account, currency in sorted(currencies.items()):
        lines = invoice_lines(
            items[account],
            totals.usage(account),
            group.cycle,
            which,
            currency,
            window,
            billed.get(account),
        ) + reported.get(account, [])
        # Bundles, discounts and commitments come before taxes: taxes are net of them.
        lines += bundled.get(account, [])
        lines += surcharge_lines(lines, surcharges, currency)
        if rules is not None:
            lines += tax_lines(lines, rules, currency, options.invoice_date, exempt.get(account))
        found[account] = (currency, lines)
    return found


def line_records(invoice_id: int, found: list[Line], first: int = 1) -> list[tuple[object, ...]]:
    """COPY records (``LINE_COLUMNS``) of one invoice's lines, positions from ``first``."""
    return [
        (
            invoice_id,
            position,
            line.kind,
            line.description,
            line.period_start,
            line.period_end,
            line.quantity,
            line.amount,
            line.exact,
            line.moves_money,
            line.charge_id,
            line.item_id,
            line.zone,
            line.direction,
            line.calls,
            line.seconds,
            line.billed_seconds,
            line.first_cdr,
            line.last_cdr,
            line.number,
            line.counter_id,
            line.bundle_seconds,
            line.paid_seconds,
            line.billed_quantity,
            line.source_entry,
            line.tax_code,
            line.basis,
            line.rate,
            line.rate_type,
        )
        for position, line in enumerate(found, start=first)
    ]


async def write(conn: asyncpg.Connection, group: Group, options: Options) -> Written:
    """Create or recompute the group's drafts; call inside a transaction.

    The totals are summed here from the lines about to be written (as
    ``TOTALS_SQL`` sums them from the stored lines): a new invoice is
    inserted with them, an existing draft is updated with them, so a first
    run writes each invoice row once instead of inserting then updating it.
    """
    computed = await compute(conn, group, options)
    accounts = list(computed)
    period = group.period
    nets: list[int] = []
    taxes: list[int] = []
    for account in accounts:
        net = tax = 0
        for line in computed[account][1]:
            if line.kind == "tax":
                tax += line.amount
            else:
                net += line.amount
        nets.append(net)
        taxes.append(tax)
    inserted = await conn.fetch(
        "INSERT INTO invoices (account_id, plan_id, period_start, period_end, period_label,"
        " currency, invoice_date, issuer, message, run_id, taxes_calculated,"
        " subtotal, tax_total, total)"
        " SELECT a, $2, $3, $4, $5, c, $6, $7, $8, $9, $10, n, t, n + t"
        " FROM unnest($1::text[], $11::text[], $12::bigint[], $13::bigint[]) AS u(a, c, n, t)"
        " ORDER BY a"
        " ON CONFLICT (account_id, period_start) WHERE kind = 'invoice' DO NOTHING"
        " RETURNING id",
        accounts,
        group.billing.plan_id,
        period.start,
        period.end,
        period.label,
        options.invoice_date,
        group.billing.issuer,
        group.billing.invoice_message,
        options.run_id,
        options.calculate_taxes,
        [computed[a][0] for a in accounts],
        nets,
        taxes,
    )
    new = {r["id"] for r in inserted}
    # Locked in account order, as inserted: two runs of one period wait, never deadlock.
    rows = await conn.fetch(
        "SELECT id, account_id, state FROM invoices WHERE kind = 'invoice'"
        " AND account_id = ANY($1::text[]) AND period_start = $2 ORDER BY account_id FOR UPDATE",
        accounts,
        period.start,
    )
    drafts = {r["account_id"]: r["id"] for r in rows if r["state"] == "draft"}
    draft_ids = list(drafts.values())
    # Drafts of an earlier run: their lines are replaced, their totals and settings updated.
    index = {account: n for n, account in enumerate(accounts)}
    earlier = [(a, i) for a, i in sorted(drafts.items()) if i not in new]
    if earlier:
        await conn.execute(
            "DELETE FROM invoice_lines WHERE invoice_id = ANY($1::bigint[])",
            [i for _, i in earlier],
        )
    records = [
        record
        for account, invoice_id in sorted(drafts.items())
        for record in line_records(invoice_id, computed[account][1])
    ]
    if records:
        await conn.copy_records_to_table("invoice_lines", records=records, columns=LINE_COLUMNS)
    if earlier:
        await conn.execute(
            "UPDATE invoices i SET subtotal = d.net, tax_total = d.tax, total = d.net + d.tax,"
            " tax_error = NULL, invoice_date = $4, run_id = $5, taxes_calculated = $6"
            " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS d(id, net, tax)"
            " WHERE i.id = d.id",
            [i for _, i in earlier],
            [nets[index[a]] for a, _ in earlier],
            [taxes[index[a]] for a, _ in earlier],
            options.invoice_date,
            options.run_id,
            options.calculate_taxes,
        )
    which = targets(group.cycle, group.period, group.billing.invoice_timing)
    await write_statements(conn, draft_ids, usage_window(which, options.usage_cutoff))
    return Written(drafts=len(drafts), final=len(rows) - len(drafts))


async def account_group(
    conn: asyncpg.Connection, account_id: str, at: datetime
) -> tuple[Group, str]:
    """The one-account group of the period holding ``at`` (and the account's plan)."""
    row = await conn.fetchrow(
        "SELECT a.plan_id, a.created_at, b.plan_id AS billed,"
        " (SELECT min(start_date) FROM subscriptions s"
        "   WHERE s.account_id = a.id AND s.plan_id = a.plan_id) AS start"
        " FROM accounts a LEFT JOIN plan_billing b ON b.plan_id = a.plan_id WHERE a.id = $1",
        account_id,
    )
    if row is None:
        raise OcsError(Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist")
    if row["billed"] is None:
        raise OcsError(Reason.NOT_FOUND, f"plan {row['plan_id']!r} has no billing settings")
    billing = PlanBilling.from_row(
        await conn.fetchrow("SELECT * FROM plan_billing WHERE plan_id = $1", row["plan_id"])
    )
    anchor = None
    if billing.cycle == "subscription_date":
        anchor = row["start"] or row["created_at"].astimezone(schedule(billing).zone).date()
    try:
        period = schedule(billing, anchor).period_containing(at)
    except ValueError as error:
        raise OcsError(Reason.INVALID_FIELD, str(error)) from None
    return Group(billing, anchor, period, [account_id]), row["plan_id"]


async def preview(
    pool: asyncpg.Pool, account_id: str, at: datetime | None = None
) -> tuple[Period, str, list[Line]]:
    """A dry run: the period holding ``at`` (now), the currency and the lines; stores nothing."""
    when = at or datetime.now(UTC)
    async with pool.acquire() as conn:
        group, _plan = await account_group(conn, account_id, when)
        computed = await compute(conn, group, Options(invoice_date=when.date()))
    currency, found = computed[account_id]
    return group.period, currency, found
