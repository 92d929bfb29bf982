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
(``taxes``: per tax code, rounded once). A run with taxes off, and any run for
a plan taxed by an external engine (``taxes.taxed_at_drafting``), writes
untaxed drafts (``taxes_calculated`` false); ``taxing.tax_drafts`` adds their
tax lines at posting, from the stored lines, by the plan's rules or its engine.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg

from ocs.billing.anchors import account_anchor, latest_invoices
from ocs.billing.bundles import BundleInvoice, bundle_lines
from ocs.billing.cycles import UNSCHEDULED, PlanBilling, schedule
from ocs.billing.late_usage import Seen, late_usage
from ocs.billing.lines import (
    Billed,
    BilledKey,
    Item,
    Line,
    Targets,
    arrears_first_day,
    billed_window_start,
    cut_short_window_start,
    invoice_lines,
    late_window_start,
    targets,
)
from ocs.billing.periods import Period, Schedule, Unit
from ocs.billing.realtime import cdr_totals, realtime_lines
from ocs.billing.statement import statement_figures, statement_of
from ocs.billing.surcharges import load_surcharges, surcharge_lines
from ocs.billing.taxes import (
    exemptions,
    load_rules,
    tax_lines,
    taxed_at_drafting,
)
from ocs.errors import OcsError, Reason

# Each item with its source, the instance it bills (``lines.Item``): the subscription, or
# the number's assignment; and when its end was recorded, the latest of the rows its end
# is the least of (migration 0044; GREATEST skips a NULL, an end recorded before it); and
# when it came to exist (``lines.recorded_late``): a subscription charge given its own
# start, its rows' latest ``created_at``; one without (from the subscription's start),
# and a plan's charge, the subscription's. A charge added to a plan, or an add-on with
# no start date, applies from the invoice that first sees it, never billed back to the
# subscription's start; a charge dated back, or a subscription made late, is.
_ITEMS_SQL = """
SELECT s.account_id, c.id AS charge_id, sc.id AS item_id, c.name, c.amount, sc.quantity,
       c.kind, c.cadence, c.every_days, c.timing,
       GREATEST(s.start_date, sc.start_date) AS start,
       LEAST(sc.end_date, s.end_date, s.cancelled_on) AS "end", NULL::text AS number,
       s.id AS subscription_id, NULL::bigint AS account_number_id,
       GREATEST(sc.end_recorded_at, s.end_recorded_at) AS end_recorded,
       CASE WHEN sc.start_date IS NULL THEN s.created_at
            ELSE GREATEST(sc.created_at, s.created_at) END AS recorded
FROM subscriptions s
JOIN subscription_charges sc ON sc.subscription_id = s.id
JOIN charges c ON c.id = sc.charge_id
WHERE s.account_id = ANY($1::text[]) AND s.status <> 'pending'
  AND ($2::timestamptz IS NULL OR sc.created_at <= $2)
UNION ALL
SELECT s.account_id, c.id, NULL, c.name, c.amount, 1,
       c.kind, c.cadence, c.every_days, c.timing,
       s.start_date, LEAST(s.end_date, s.cancelled_on), NULL, s.id, NULL, s.end_recorded_at,
       s.created_at
FROM subscriptions s
JOIN charges c ON c.plan_id = s.plan_id AND c.kind NOT IN ('counter', 'triggered')
WHERE s.account_id = ANY($1::text[]) AND s.status <> 'pending'
  AND ($2::timestamptz IS NULL OR c.created_at <= $2)
UNION ALL
SELECT n.account_id, c.id, NULL, c.name, c.amount, 1,
       c.kind, c.cadence, c.every_days, c.timing, n.start_date, n.end_date, n.number,
       NULL, n.id, n.end_recorded_at, n.created_at
FROM account_numbers n
JOIN charges c ON c.id = n.charge_id
WHERE n.account_id = ANY($1::text[]) AND ($2::timestamptz IS NULL OR n.created_at <= $2)
"""

