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

Loaded set-based for a group of accounts (one query each, no round trip per
account); lines come out in a fixed order, so a recomputed draft is equal.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ocs.billing.currency import round_line
from ocs.billing.lines import Line

_EVENTS_SQL = """
SELECT account_id, destination AS service, zone, count(*) AS events,
       sum(duration) AS quantity, sum(billed_seconds) AS billed, sum(charged) AS amount,
       min(entry_id) AS first_cdr, max(entry_id) AS last_cdr
FROM cdrs
WHERE account_id = ANY($1::text[]) AND stopped_at >= $2 AND stopped_at < $3
  AND termination_cause = 'usage'
GROUP BY account_id, destination, zone
"""

_COUNTER_FEES_SQL = """
SELECT g.account_id, g.entry_id, g.amount, g.reference, g.occurred_at,
       split_part(g.reference, ':', 2) AS counter_id, c.id AS charge_id, c.name
FROM ledger g
LEFT JOIN charges c ON c.counter_id = split_part(g.reference, ':', 2)
WHERE g.account_id = ANY($1::text[]) AND g.occurred_at >= $2 AND g.occurred_at < $3
  AND g.kind = 'fee' AND g.reference LIKE 'counter:%'
"""

_COUNTER_USAGE_SQL = """
SELECT u.*, c.id AS charge_id
FROM (SELECT account_id, counter_id, count(*) AS calls, sum(counter_seconds) AS bundle,
             sum(GREATEST(duration - counter_seconds, 0)) AS paid,
             min(entry_id) AS first_cdr, max(entry_id) AS last_cdr
      FROM cdrs
      WHERE account_id = ANY($1::text[]) AND stopped_at >= $2 AND stopped_at < $3
        AND counter_id IS NOT NULL AND termination_cause <> 'usage'
      GROUP BY account_id, counter_id) u
LEFT JOIN charges c ON c.counter_id = u.counter_id
"""


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


def event_line(row: asyncpg.Record, window: tuple[datetime, datetime], currency: str) -> Line:
    """A ``usage_event`` line: one service's events in the window."""
    amount = int(row["amount"])
    return Line(
        "usage_event",
        f"{row['service']} usage ({row['quantity']} units)",
        window[0],
        window[1],
        int(row["quantity"]),
        amount,
        round_line(amount, currency),
        False,
        zone=row["zone"],
        calls=int(row["events"]),
        first_cdr=row["first_cdr"],
        last_cdr=row["last_cdr"],
        billed_quantity=int(row["billed"]),
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


def counter_usage_line(row: asyncpg.Record, window: tuple[datetime, datetime]) -> Line:
    """A ``counter_usage`` line: a counter's seconds from the bundle and paid, amount 0."""
    bundle, paid = int(row["bundle"]), int(row["paid"])
    return Line(
        "counter_usage",
        f"Bundle {row['counter_id']}: {bundle} s from the bundle, {paid} s paid",
        window[0],
        window[1],
        int(row["calls"]),
        0,
        0,
        False,
        charge_id=row["charge_id"],
        calls=int(row["calls"]),
        seconds=bundle + paid,
        first_cdr=row["first_cdr"],
        last_cdr=row["last_cdr"],
        counter_id=row["counter_id"],
        bundle_seconds=bundle,
        paid_seconds=paid,
    )


async def realtime_lines(
    conn: asyncpg.Connection,
    currencies: dict[str, str],
    window: tuple[datetime, datetime],
) -> dict[str, list[Line]]:
    """Account -> its reporting lines in the window: events, counter fees, counter usage."""
    found: dict[str, list[Line]] = defaultdict(list)
    if not window[0] < window[1]:
        return found
    ids = sorted(currencies)
    events = await conn.fetch(_EVENTS_SQL, ids, window[0], window[1])
    for row in sorted(events, key=lambda r: (r["account_id"], r["service"], r["zone"])):
        found[row["account_id"]].append(event_line(row, window, currencies[row["account_id"]]))
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
    usage = await conn.fetch(_COUNTER_USAGE_SQL, ids, window[0], window[1])
    for row in sorted(usage, key=lambda r: (r["account_id"], r["counter_id"])):
        found[row["account_id"]].append(counter_usage_line(row, window))
    return found
