"""Billing periods: half-open [start, end) between local midnights, each from its anchor.

A ``Schedule`` is a cadence (every N days, weeks or months) anchored at a
local date in a time zone. Period ``n`` starts at local midnight of
``anchor + n * step``; it is never found by adding a step to the previous
period, because chained month steps drift at month ends (Jan 31 -> Feb 28 ->
Mar 28). A month step lands on the schedule's day of the month, or the
month's last day when the month is shorter (day 31 -> Feb 28 or 29 -> Mar 31).
Boundaries are local midnights, so a period holding a DST change is an hour
shorter or longer in real time (decision 0019).

The plan cycle kinds and recurring-charge cadences are the constructor
functions at the bottom: ``fixed_period``, ``fixed_date``, ``weekly_on``,
``anniversary``, ``recurring``.
"""

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Unit(StrEnum):
    """The step a schedule counts in."""

    DAYS = "days"
    WEEKS = "weeks"
    MONTHS = "months"


_MONTH_NAME = re.compile(r"^(\d{4})-(\d{2})$")
_RANGE_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``zone``, as an aware datetime in ``zone``.

    Where midnight does not exist (a DST gap at 00:00, e.g. America/Santiago),
    the day starts at the end of the gap; the result is normalised through
    UTC so its wall clock is a real one (01:00).
    """
    # fold=0 reads a time in a gap with the offset before the change: 00:00 then
    # names the instant the gap ends, which is the first instant of the day.
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC).astimezone(zone)


def month_day(year: int, month: int, day: int) -> date:
    """Day ``day`` (1..31) of a month, or the month's last day when it is shorter."""
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _months_apart(earlier: date, later: date) -> int:
    """Calendar months from ``earlier``'s month to ``later``'s month."""
    return (later.year - earlier.year) * 12 + later.month - earlier.month


def _utc(instant: datetime) -> datetime:
    """An aware instant in UTC; a naive one is refused (it names no instant)."""
    if instant.tzinfo is None:
        raise ValueError(f"instant {instant} has no time zone")
    return instant.astimezone(UTC)


@dataclass(frozen=True)
class Period:
    """One billing period: [start, end), aware datetimes at local midnights of the plan's zone.

    Aware datetimes sharing a tzinfo subtract and compare by wall clock in
    Python, so real durations and instant checks here go through UTC.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        zone = self.start.tzinfo
        if not isinstance(zone, ZoneInfo) or self.end.tzinfo is not zone:
            raise ValueError("a period's start and end are datetimes in one ZoneInfo zone")
        if _utc(self.start) >= _utc(self.end):
            raise ValueError(f"a period must end after it starts: {self.start} .. {self.end}")

    @property
    def zone(self) -> ZoneInfo:
        """The plan's time zone the period is cut in."""
        zone = self.start.tzinfo
        assert isinstance(zone, ZoneInfo)
        return zone

    @property
    def first_day(self) -> date:
        """The local date the period starts on."""
        return self.start.date()

    @property
    def end_day(self) -> date:
        """The local date of the next period's first day (excluded)."""
        return self.end.date()

    @property
    def last_day(self) -> date:
        """The period's last local date (included), for printing ``Dec 15 - Jan 14``."""
        return self.end_day - timedelta(days=1)

    @property
    def days(self) -> int:
        """Local calendar days in the period (a 23- or 25-hour DST day counts as one)."""
        return (self.end_day - self.first_day).days

    @property
    def duration(self) -> timedelta:
        """Real elapsed time of the period: 743 hours for March 2026 in London."""
        return self.end.astimezone(UTC) - self.start.astimezone(UTC)

    @property
    def label(self) -> str:
        """``"2026-12"`` for a calendar month, else ``"2026-12-15..2027-01-15"`` (end excluded)."""
        first, end = self.first_day, self.end_day
        if first.day == 1 and end.day == 1 and _months_apart(first, end) == 1:
            return f"{first:%Y-%m}"
        return f"{first.isoformat()}..{end.isoformat()}"

    def local_day(self, instant: datetime) -> date:
        """The local date, in the period's zone, of an aware instant (UTC or any zone)."""
        return _utc(instant).astimezone(self.zone).date()

    def contains(self, instant: datetime) -> bool:
        """Whether an aware instant lies in [start, end)."""
        moment = _utc(instant)
        return self.start.astimezone(UTC) <= moment < self.end.astimezone(UTC)


