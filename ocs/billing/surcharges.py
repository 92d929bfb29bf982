"""Surcharges on charges: a percentage of, or a flat amount on, a zone's or a charge's lines.

The rule (decision 0022), stated here once: a surcharge of a plan targets a
zone (its usage lines) or a charge (its charge lines, credits included).

- **percent**: basis = the sum of the (already rounded) amounts of the
  target's lines; the surcharge is ``basis x rate`` rounded **once** to the
  currency's minor unit, half away from zero (as taxes, ``taxes.apply_rate``);
- **flat**: its amount, once per invoice that has a non-zero line of the
  target.

Each surcharge is its own line (kind ``surcharge``) after the lines it
surcharges and before taxes, showing its basis and rate; it names its target
(``charge_id`` or ``zone``), so it is taxed as what it surcharges. Usage lines
are per zone and rate type, and a rate type's tax code replaces its zone's: a
percent surcharge on a zone is therefore one line per rate type of its lines
(``UK Mobile``'s calls and its ``roaming`` calls apart, as bundle credits are
split), each naming that rate type and rounded once, so that a surcharge of
untaxed roaming bears no VAT and one of SMS taxed at 20% is not taxed at the
zone's 10%. A charge's surcharge line takes the period of the charge lines it
surcharges (a percent one is one line per period of its lines, rounded once
each; a flat one the period of the largest share), so the revenue reports
(decision 0031) defer and recognise it as that charge's revenue: a surcharge
on a month billed in advance is earned over that month, under its G/L code. A
flat one on a zone is not split: it carries the rate type of the largest
share of its zone's lines. It moves
money at posting. Usage surcharges of the real-time path are unrelated: they
are in the calls' rated amounts already.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ocs.billing.currency import format_amount, round_line
from ocs.billing.lines import Line
from ocs.billing.taxes import apply_rate, rate_text

CHARGE_KINDS = ("recurring", "proration", "one_time")


@dataclass(frozen=True, slots=True)
class Surcharge:
    """One surcharge: ``rate`` (millionths of a percent) or ``amount`` (micro-units)."""

    id: str
    name: str
    kind: str  # percent | flat
    target_kind: str  # zone | charge
    target: str
    rate: int | None = None
    amount: int | None = None

    def covers(self, line: Line) -> bool:
        """Whether ``line`` is one this surcharge applies to."""
        if self.target_kind == "zone":
            return line.kind == "usage" and line.zone == self.target
        return line.kind in CHARGE_KINDS and line.charge_id == self.target


Period = tuple[datetime | None, datetime | None]


@dataclass(frozen=True, slots=True)
class _Part:
    """The lines one surcharge line is computed on: its rate type (a zone's) or its
    period (a charge's), which the surcharge line takes."""

    rate_type: str | None
    period: Period
    lines: list[Line]


def _largest(groups: list[tuple[Any, list[Line]]]) -> Any:
    """The key of the group of the largest sum (ties: the first, in the order given)."""
    return max(groups, key=lambda g: sum(int(line.amount) for line in g[1]))[0]


def _parts(surcharge: Surcharge, covered: list[Line]) -> list[_Part]:
    """The covered lines split as the surcharge's lines are: per rate type for a zone,
    per period for a charge.

    A percent surcharge on a zone gives a line per rate type of its lines (no rate
    type first, then by name), so each is taxed as the lines it surcharges: a rate
    type's tax code replaces its zone's. A percent surcharge on a charge gives a line
    per period of its lines (by start), each with that period, so that the revenue
    reports defer and recognise it with the charge it surcharges (an advance charge's
    surcharge is earned over the month it pays for, not when billed). A flat one is one
    amount, not split: it follows the rate type, or the period, of the largest share of
    the lines (ties: the first in that order).
    """
    if surcharge.target_kind != "zone":
        periods: dict[Period, list[Line]] = {}
        for line in covered:
            periods.setdefault((line.period_start, line.period_end), []).append(line)
        by_start = sorted(periods.items(), key=lambda g: _period_order(g[0]))
        if surcharge.kind != "percent":
            return [_Part(None, _largest(by_start), covered)]
        return [_Part(None, period, part) for period, part in by_start]
    groups: dict[str | None, list[Line]] = {}
    for line in covered:
        groups.setdefault(line.rate_type, []).append(line)
    ordered = sorted(groups.items(), key=lambda g: (g[0] is not None, g[0] or ""))
    if surcharge.kind == "percent":
        return [_Part(rate_type, (None, None), part) for rate_type, part in ordered]
    return [_Part(_largest(ordered), (None, None), covered)]


def _period_order(period: Period) -> tuple[bool, float, bool, float]:
    """Periods by start then end, an open one first."""
    start, end = period
    return (
        start is not None,
        start.timestamp() if start else 0.0,
        end is not None,
        end.timestamp() if end else 0.0,
    )


def _line(surcharge: Surcharge, part: _Part, basis: int, currency: str) -> Line:
    """One surcharge line on ``basis``, naming its target (and its lines' rate type), over
    its lines' period (a charge's)."""
    rate_type = part.rate_type
    named = f"{surcharge.name}, {rate_type}" if rate_type else surcharge.name
    if surcharge.kind == "percent" and surcharge.rate is not None:
        exact, amount = apply_rate(basis, surcharge.rate, currency)
        shown = (
            f"{named} {rate_text(surcharge.rate)}% of {format_amount(basis, currency)} {currency}"
        )
    else:
        exact = surcharge.amount or 0
        amount = round_line(exact, currency)
        shown = f"{named} (flat)"
    on_zone = surcharge.target_kind == "zone"
    return Line(
        "surcharge",
        shown,
        part.period[0],
        part.period[1],
        1,
        exact,
        amount,
        True,
        charge_id=None if on_zone else surcharge.target,
        zone=surcharge.target if on_zone else None,
        basis=basis,
        rate=surcharge.rate,
        rate_type=rate_type,
    )


def surcharge_lines(lines: Sequence[Line], found: Sequence[Surcharge], currency: str) -> list[Line]:
    """The surcharge lines of an invoice made of ``lines``, in surcharge id order (a zone's
    percent surcharge: a line per rate type of its lines; a charge's, a line per period of
    its lines; each rounded once)."""
    result: list[Line] = []
    for surcharge in sorted(found, key=lambda s: s.id):
        covered = [line for line in lines if surcharge.covers(line) and line.amount]
        if not covered:
            continue
        for part in _parts(surcharge, covered):
            basis = sum(int(line.amount) for line in part.lines)  # usage sums come as Decimal
            result.append(_line(surcharge, part, basis, currency))
    return result


async def load_surcharges(conn: asyncpg.Connection, plan_id: str) -> list[Surcharge]:
    """A plan's surcharges."""
    return [
        Surcharge(
            r["id"], r["name"], r["kind"], r["target_kind"], r["target"], r["rate"], r["amount"]
        )
        for r in await conn.fetch(
            "SELECT * FROM surcharges WHERE plan_id = $1 ORDER BY id", plan_id
        )
    ]


async def create_surcharge(pool: asyncpg.Pool, plan_id: str, surcharge: Surcharge) -> None:
    """Add a surcharge to a plan."""
    await pool.execute(
        "INSERT INTO surcharges (id, plan_id, name, kind, rate, amount, target_kind, target)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        surcharge.id,
        plan_id,
        surcharge.name,
        surcharge.kind,
        surcharge.rate,
        surcharge.amount,
        surcharge.target_kind,
        surcharge.target,
    )