# The accounts with an invoice before this one (their billing has begun), and when the
# newest of them was made: an end recorded after it may not have been seen (0046). And
# until when the invoice of the latest earlier period read the items, void or not (what
# a void invoice billed was seen, and is not billed again behind the operator's back):
# its run's charge cut-off, or its making where that came first or there was none (an
# item recorded after it, ``lines.recorded_late``). A draft recomputed later may have
# seen more: reading its lines finds that.
_EARLIER_SQL = """
SELECT i.account_id,
       min(i.period_start) FILTER (WHERE i.state <> 'void') AS began,
       max(i.created_at) FILTER (WHERE i.state <> 'void') AS newest,
       (array_agg(LEAST(i.created_at, COALESCE(r.charge_cutoff, i.created_at))
                  ORDER BY i.period_start DESC))[1] AS seen
FROM invoices i LEFT JOIN invoice_runs r ON r.id = i.run_id
WHERE i.account_id = ANY($1::text[]) AND i.kind = 'invoice' AND i.period_start < $2
GROUP BY i.account_id
"""

# What earlier invoices billed of the charges, from the first charge period to reconcile;
# each line with its source (none for a line written before migration 0043). A one-time
# charge's line has no end: it bills its day. Void invoices' lines too, marked: what they
# charged is not charged again (``lines._voided_days``, decision 0046).
_BILLED_SQL = """
SELECT i.account_id, l.charge_id, l.item_id, l.number, l.subscription_id,
       l.account_number_id, l.period_start, l.period_end, l.exact_amount < 0 AS credit,
       i.state = 'void' AS void
FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id
WHERE i.account_id = ANY($1::text[]) AND i.kind = 'invoice'
  AND i.period_start < $2 AND l.charge_id IS NOT NULL AND l.moves_money
  AND l.kind IN ('recurring', 'proration', 'one_time') AND l.period_start >= $3
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
    "subscription_id",
    "account_number_id",
    "subscription_bundle_id",
    "bundle_rule_position",
    "adjustment",
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


# A group's new drafts, whole: totals and statement with them (``write``). Column arrays
# $1-$12 (account, currency, subtotal, tax total, then the statement's figures from
# ``prepaid``), shared values from $13 (``_invoice_settings``), then each account's
# ``late_after_snapshot`` as $25 (decision 0050) and its statement's ``ledger_before``
# as $26 (migration 0051), and the group's cycle anchor as $27 (a subscription-date
# account's, which its invoices fix: ``anchors``; migration 0058); then when the CDRs'
# snapshot was read ($28), and each account's ``late_after_system`` and ``late_after_at``
# ($29, $30; the snapshot's own cluster is this one: migration 0065). An invoice that
# exists is left alone (ON CONFLICT): ``write`` locks and updates it if it is a draft.
_INSERT_SQL = """
INSERT INTO invoices (account_id, currency, subtotal, tax_total, total, prepaid,
    previous_balance, payments, debited, posting_charges, new_charges, closing_balance,
    amount_due, plan_id, period_start, period_end, period_label, issuer, message,
    invoice_date, run_id, taxes_calculated, window_start, window_end, usage_snapshot,
    late_after_snapshot, ledger_before, cycle_anchor, usage_snapshot_system,
    usage_snapshot_at, late_after_system, late_after_at)
SELECT a, c, n, t, n + t, pp, pb, pay, deb, pc, nc, cb, due,
       $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24::text::pg_snapshot,
       la::pg_snapshot, lb, $27::date, (SELECT system_identifier FROM pg_control_system()),
       $28::timestamptz, las, lat
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::boolean[],
            $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
            $11::bigint[], $12::bigint[], $25::text[], $26::bigint[], $29::bigint[],
            $30::timestamptz[])
     AS u(a, c, n, t, pp, pb, pay, deb, pc, nc, cb, due, la, lb, las, lat)
