"""Invoice lines that report what the real-time path did: usage events, counter fees and usage.

None of these lines moves money (``moves_money = false``): the real-time path
debited each event and each counter fee when it happened, through the same
Lua scripts and ledger as calls. The invoice shows them, and every line
traces back to its rows:

- ``usage_event``: the usage events (MB, kWh, messages; ``/v1/usage``) of one
  service in the window, from their CDRs (``termination_cause = 'usage'``,
  the service is the CDR's destination): events, metered quantity, rated
  quantity and what was debited, with the first and last CDR;
- ``counter``: one counter fee the real-time path debited in the window (a
  ledger ``fee`` entry with reference ``counter:<id>:cycle:<label>`` or
  ``counter:<id>:bought:<epoch>``), with that ledger entry; its charge is the
  counter's ``counter`` charge (migration 0022);
- ``counter_usage``: one counter's seconds in the window, from the calls'
  CDRs (``counter_id``, ``counter_seconds``): seconds from the bundle against
  seconds paid from the balance (duration - bundle seconds). Amount 0: the
  calls' money is on the usage lines.

Loaded set-based for a group of accounts (no round trip per account): the
CDRs are read once for the draft's usage lines and these (``cdr_totals``),
the counter fees by one ledger query; lines come out in a fixed order, so a
recomputed draft is equal.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ocs.billing.currency import round_line
from ocs.billing.lines import Line, Usage

# One pass over a group's CDRs of the window for every summary a draft shows: the
# calls' usage lines (``lines.Usage``, by zone, direction and rate type), the usage
# events (by service and zone) and the counters' seconds (by counter). Grouped by all
# their keys at once, split and added up here: one read of the chunk's CDRs instead of
# three (each ~0.4 s a chunk of 500 accounts at 10M CDRs, the CDRs of an account lying on
# as many heap pages as it has calls), served by the covering index of migration 0026.
# The keys are grouped, and the CDR ids compared, byte-wise (COLLATE "C"): equality is the
# same in any deterministic collation, and the database's own (C.UTF-8 here) compares
# through the C library's strcoll, which made the sort-and-group of 50,000 CDRs a chunk
# cost three times a hash of the same keys (benchmarks/RESULTS.md, "Billing drafts").
#
# A late stop's CDR (termination_cause 'late-stop') amends the close of its call: its
# seconds, billed seconds, counter seconds and amount are what the switch's report
# changed (some negative), so it adds to the sums and is not counted as a call.
#
# The statement's snapshot comes with its rows (one row of NULLs besides it when the window
# holds no CDR): the invoice keeps it, and the next invoice bills the imported CDRs it
# could not see (``late_usage``, decision 0050). Read in the same statement, so it is the
# snapshot these sums were taken in, not one a moment before or after.
_CDR_TOTALS_SQL = """
SELECT seen.snapshot, seen.read_at, t.* FROM (
  SELECT pg_current_snapshot()::text AS snapshot, clock_timestamp() AS read_at) seen
LEFT JOIN (
SELECT account_id COLLATE "C" AS account_id, termination_cause = 'usage' AS event,
       zone COLLATE "C" AS zone, direction COLLATE "C" AS direction,
       rate_type COLLATE "C" AS rate_type,
       CASE WHEN termination_cause = 'usage' THEN destination END COLLATE "C" AS service,
       counter_id COLLATE "C" AS counter_id,
       count(*) FILTER (WHERE termination_cause <> 'late-stop') AS calls,
       sum(duration)::bigint AS seconds,
       sum(billed_seconds)::bigint AS billed, sum(charged)::bigint AS amount,
       sum(counter_seconds)::bigint AS bundle,
       sum(CASE WHEN termination_cause = 'late-stop' THEN duration - counter_seconds
                ELSE GREATEST(duration - counter_seconds, 0) END)::bigint AS paid,
       min(entry_id COLLATE "C") AS first_cdr, max(entry_id COLLATE "C") AS last_cdr
FROM cdrs
WHERE account_id = ANY($1::text[]) AND stopped_at >= $2 AND stopped_at < $3
GROUP BY 1, 2, 3, 4, 5, 6, 7
) t ON true
"""

_COUNTER_CHARGES_SQL = "SELECT counter_id, id FROM charges WHERE counter_id = ANY($1::text[])"

_COUNTER_FEES_SQL = """
SELECT g.account_id, g.entry_id, g.amount, g.reference, g.occurred_at,
       split_part(g.reference, ':', 2) AS counter_id, c.id AS charge_id, c.name