@dataclass(frozen=True)
class Schedule:
    """Periods every ``count`` ``unit``s from ``anchor``, a local date in ``tz``.

    Period 0 starts on ``anchor``; ``n`` may be negative (periods before it).
    For months, ``day_of_month`` (1..31) is the day periods start on, clamped
    to shorter months; ``anchor`` must be that day in its own month.
    """

    unit: Unit
    count: int
    anchor: date
    tz: str
    day_of_month: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", Unit(self.unit))  # a stored "months" works too
        if isinstance(self.anchor, datetime) or not isinstance(self.anchor, date):
            raise TypeError(f"anchor must be a date, got {self.anchor!r}")
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"not an IANA time zone: {self.tz!r}") from None
        if self.unit is not Unit.MONTHS:
            if self.day_of_month is not None:
                raise ValueError("day_of_month is for month schedules only")
            return
        if self.day_of_month is None:
            object.__setattr__(self, "day_of_month", self.anchor.day)
        dom = self.month_day
        if not 1 <= dom <= 31:
            raise ValueError(f"day of month must be 1..31, got {dom}")
        if self.anchor != month_day(self.anchor.year, self.anchor.month, dom):
            raise ValueError(f"anchor {self.anchor} is not day {dom} of its month")

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.tz)

    @property
    def month_day(self) -> int:
        """The day of the month month periods start on (the anchor's day otherwise)."""
        return self.anchor.day if self.day_of_month is None else self.day_of_month

    def start_day(self, n: int) -> date:
        """The local date period ``n`` starts on: ``anchor + n * step``, never chained."""
        if self.unit is Unit.DAYS:
            return self.anchor + timedelta(days=n * self.count)
        if self.unit is Unit.WEEKS:
            return self.anchor + timedelta(weeks=n * self.count)
        year, month0 = divmod(self.anchor.year * 12 + self.anchor.month - 1 + n * self.count, 12)
        return month_day(year, month0 + 1, self.month_day)

    def period(self, n: int) -> Period:
        """Period ``n``: [local midnight of start_day(n), local midnight of start_day(n + 1))."""
        zone = self.zone
        return Period(
            local_midnight(self.start_day(n), zone), local_midnight(self.start_day(n + 1), zone)
        )

    def index_of_day(self, day: date) -> int:
        """The ``n`` whose period holds the local date ``day``."""
        if self.unit is not Unit.MONTHS:
            step = self.count * (7 if self.unit is Unit.WEEKS else 1)
            return (day - self.anchor).days // step
        n = _months_apart(self.anchor, day) // self.count
        # start_day(n) falls in day's month or earlier; in day's month but after day
        # means day still belongs to the period before.
        return n - 1 if self.start_day(n) > day else n

    def index_containing(self, instant: datetime) -> int:
        """The ``n`` whose period holds an aware instant (in any zone, UTC included)."""
        return self.index_of_day(_utc(instant).astimezone(self.zone).date())

    def period_containing(self, instant: datetime) -> Period:
        """The period holding an aware instant: ``start <= instant < end``."""
        return self.period(self.index_containing(instant))

    def periods_overlapping(self, start: datetime, end: datetime) -> list[Period]:
        """The periods that share at least one instant with [start, end), in order."""
        found: list[Period] = []
        until = _utc(end)
        if _utc(start) >= until:
            return found
        n = self.index_containing(start)
        while (period := self.period(n)).start.astimezone(UTC) < until:
            found.append(period)
            n += 1
        return found

    def periods_starting_in(self, year: int, month: int) -> list[Period]:
        """The periods whose first day falls in the calendar month ``year-month``."""
        first = date(year, month, 1)
        after = month_day(year + month // 12, month % 12 + 1, 1)
        n = self.index_of_day(first)
        if self.start_day(n) < first:
            n += 1
        found = []
        while self.start_day(n) < after:
            found.append(self.period(n))
            n += 1
        return found

    def period_named(self, name: str) -> Period:
        """The period a name gives: ``"2026-12"`` or a label ``"2026-12-15..2027-01-15"``.

        A month name means the one period of this schedule that **starts** in
        that month (the December run of a cycle on the 15th bills Dec 15 -
        Jan 15). ValueError when none or several start in it (a weekly
        cycle: name the period by its label), or when a label is not one of
        this schedule's periods.
        """
        if match := _MONTH_NAME.match(name):
            year, month = int(match[1]), int(match[2])
            if not 1 <= month <= 12:
                raise ValueError(f"not a month: {name!r}")
            found = self.periods_starting_in(year, month)
            if len(found) != 1:
                labels = ", ".join(p.label for p in found) or "none"
                raise ValueError(
                    f"{len(found)} periods of this cycle start in {name} ({labels});"
                    " name one period by its label"
                )
            return found[0]
        if match := _RANGE_NAME.match(name):
            try:
                first, end = date.fromisoformat(match[1]), date.fromisoformat(match[2])
            except ValueError:
                raise ValueError(f"not a date in period name {name!r}") from None
            period = self.period(self.index_of_day(first))
            if (period.first_day, period.end_day) != (first, end):
                raise ValueError(
                    f"{name!r} is not a period of this cycle (nearest: {period.label})"
                )
            return period
        raise ValueError(f"period name {name!r}: expected YYYY-MM or YYYY-MM-DD..YYYY-MM-DD")


def check_period_name(name: str) -> None:
    """ValueError unless ``name`` can name a period of some schedule: a month
    ``YYYY-MM`` or a label ``YYYY-MM-DD..YYYY-MM-DD`` whose first day comes before its
    end. Whether it is a period of a given schedule is ``Schedule.period_named``'s to
    say; this holds for a run whose plans have no account to ask that of."""
    if match := _MONTH_NAME.match(name):
        if not 1 <= int(match[2]) <= 12:
            raise ValueError(f"not a month: {name!r}")
        return
    if match := _RANGE_NAME.match(name):
        try:
            first, end = date.fromisoformat(match[1]), date.fromisoformat(match[2])
        except ValueError:
            raise ValueError(f"not a date in period name {name!r}") from None
        if first >= end:
            raise ValueError(f"period name {name!r}: its first day must come before its end")
        return
    raise ValueError(f"period name {name!r}: expected YYYY-MM or YYYY-MM-DD..YYYY-MM-DD")


def fixed_period(effective: date, days: int, *, tz: str) -> Schedule:
    """Plan cycle "fixed period": every ``days`` days from the plan's effective date."""
    return Schedule(Unit.DAYS, days, effective, tz)


def fixed_date(day: int, effective: date, *, tz: str) -> Schedule:
    """Plan cycle "fixed date": day ``day`` (1..31) of every month, clamped to its last day.

    Period 0 is the one holding ``effective`` (the plan's effective date);
    the index only orders periods, their dates do not depend on it.
    """
    if not 1 <= day <= 31:
        raise ValueError(f"day of month must be 1..31, got {day}")
    anchor = month_day(effective.year, effective.month, day)
    if anchor > effective:
        year, month0 = divmod(effective.year * 12 + effective.month - 2, 12)
        anchor = month_day(year, month0 + 1, day)
    return Schedule(Unit.MONTHS, 1, anchor, tz, day_of_month=day)


def weekly_on(weekday: int, effective: date, *, tz: str) -> Schedule:
    """Plan cycle "week": periods from a weekday to the next (``calendar.MONDAY`` = 0).

    Period 0 is the week holding ``effective``.
    """
    if not 0 <= weekday <= 6:
        raise ValueError(f"weekday must be 0 (Monday) .. 6 (Sunday), got {weekday}")
    anchor = effective - timedelta(days=(effective.weekday() - weekday) % 7)
    return Schedule(Unit.WEEKS, 1, anchor, tz)


def anniversary(start: date, *, tz: str) -> Schedule:
    """Plan cycle "subscription date": monthly from the account's own start date.

    Started on the 31st, a period starts on the last day of each shorter month
    and on the 31st again in the next long one.
    """
    return Schedule(Unit.MONTHS, 1, start, tz)


_RECURRING: dict[str, tuple[Unit, int]] = {
    "weekly": (Unit.WEEKS, 1),
    "monthly": (Unit.MONTHS, 1),
    "quarterly": (Unit.MONTHS, 3),
    "yearly": (Unit.MONTHS, 12),
}


def recurring(cadence: str, anchor: date, *, tz: str, every_days: int | None = None) -> Schedule:
    """A recurring charge's periods: ``weekly``, ``monthly``, ``quarterly``, ``yearly``
    from ``anchor``, or ``days`` with ``every_days`` = N."""
    if cadence == "days":
        if every_days is None:
            raise ValueError("cadence 'days' needs every_days")
        return Schedule(Unit.DAYS, every_days, anchor, tz)
    if every_days is not None:
        raise ValueError(f"every_days is for cadence 'days', not {cadence!r}")
    try:
        unit, count = _RECURRING[cadence]
    except KeyError:
        known = ", ".join([*_RECURRING, "days"])
        raise ValueError(f"unknown cadence {cadence!r}; expected one of {known}") from None
    return Schedule(unit, count, anchor, tz)