ORDER BY a
ON CONFLICT (account_id, period_start) WHERE kind = 'invoice' DO NOTHING
RETURNING id, account_id
"""

# Drafts of an earlier run, recomputed: ids $1, then the arrays of ``_INSERT_SQL`` from $3
# (subtotal) to $12 as $2-$11, then invoice date, run, taxes switch, window and the CDRs'
# snapshot ($12-$17), then each draft's ``late_after_snapshot`` ($18) and ``ledger_before``
# ($19), and the group's cycle anchor ($20); then as ``_INSERT_SQL``'s last three ($21-$23).
_UPDATE_SQL = """
UPDATE invoices i SET subtotal = d.n, tax_total = d.t, total = d.n + d.t, tax_error = NULL,
    prepaid = d.pp, previous_balance = d.pb, payments = d.pay, debited = d.deb,
    posting_charges = d.pc, new_charges = d.nc, closing_balance = d.cb, amount_due = d.due,
    invoice_date = $12, run_id = $13, taxes_calculated = $14, window_start = $15,
    window_end = $16, usage_snapshot = $17::text::pg_snapshot,
    late_after_snapshot = d.la::pg_snapshot, ledger_before = d.lb, cycle_anchor = $20::date,
    usage_snapshot_system = (SELECT system_identifier FROM pg_control_system()),
    usage_snapshot_at = $21::timestamptz, late_after_system = d.las, late_after_at = d.lat
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[], $5::bigint[],
            $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[],
            $11::bigint[], $18::text[], $19::bigint[], $22::bigint[], $23::timestamptz[])
     AS d(id, n, t, pp, pb, pay, deb, pc, nc, cb, due, la, lb, las, lat)