FROM ledger g
LEFT JOIN charges c ON c.counter_id = split_part(g.reference, ':', 2)
WHERE g.account_id = ANY($1::text[]) AND g.occurred_at >= $2 AND g.occurred_at < $3
  AND g.kind = 'fee' AND g.reference LIKE 'counter:%'
"""


@dataclass(slots=True)
class Total:
    """Sums of one group of CDRs: count, seconds (quantity), billed, amount, first/last CDR."""

    calls: int
    seconds: int
    billed: int
    amount: int
    first_cdr: str
    last_cdr: str
    bundle: int = 0  # counter seconds from the bundle
    paid: int = 0  # counter seconds paid from the balance

    def add(self, row: asyncpg.Record) -> None:
        """Add another group's row (the same key once split)."""
        self.calls += row["calls"]
        self.seconds += row["seconds"]
        self.billed += row["billed"]
        self.amount += row["amount"]
        self.bundle += row["bundle"]
        self.paid += row["paid"]
        self.first_cdr = min(self.first_cdr, row["first_cdr"])
        self.last_cdr = max(self.last_cdr, row["last_cdr"])


def _total(row: asyncpg.Record) -> Total:
    return Total(
        row["calls"],
        row["seconds"],
        row["billed"],
        row["amount"],
        row["first_cdr"],
        row["last_cdr"],
        row["bundle"],
        row["paid"],
    )


@dataclass(frozen=True, slots=True)
class CdrTotals:
    """A group's CDRs of the window, summed: per account, its calls, events and counters.

    ``calls``: (zone, direction, rate type) -> total; ``events``: (service, zone) ->
    total; ``counters``: counter id -> (its counter charge or None, total);
    ``snapshot``: the snapshot they were read in (``pg_snapshot`` text), which the
    invoices keep (decision 0050), and ``read_at`` when it was taken (the rule by time
    for a snapshot that another PostgreSQL cluster will read, migration 0065).
    """

    calls: dict[str, dict[tuple[str, str, str | None], Total]]
    events: dict[str, dict[tuple[str, str], Total]]
    counters: dict[str, dict[str, tuple[str | None, Total]]]
    snapshot: str
    read_at: datetime

    def usage(self, account_id: str) -> list[Usage]:
        """The account's call summaries (``lines.Usage``), in a fixed order."""
        found = self.calls.get(account_id, {})
        return [
            Usage(
                zone,
                direction,
                t.calls,
                t.seconds,
                t.billed,
                t.amount,
                t.first_cdr,
                t.last_cdr,
                rate_type,
            )
            for (zone, direction, rate_type), t in sorted(
                found.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
            )
        ]


async def cdr_totals(
    conn: asyncpg.Connection, account_ids: list[str], window: tuple[datetime, datetime]
) -> CdrTotals:
    """Sum the accounts' CDRs of the window (one query): calls, usage events, counters."""
    calls: dict[str, dict[tuple[str, str, str | None], Total]] = defaultdict(dict)
    events: dict[str, dict[tuple[str, str], Total]] = defaultdict(dict)
    counted: dict[str, dict[str, Total]] = defaultdict(dict)
    if not window[0] < window[1]:
        seen = await conn.fetchrow("SELECT pg_current_snapshot()::text, clock_timestamp()")
        return CdrTotals(calls, events, {}, seen[0], seen[1])
    rows = await conn.fetch(_CDR_TOTALS_SQL, account_ids, window[0], window[1])
    snapshot, read_at = rows[0]["snapshot"], rows[0]["read_at"]
    for row in rows:
        account = row["account_id"]
        if account is None:
            continue  # the window holds no CDR: the snapshot's row alone
        if row["event"]:
            key: tuple[str, ...] = (row["service"], row["zone"])
            found: dict[Any, Total] = events[account]
        else:
            key = (row["zone"], row["direction"], row["rate_type"])
            found = calls[account]
            if row["counter_id"] is not None:
                counter = counted[account]
                if (seen := counter.get(row["counter_id"])) is None:
                    counter[row["counter_id"]] = _total(row)
                else:
                    seen.add(row)
        if (known := found.get(key)) is None:
            found[key] = _total(row)
        else:
            known.add(row)
    counters: dict[str, dict[str, tuple[str | None, Total]]] = {}
    if counted:
        ids = sorted({c for found_ in counted.values() for c in found_})
        charges = dict(list(r) for r in await conn.fetch(_COUNTER_CHARGES_SQL, ids))
        counters = {
            account: {c: (charges.get(c), t) for c, t in found_.items()}
            for account, found_ in counted.items()
        }
    return CdrTotals(calls, events, counters, snapshot, read_at)


