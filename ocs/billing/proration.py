"""Proration: one rule, by local calendar day in the plan's time zone.

fraction = days used / days in the period, both counted in local calendar
days of the half-open period. A change effective on day X (the local day
holding the instant it takes effect) splits the period into the old part
[period start, X) and the new part [X, period end). Amounts are rounded half
away from zero to the micro-unit here; the invoice line is then rounded once
to the currency's minor unit by ``round_line`` (decision 0019).
"""

from dataclasses import dataclass
from datetime import date, datetime

from ocs.billing.currency import round_half_away
from ocs.billing.periods import Period


def prorate(amount_micro: int, used_days: int, period_days: int) -> int:
    """``amount * used_days / period_days`` in micro-units, halves away from zero.

    10.00 for 21 of 31 days: 210_000_000 / 31 = 6_774_193.548... -> 6_774_194.
    """
    if period_days < 1:
        raise ValueError(f"a period has at least one day, got {period_days}")
    if not 0 <= used_days <= period_days:
        raise ValueError(f"used days must be 0..{period_days}, got {used_days}")
    return round_half_away(amount_micro * used_days, period_days)


@dataclass(frozen=True)
class Split:
    """A period cut on day X: old part [start, X) of ``old_days``, new part [X, end)."""

    day: date
    old_days: int
    new_days: int

    @property
    def period_days(self) -> int:
        """Local calendar days of the whole period."""
        return self.old_days + self.new_days

    def old_part(self, amount_micro: int) -> int:
        """``amount`` prorated to the old part [start, X): what it earned up to the change."""
        return prorate(amount_micro, self.old_days, self.period_days)

    def new_part(self, amount_micro: int) -> int:
        """``amount`` prorated to the new part [X, end): what is left of the period."""
        return prorate(amount_micro, self.new_days, self.period_days)


def split(period: Period, when: date | datetime) -> Split:
    """Cut ``period`` on the day a change takes effect.

    ``when`` is a local date X, or an aware instant whose local day (in the
    period's zone) is X: an instant at 23:30 local counts from that day. X
    must lie in [first day, end day]: X = first day puts the whole period in
    the new part, X = end day (a change at the very end) puts it all in the old.
    """
    day = period.local_day(when) if isinstance(when, datetime) else when
    if not period.first_day <= day <= period.end_day:
        raise ValueError(f"change day {day} is outside the period {period.label}")
    return Split(day, (day - period.first_day).days, (period.end_day - day).days)


@dataclass(frozen=True)
class Change:
    """The two lines of a mid-cycle change of a charge billed in advance.

    ``credit`` (<= 0 for a positive old amount) gives back the unused old part
    [X, end); ``charge`` bills the new amount for the same days. They stay two
    lines, each rounded once on the invoice.
    """

    split: Split
    credit: int
    charge: int


def change(period: Period, when: date | datetime, old_micro: int, new_micro: int) -> Change:
    """Credit for the unused old part and charge for the new part, from day X on.

    An upgrade, downgrade, add-on (old 0), removal or cancellation (new 0) of
    a charge already billed in advance for ``period``.
    """
    cut = split(period, when)
    return Change(cut, -cut.new_part(old_micro), cut.new_part(new_micro))