WHERE i.id = d.id
"""


# Of these accounts, those with an invoice after the period ($2).
_LATER_SQL = """
SELECT DISTINCT account_id FROM invoices
WHERE account_id = ANY($1::text[]) AND kind = 'invoice' AND period_start > $2
"""


@dataclass(frozen=True, slots=True)
class Group:
    """Accounts of one plan sharing one invoice period (one chunk of a run)."""

    billing: PlanBilling
    anchor: date | None  # a subscription-date cycle's start date, else None
    period: Period
    account_ids: list[str]

    @property
    def named(self) -> bool:
        """Whether an operator or a session named the period (a manual or on-demand
        plan): no later invoice continues its charge periods (``lines.Targets``)."""
        return self.billing.cycle in UNSCHEDULED

    @property
    def cycle(self) -> Schedule:
        """The plan's (or, for the subscription-date cycle, the accounts') schedule.

        A manual or on-demand plan has none: its period is named by an operator
        or a session, so the schedule is that period repeated (every as many
        days from its first day), and its recurring charges count from there.
        """
        if self.named:
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


@dataclass(frozen=True, slots=True)
class Earlier:
    """What an account's earlier invoices billed, for the accounts that have one.

    ``billed``: account -> what those that stand billed of each charge
    (``lines.Billed``); ``voided``: account -> what its void ones charged, for every
    account with one (one whose only earlier invoices are void too: it is in no other);
    ``began``: account -> the first day its first invoice billed arrears for (local);
    ``newest``: account -> when its newest earlier invoice was made (``lines.cut_short``);
    ``seen``: account -> until when its earlier invoices read the items
    (``lines.recorded_late``). An account missing from them has no earlier invoice.
    """

    billed: dict[str, dict[BilledKey, list[Billed]]]
    voided: dict[str, dict[BilledKey, list[Billed]]]
    began: dict[str, date]
    newest: dict[str, datetime]
    seen: dict[str, datetime]


async def billed_spans(
    conn: asyncpg.Connection, group: Group, which: Targets, items: dict[str, list[Item]]
) -> Earlier:
    """What the group's accounts' earlier invoices billed, from the first charge period
    that ``lines`` reconciles or settles (``billed_window_start``).

    An account holding an item whose end was recorded after its newest earlier invoice
    (``lines.cut_short``, decision 0046), or an item recorded after its earlier invoices
    read the items (``lines.recorded_late``, decision 0043), is read in a second query,
    from the charge period holding that end or the item's first billable day: the
    window of every other account is not widened for it, and a run without such an
    account makes the one query it made before. The lines of void invoices come in the
    same reads, apart (``Earlier.voided``); an account whose earlier invoices are all
    void has its billing begin with this invoice, and its void lines read over the
    window it would have (``billed_window_start``).
    """
    ids = group.account_ids
    cycle = group.cycle
    zone = cycle.zone
    timing = group.billing.invoice_timing
    began: dict[str, date] = {}
    newest: dict[str, datetime] = {}
    seen: dict[str, datetime] = {}
    void_only: list[str] = []
    for r in await conn.fetch(_EARLIER_SQL, ids, group.period.start):
        if r["began"] is None:
            # Only void invoices: its billing begins with this invoice, and what they
            # charged is not charged again.
            void_only.append(r["account_id"])
            continue
        began[r["account_id"]] = arrears_first_day(
            cycle, r["began"].astimezone(zone).date(), timing
        )
        newest[r["account_id"]] = r["newest"]
        seen[r["account_id"]] = r["seen"]
    found: dict[str, dict[BilledKey, list[Billed]]] = {a: {} for a in began}
    voided: dict[str, dict[BilledKey, list[Billed]]] = {}
    # Account -> from when its lines are read (None: not at all).
    windows: dict[str, datetime | None] = {
        account: billed_window_start(items.get(account, []), cycle, which)
        for account in [*began, *void_only]
    }
    late: dict[str, datetime | None] = {}
    for account in began:
        held = items.get(account, [])
        cut = cut_short_window_start(held, cycle, which, newest[account])
        recorded = late_window_start(held, cycle, which, seen[account], began[account])
        if recorded is not None:
            cut = _earliest(cut, recorded)
        if cut is not None:
            late[account] = _earliest(windows.pop(account), cut)
    for accounts in (windows, late):
        starts = [start for start in accounts.values() if start is not None]
        if not starts:
            continue
        since = min(starts, key=lambda start: start.timestamp())
        for r in await conn.fetch(_BILLED_SQL, sorted(accounts), group.period.start, since):
            key = (
                r["charge_id"],
                r["item_id"],
                r["number"],
                r["subscription_id"],
                r["account_number_id"],
            )
            lines = voided.setdefault(r["account_id"], {}) if r["void"] else found[r["account_id"]]
            spans = lines.setdefault(key, [])
            first = r["period_start"].astimezone(zone).date()
            end = r["period_end"]
            spans.append(
                Billed(
                    first,
                    first + timedelta(days=1) if end is None else end.astimezone(zone).date(),
                    r["credit"],
                )
            )
    return Earlier(found, voided, began, newest, seen)


def _earliest(first: datetime | None, second: datetime) -> datetime:
    """The earlier of two instants, the first possibly absent."""
    return second if first is None or second.timestamp() < first.timestamp() else first


@dataclass(frozen=True, slots=True)
class Computed:
    """A group's drafts as computed: account -> (currency, lines), the snapshot its CDRs
    were read in (``invoices.usage_snapshot``) and when, and per account what the earlier
    invoice its late usage was compared with saw (``invoices.late_after_snapshot``;
    decision 0050)."""

    lines: dict[str, tuple[str, list[Line]]]
    usage_snapshot: str
    usage_read_at: datetime
    late_after: dict[str, Seen]
    # The accounts that already have an invoice after this period (``write`` leaves their
    # drafts as they are; they bill no late usage).
    later: frozenset[str]


async def compute(
    conn: asyncpg.Connection, group: Group, options: Options
) -> dict[str, tuple[str, list[Line]]]:
    """Account -> (currency, lines) for every account of the group; reads only."""
    return (await compute_drafts(conn, group, options)).lines


async def compute_drafts(conn: asyncpg.Connection, group: Group, options: Options) -> Computed:
    """The group's drafts and the snapshot they read the CDRs in; reads only."""
    cycle = group.cycle  # computed once: a schedule is made on each access
    which = targets(cycle, group.period, group.billing.invoice_timing, group.named)
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
                r["subscription_id"],
                r["account_number_id"],
                r["end_recorded"],
                r["recorded"],
            )
        )
    earlier = await billed_spans(conn, group, which, items)
    # One read of the accounts' CDRs for the usage lines and the real-time path's lines.
    totals = await cdr_totals(conn, ids, window)
    # Imported calls of earlier periods that the account's last invoice could not see.
    later = frozenset(
        r["account_id"] for r in await conn.fetch(_LATER_SQL, ids, group.period.start)
    )
    late = await late_usage(
        conn, [a for a in ids if a not in later], group.period.start, window[0], totals.snapshot
    )
    reported = await realtime_lines(conn, currencies, window, totals)
    bundled = await bundle_lines(
        conn,
        [
            BundleInvoice(
                a,
                c,
                which,
                window,
                earlier.newest.get(a),
                earlier.began.get(a),
                earlier.seen.get(a),
                session=group.billing.cycle == "on_demand",
                cycle=cycle,
                timing=group.billing.invoice_timing,
            )
            for a, c in sorted(currencies.items())
        ],
    )
    surcharges = await load_surcharges(conn, group.billing.plan_id)
    taxed = taxed_at_drafting(group.billing, options.calculate_taxes)
    rules = await load_rules(conn, group.billing.plan_id) if taxed else None
    if rules is not None and not rules.assigned:
        rules = None  # the plan assigns no tax: no line bears one
    exempt = await exemptions(conn, ids) if rules is not None else {}
    found: dict[str, tuple[str, list[Line]]] = {}
    for account, currency in sorted(currencies.items()):
        lines = invoice_lines(
            items[account],
            totals.usage(account) + late.calls.get(account, []),
            cycle,
            which,
            currency,
            window,
            earlier.billed.get(account),
            earlier.began.get(account),
            earlier.newest.get(account),
            earlier.seen.get(account),
            earlier.voided.get(account),
        ) + reported.get(account, [])
        lines += late.event_lines(account, window[0], currency)
        # Bundles, discounts and commitments come before taxes: taxes are net of them.
        lines += bundled.get(account, [])
        lines += surcharge_lines(lines, surcharges, currency)
        if rules is not None:
            lines += tax_lines(lines, rules, currency, options.invoice_date, exempt.get(account))
        found[account] = (currency, lines)
    return Computed(found, totals.snapshot, totals.read_at, late.compared_with, later)


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
            line.subscription_id,
            line.account_number_id,
            line.subscription_bundle_id,
            line.bundle_rule_position,
            line.adjustment,
        )
        for position, line in enumerate(found, start=first)
    ]