@dataclass(frozen=True, slots=True)
class CounterFee:
    """One counter fee the real-time path debited: its ledger entry."""

    entry_id: str
    counter_id: str
    charge_id: str | None
    name: str
    amount: int  # debited, positive
    reference: str
    occurred_at: datetime

    @property
    def description(self) -> str:
        """``Bundle de-100 fee (cycle 2026-12)``, or ``(bought)`` for a purchase."""
        parts = self.reference.split(":")
        when = ""
        if len(parts) >= 4 and parts[2] == "cycle":
            when = f" (cycle {':'.join(parts[3:])})"
        elif len(parts) >= 3 and parts[2] == "bought":
            when = " (bought)"
        return f"{self.name} fee{when}"


def event_line(
    service: str, zone: str, total: Total, window: tuple[datetime, datetime], currency: str
) -> Line:
    """A ``usage_event`` line: one service's events in the window."""
    return Line(
        "usage_event",
        f"{service} usage ({total.seconds} units)",
        window[0],
        window[1],
        total.seconds,
        total.amount,
        round_line(total.amount, currency),
        False,
        zone=zone,
        calls=total.calls,
        first_cdr=total.first_cdr,
        last_cdr=total.last_cdr,
        billed_quantity=total.billed,
    )


def counter_fee_line(fee: CounterFee, currency: str) -> Line:
    """A ``counter`` line: one counter fee the real-time path debited."""
    return Line(
        "counter",
        fee.description,
        fee.occurred_at,
        None,
        1,
        fee.amount,
        round_line(fee.amount, currency),
        False,
        charge_id=fee.charge_id,
        counter_id=fee.counter_id,
        source_entry=fee.entry_id,
    )


def counter_usage_line(
    counter_id: str, charge_id: str | None, total: Total, window: tuple[datetime, datetime]
) -> Line:
    """A ``counter_usage`` line: a counter's seconds from the bundle and paid, amount 0."""
    bundle, paid = total.bundle, total.paid
    return Line(
        "counter_usage",
        f"Bundle {counter_id}: {bundle} s from the bundle, {paid} s paid",
        window[0],
        window[1],
        total.calls,
        0,
        0,
        False,
        charge_id=charge_id,
        calls=total.calls,
        seconds=bundle + paid,
        first_cdr=total.first_cdr,
        last_cdr=total.last_cdr,
        counter_id=counter_id,
        bundle_seconds=bundle,
        paid_seconds=paid,
    )


async def realtime_lines(
    conn: asyncpg.Connection,
    currencies: dict[str, str],
    window: tuple[datetime, datetime],
    totals: CdrTotals | None = None,
) -> dict[str, list[Line]]:
    """Account -> its reporting lines in the window: events, counter fees, counter usage.

    ``totals``: the accounts' CDRs already summed (``cdr_totals``), else read here.
    """
    found: dict[str, list[Line]] = defaultdict(list)
    if not window[0] < window[1]:
        return found
    ids = sorted(currencies)
    if totals is None:
        totals = await cdr_totals(conn, ids, window)
    for account in sorted(totals.events):
        currency = currencies[account]
        for (service, zone), total in sorted(totals.events[account].items()):
            found[account].append(event_line(service, zone, total, window, currency))
    fees = await conn.fetch(_COUNTER_FEES_SQL, ids, window[0], window[1])
    for row in sorted(fees, key=lambda r: (r["account_id"], r["occurred_at"], r["entry_id"])):
        fee = CounterFee(
            row["entry_id"],
            row["counter_id"],
            row["charge_id"],
            row["name"] or f"Bundle {row['counter_id']}",
            -int(row["amount"]),
            row["reference"],
            row["occurred_at"],
        )
        found[row["account_id"]].append(counter_fee_line(fee, currencies[row["account_id"]]))
    for account in sorted(totals.counters):
        for counter_id, (charge_id, total) in sorted(totals.counters[account].items()):
            found[account].append(counter_usage_line(counter_id, charge_id, total, window))
    return found