async def write(conn: asyncpg.Connection, group: Group, options: Options) -> Written:
    """Create or recompute the group's drafts; call inside a transaction.

    Each invoice row is written once: its totals are summed here from the
    lines about to be written (as ``TOTALS_SQL`` sums them from the stored
    lines) and its balance-forward statement is computed from the ledger
    figures read first (``statement.statement_figures``) and those lines; a new
    invoice is inserted with both, an existing draft updated with both.
    """
    drafted = await compute_drafts(conn, group, options)
    computed = drafted.lines
    accounts = list(computed)
    period = group.period
    which = targets(group.cycle, group.period, group.billing.invoice_timing, group.named)
    window = usage_window(which, options.usage_cutoff)
    figures = await statement_figures(conn, accounts, period.start, window)
    rows_in: list[tuple[object, ...]] = []
    for account in accounts:
        net = tax = posting = 0
        for line in computed[account][1]:
            if line.kind == "tax":
                tax += line.amount
            else:
                net += line.amount
            if line.moves_money:
                posting += line.amount
        read = figures[account]
        shown = statement_of(
            window, read.prepaid, read.previous, read.payments, read.debited, posting
        )
        rows_in.append((account, computed[account][0], net, tax, *shown.figures()))
    # Column arrays for unnest (12 of them, empty for an empty group).
    columns: list[list[object]] = [list(c) for c in zip(*rows_in, strict=True)] or [
        [] for _ in range(12)
    ]
    settings = _invoice_settings(group, options, window, drafted.usage_snapshot)
    late_after = drafted.late_after
    inserted = await conn.fetch(
        _INSERT_SQL,
        *columns,
        *settings,
        [_snapshot_of(late_after.get(a)) for a in accounts],
        [figures[a].ledger_before for a in accounts],
        group.anchor,
        drafted.usage_read_at,
        [_system_of(late_after.get(a)) for a in accounts],
        [_read_at_of(late_after.get(a)) for a in accounts],
    )
    new = {r["account_id"]: r["id"] for r in inserted}
    # An invoice made by an earlier run (or another worker) is locked in account order, as
    # rows are inserted: two runs of one period wait for each other, never deadlock. The
    # new ones are this transaction's own, uncommitted: nobody else can hold them.
    rows = (
        await conn.fetch(
            "SELECT id, account_id, state FROM invoices WHERE kind = 'invoice'"
            " AND account_id = ANY($1::text[]) AND period_start = $2 ORDER BY account_id"
            " FOR UPDATE",
            [a for a in accounts if a not in new],
            period.start,
        )
        if len(new) < len(accounts)
        else []
    )
    drafts = dict(new)
    drafts.update({r["account_id"]: r["id"] for r in rows if r["state"] == "draft"})
    # A draft whose account already has a later invoice is left as it is, like a posted
    # one: the later invoice was computed from it (what it billed, the usage its draft
    # saw, decisions 0043 and 0050), and a new draft of it would bill some of that twice.
    for account in drafted.later.intersection(drafts).difference(new):
        del drafts[account]
    # Drafts of an earlier run: their lines are replaced, their totals and settings updated.
    index = {account: n for n, account in enumerate(accounts)}
    earlier = [(a, i) for a, i in sorted(drafts.items()) if a not in new]
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
        picked = [rows_in[index[a]][2:] for a, _ in earlier]
        await conn.execute(
            _UPDATE_SQL,
            [i for _, i in earlier],
            *(list(c) for c in zip(*picked, strict=True)),
            *settings[6:],
            [_snapshot_of(late_after.get(a)) for a, _ in earlier],
            [figures[a].ledger_before for a, _ in earlier],
            group.anchor,
            drafted.usage_read_at,
            [_system_of(late_after.get(a)) for a, _ in earlier],
            [_read_at_of(late_after.get(a)) for a, _ in earlier],
        )
    return Written(drafts=len(drafts), final=len(new) + len(rows) - len(drafts))


def _snapshot_of(seen: Seen | None) -> str | None:
    """``late_after_snapshot`` of a draft compared with ``seen`` (None: with none)."""
    return None if seen is None else seen.snapshot


def _system_of(seen: Seen | None) -> int | None:
    """``late_after_system`` of a draft compared with ``seen``."""
    return None if seen is None else seen.system


def _read_at_of(seen: Seen | None) -> datetime | None:
    """``late_after_at`` of a draft compared with ``seen``."""
    return None if seen is None else seen.read_at


def _invoice_settings(
    group: Group, options: Options, window: tuple[datetime, datetime], usage_snapshot: str
) -> tuple[object, ...]:
    """The values every invoice of a group shares, as ``_INSERT_SQL`` takes them from $13
    (``_UPDATE_SQL`` takes the last six, from $12)."""
    return (
        group.billing.plan_id,
        group.period.start,
        group.period.end,
        group.period.label,
        group.billing.issuer,
        group.billing.invoice_message,
        options.invoice_date,
        options.run_id,
        taxed_at_drafting(group.billing, options.calculate_taxes),
        window[0],
        window[1],
        usage_snapshot,
    )


# Each account's plan, creation and first subscription start on it, and whether the plan
# has billing settings (``account_groups``).
_ACCOUNT_GROUPS_SQL = """
SELECT a.id, a.plan_id, a.created_at, b.plan_id AS billed,
       (SELECT min(start_date) FROM subscriptions s
         WHERE s.account_id = a.id AND s.plan_id = a.plan_id) AS start
FROM accounts a LEFT JOIN plan_billing b ON b.plan_id = a.plan_id WHERE a.id = ANY($1::text[])
"""


async def account_group(
    conn: asyncpg.Connection, account_id: str, at: datetime
) -> tuple[Group, str]:
    """The one-account group of the period holding ``at`` (and the account's plan)."""
    return (await account_groups(conn, [account_id], at))[account_id]


async def account_groups(
    conn: asyncpg.Connection, account_ids: list[str], at: datetime
) -> dict[str, tuple[Group, str]]:
    """Account -> its one-account group of the period holding ``at`` (and its plan), for
    each of the accounts: what ``account_group`` gives each, in a few reads for all (the
    commitments refresh dry-runs a batch of accounts at once). Refused (``OcsError``) for
    the first account that does not exist, or whose plan has no billing settings."""
    rows = {r["id"]: r for r in await conn.fetch(_ACCOUNT_GROUPS_SQL, account_ids)}
    for account_id in account_ids:
        row = rows.get(account_id)
        if row is None:
            raise OcsError(Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist")
        if row["billed"] is None:
            raise OcsError(Reason.NOT_FOUND, f"plan {row['plan_id']!r} has no billing settings")
    billings = {
        r["plan_id"]: PlanBilling.from_row(r)
        for r in await conn.fetch(
            "SELECT * FROM plan_billing WHERE plan_id = ANY($1::text[])",
            sorted({r["plan_id"] for r in rows.values()}),
        )
    }
    dated = [a for a in rows if billings[rows[a]["plan_id"]].cycle == "subscription_date"]
    invoiced = await latest_invoices(conn, dated)
    # (plan, anchor) -> its period holding ``at``: a plan's accounts share one but on a
    # subscription-date cycle, and a schedule is costly to make.
    periods: dict[tuple[str, date | None], Period] = {}
    found: dict[str, tuple[Group, str]] = {}
    for account_id in account_ids:
        row = rows[account_id]
        plan_id: str = row["plan_id"]
        billing = billings[plan_id]
        anchor = None
        if billing.cycle == "subscription_date":
            anchor = account_anchor(
                invoiced.get(account_id), row["start"], row["created_at"], schedule(billing).zone
            )
        period = periods.get((plan_id, anchor))
        if period is None:
            try:
                period = schedule(billing, anchor).period_containing(at)
            except ValueError as error:
                raise OcsError(Reason.INVALID_FIELD, str(error)) from None
            periods[(plan_id, anchor)] = period
        found[account_id] = (Group(billing, anchor, period, [account_id]), plan_id)
    return found


async def preview(
    pool: asyncpg.Pool, account_id: str, at: datetime | None = None
) -> tuple[Period, str, list[Line]]:
    """A dry run: the period holding ``at`` (now), the currency and the lines; stores nothing."""
    when = at or datetime.now(UTC)
    async with pool.acquire() as conn:
        group, _plan = await account_group(conn, account_id, when)
        # Dated the local day where the plan bills (the taxes in force that day), not
        # the day of ``when`` in whatever zone it was given in.
        computed = await compute(conn, group, Options(invoice_date=group.period.local_day(when)))
    currency, found = computed[account_id]
    return group.period, currency, found
