"""Billing periods: from the anchor (no month-end drift), local midnights, half-open (0019)."""

import calendar
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.billing.periods import (
    Period,
    Schedule,
    Unit,
    anniversary,
    fixed_date,
    fixed_period,
    local_midnight,
    recurring,
    weekly_on,
)

HOUR = timedelta(hours=1)


def first_days(schedule: Schedule, count: int, first: int = 0) -> list[date]:
    """The first local day of periods first .. first + count - 1."""
    return [schedule.period(n).first_day for n in range(first, first + count)]


def local(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An aware local datetime in ``zone``."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone))


# --- cycle kinds, hand-computed ------------------------------------------------------


def test_fixed_date_31_through_february_of_a_leap_year() -> None:
    """Day 31 in 2028: Jan 31, Feb 29 (leap), Mar 31, Apr 30, May 31 - never Mar 29."""
    cycle = fixed_date(31, date(2028, 1, 31), tz="Europe/Paris")
    assert first_days(cycle, 5) == [
        date(2028, 1, 31),
        date(2028, 2, 29),
        date(2028, 3, 31),
        date(2028, 4, 30),
        date(2028, 5, 31),
    ]
    # Jan 31 -> Feb 29: 29 days; Feb 29 -> Mar 31: 31 days (Feb 29 + Mar 1..30).
    assert [cycle.period(n).days for n in range(4)] == [29, 31, 30, 31]
    assert cycle.period_named("2028-02").label == "2028-02-29..2028-03-31"


def test_fixed_date_31_through_february_of_a_common_year() -> None:
    """Day 31 in 2027: Jan 31, Feb 28, Mar 31 (not Mar 28, the chained-step bug)."""
    cycle = fixed_date(31, date(2027, 2, 10), tz="Europe/Paris")
    # Period 0 holds the effective date Feb 10: it started on Jan 31.
    assert cycle.period(0).label == "2027-01-31..2027-02-28"
    assert first_days(cycle, 4) == [
        date(2027, 1, 31),
        date(2027, 2, 28),
        date(2027, 3, 31),
        date(2027, 4, 30),
    ]
    # Jan 31 -> Feb 28: 28 days; Feb 28 -> Mar 31: 31 days (Feb 28 + Mar 1..30).
    assert [cycle.period(n).days for n in range(3)] == [28, 31, 30]
    assert cycle.period_named("2027-02").label == "2027-02-28..2027-03-31"


def test_fixed_date_on_the_first_is_the_calendar_month() -> None:
    """Day 1: periods are calendar months, labelled YYYY-MM."""
    cycle = fixed_date(1, date(2026, 12, 9), tz="UTC")
    assert cycle.period(0).label == "2026-12"
    assert cycle.period(1).label == "2027-01"
    assert cycle.period(-11).label == "2026-01"
    assert cycle.period_named("2026-12") == cycle.period(0)
    assert cycle.period(0).days == 31
    assert cycle.period(0).last_day == date(2026, 12, 31)


def test_fixed_date_15_names_the_period_starting_in_the_month() -> None:
    """The December run of a cycle on the 15th bills [Dec 15, Jan 15)."""
    cycle = fixed_date(15, date(2026, 12, 1), tz="Europe/Berlin")
    december = cycle.period_named("2026-12")
    assert december.label == "2026-12-15..2027-01-15"
    assert december.start == local("Europe/Berlin", 2026, 12, 15)
    assert december.end == local("Europe/Berlin", 2027, 1, 15)
    assert december.last_day == date(2027, 1, 14)
    assert december.days == 31
    assert cycle.period_named("2026-12-15..2027-01-15") == december


def test_anniversary_on_the_31st() -> None:
    """An account started Oct 31: Nov 30, Dec 31, Jan 31, Feb 28, Mar 31, Apr 30 (2027)."""
    cycle = anniversary(date(2026, 10, 31), tz="Europe/London")
    assert first_days(cycle, 7) == [
        date(2026, 10, 31),
        date(2026, 11, 30),
        date(2026, 12, 31),
        date(2027, 1, 31),
        date(2027, 2, 28),
        date(2027, 3, 31),
        date(2027, 4, 30),
    ]
    # 13 months later it is still the 31st: no step was ever chained.
    assert cycle.period(13).first_day == date(2027, 11, 30)
    assert cycle.period(14).first_day == date(2027, 12, 31)


def test_every_10_days_from_the_effective_date() -> None:
    """Fixed period of 10 days from 2026-12-25: Jan 4, Jan 14, ...; period 36 = 2027-12-20."""
    cycle = fixed_period(date(2026, 12, 25), 10, tz="America/New_York")
    assert cycle.period(0).label == "2026-12-25..2027-01-04"
    assert cycle.period(1).label == "2027-01-04..2027-01-14"
    assert cycle.period(-1).label == "2026-12-15..2026-12-25"
    # 2026-12-25 + 360 days: +6 -> 2026-12-31, +365 -> 2027-12-31, -11 -> 2027-12-20.
    assert cycle.period(36).first_day == date(2027, 12, 20)
    assert all(cycle.period(n).days == 10 for n in range(-3, 40))
    # 2027-01-13 23:59 local is still in period 1; 2027-01-14 00:00 is period 2.
    assert cycle.index_containing(local("America/New_York", 2027, 1, 13, 23, 59)) == 1
    assert cycle.index_containing(local("America/New_York", 2027, 1, 14)) == 2


def test_weekly_on_monday() -> None:
    """Effective Wednesday 2026-12-02: the week Monday Nov 30 .. Monday Dec 7 is period 0."""
    cycle = weekly_on(calendar.MONDAY, date(2026, 12, 2), tz="Europe/Madrid")
    assert cycle.period(0).label == "2026-11-30..2026-12-07"
    assert all(cycle.period(n).first_day.weekday() == calendar.MONDAY for n in range(-5, 60))
    assert all(cycle.period(n).days == 7 for n in range(-5, 60))
    # Mondays of December 2026: 7, 14, 21, 28.
    december = cycle.periods_starting_in(2026, 12)
    assert [p.first_day.day for p in december] == [7, 14, 21, 28]
    with pytest.raises(ValueError, match="4 periods of this cycle start in 2026-12"):
        cycle.period_named("2026-12")
    assert cycle.period_named("2026-12-14..2026-12-21").first_day == date(2026, 12, 14)
    # Effective on a Monday: that Monday starts period 0.
    assert weekly_on(0, date(2026, 11, 30), tz="UTC").anchor == date(2026, 11, 30)


def test_weekly_on_sunday() -> None:
    """A Sunday cycle from Wednesday 2026-12-02 starts Sunday Nov 29."""
    cycle = weekly_on(calendar.SUNDAY, date(2026, 12, 2), tz="UTC")
    assert cycle.period(0).label == "2026-11-29..2026-12-06"


def test_quarterly_from_january_31() -> None:
    """Jan 31, Apr 30, Jul 31, Oct 31, Jan 31 2028: each from the anchor."""
    cycle = recurring("quarterly", date(2027, 1, 31), tz="UTC")
    assert first_days(cycle, 5) == [
        date(2027, 1, 31),
        date(2027, 4, 30),
        date(2027, 7, 31),
        date(2027, 10, 31),
        date(2028, 1, 31),
    ]
    # Jan 31 -> Apr 30 2027: 28 (to Feb 28) + 31 (to Mar 31) + 30 (to Apr 30) = 89 days.
    assert cycle.period(0).days == 89
    assert cycle.period_named("2027-04") == cycle.period(1)
    with pytest.raises(ValueError, match="0 periods of this cycle start in 2027-02"):
        cycle.period_named("2027-02")


def test_quarterly_from_february_29() -> None:
    """Feb 29 2028, May 29, Aug 29, Nov 29, Feb 28 2029, then May 29 again (chaining gives 28)."""
    cycle = recurring("quarterly", date(2028, 2, 29), tz="UTC")
    assert first_days(cycle, 6) == [
        date(2028, 2, 29),
        date(2028, 5, 29),
        date(2028, 8, 29),
        date(2028, 11, 29),
        date(2029, 2, 28),
        date(2029, 5, 29),
    ]


def test_yearly_from_february_29() -> None:
    """Feb 29 2028, Feb 28 2029, 2030, 2031, Feb 29 2032."""
    cycle = recurring("yearly", date(2028, 2, 29), tz="UTC")
    assert first_days(cycle, 5) == [
        date(2028, 2, 29),
        date(2029, 2, 28),
        date(2030, 2, 28),
        date(2031, 2, 28),
        date(2032, 2, 29),
    ]
    # 2028-02-29 -> 2029-02-28: 365 days; 2031-02-28 -> 2032-02-29: 366 days.
    assert [cycle.period(n).days for n in (0, 3)] == [365, 366]


def test_yearly_from_january_31() -> None:
    """Jan 31 every year: no month is short of day 31 in January."""
    cycle = recurring("yearly", date(2027, 1, 31), tz="UTC")
    assert first_days(cycle, 3) == [date(2027, 1, 31), date(2028, 1, 31), date(2029, 1, 31)]


def test_recurring_cadences() -> None:
    """weekly, monthly and every N days from the charge's anchor."""
    assert recurring("weekly", date(2026, 12, 3), tz="UTC").period(1).label == (
        "2026-12-10..2026-12-17"
    )
    assert recurring("monthly", date(2027, 1, 31), tz="UTC").period(2).first_day == date(
        2027, 3, 31
    )
    every_45 = recurring("days", date(2026, 1, 1), tz="UTC", every_days=45)
    # 2026-01-01 + 45 = Feb 15; + 90 = Apr 1.
    assert first_days(every_45, 3) == [date(2026, 1, 1), date(2026, 2, 15), date(2026, 4, 1)]
    with pytest.raises(ValueError, match="every_days"):
        recurring("days", date(2026, 1, 1), tz="UTC")
    with pytest.raises(ValueError, match="every_days"):
        recurring("monthly", date(2026, 1, 1), tz="UTC", every_days=3)
    with pytest.raises(ValueError, match="unknown cadence 'fortnightly'"):
        recurring("fortnightly", date(2026, 1, 1), tz="UTC")


# --- DST: boundaries are local midnights -----------------------------------------------


@pytest.mark.parametrize(
    ("zone", "month", "hours"),
    [
        # London: clocks go forward Sun 2026-03-29 01:00 UTC, back Sun 2026-10-25 01:00 UTC.
        ("Europe/London", "2026-03", 31 * 24 - 1),  # 743
        ("Europe/London", "2026-10", 31 * 24 + 1),  # 745
        ("Europe/London", "2026-07", 31 * 24),
        # New York: forward Sun 2026-03-08, back Sun 2026-11-01.
        ("America/New_York", "2026-03", 31 * 24 - 1),  # 743
        ("America/New_York", "2026-11", 30 * 24 + 1),  # 721
        ("America/New_York", "2026-12", 31 * 24),
    ],
)
def test_a_dst_month_is_an_hour_shorter_or_longer(zone: str, month: str, hours: int) -> None:
    """The calendar month of a DST change still has its 31 (30) days, and 743/745 (721) hours."""
    period = fixed_date(1, date(2026, 1, 1), tz=zone).period_named(month)
    assert period.label == month
    assert period.duration == hours * HOUR
    assert period.start.hour == 0 and period.end.hour == 0
    assert period.days == calendar.monthrange(2026, int(month[-2:]))[1]


def test_london_boundaries_in_utc() -> None:
    """April 2026 in London starts 2026-03-31 23:00 UTC (BST); November at 00:00 UTC (GMT)."""
    cycle = fixed_date(1, date(2026, 1, 1), tz="Europe/London")
    april = cycle.period_named("2026-04")
    assert april.start.astimezone(UTC) == datetime(2026, 3, 31, 23, tzinfo=UTC)
    assert april.start.utcoffset() == HOUR
    assert cycle.period_named("2026-11").start.astimezone(UTC) == datetime(2026, 11, 1, tzinfo=UTC)
    # 22:59:59 UTC on Mar 31 is 23:59:59 BST, still March; 23:00 UTC is April.
    march = cycle.period_named("2026-03")
    assert cycle.period_containing(datetime(2026, 3, 31, 22, 59, 59, tzinfo=UTC)) == march
    assert cycle.period_containing(datetime(2026, 3, 31, 23, tzinfo=UTC)) == april
    assert march.contains(datetime(2026, 3, 31, 22, 59, 59, tzinfo=UTC))
    assert not march.contains(datetime(2026, 3, 31, 23, tzinfo=UTC))


def test_new_york_boundaries_in_utc() -> None:
    """December 2026 in New York starts 2026-12-01 05:00 UTC (EST)."""
    cycle = fixed_date(1, date(2026, 1, 1), tz="America/New_York")
    assert cycle.period_containing(datetime(2026, 12, 1, 4, 59, 59, tzinfo=UTC)).label == "2026-11"
    assert cycle.period_containing(datetime(2026, 12, 1, 5, tzinfo=UTC)).label == "2026-12"
    # A week with the March change: Monday Mar 2 .. Monday Mar 9 is 7 * 24 - 1 = 167 hours.
    week = weekly_on(0, date(2026, 3, 4), tz="America/New_York").period(0)
    assert week.label == "2026-03-02..2026-03-09"
    assert week.duration == 167 * HOUR


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("Europe/London", date(2026, 3, 29), 23),
        ("Europe/London", date(2026, 10, 25), 25),
        ("America/New_York", date(2026, 3, 8), 23),
        ("America/New_York", date(2026, 11, 1), 25),
        ("Europe/London", date(2026, 3, 30), 24),
    ],
)
def test_a_dst_day_is_23_or_25_hours(zone: str, day: date, hours: int) -> None:
    """Daily periods on the change days are one local day each, of 23 or 25 hours."""
    period = fixed_period(day, 1, tz=zone).period(0)
    assert period.days == 1
    assert period.duration == hours * HOUR


def test_a_day_without_midnight_starts_when_the_gap_ends() -> None:
    """Santiago skips 00:00-01:00 on 2026-09-06 (-04 -> -03): that day starts at 01:00 -03."""
    sept_6 = local_midnight(date(2026, 9, 6), ZoneInfo("America/Santiago"))
    assert (sept_6.hour, sept_6.utcoffset()) == (1, timedelta(hours=-3))
    assert sept_6.astimezone(UTC) == datetime(2026, 9, 6, 4, tzinfo=UTC)
    days = fixed_period(date(2026, 9, 5), 1, tz="America/Santiago")
    # Sep 5 00:00 -04 (04:00 UTC) .. Sep 6 01:00 -03 (04:00 UTC): 24 h; Sep 6 itself: 23 h.
    assert [days.period(n).duration for n in (0, 1)] == [24 * HOUR, 23 * HOUR]
    assert days.period(1).first_day == date(2026, 9, 6)
    # Back on 2026-04-05 (24:00 -03 -> 23:00 -04): Saturday Apr 4 has 25 hours.
    assert fixed_period(date(2026, 4, 4), 1, tz="America/Santiago").period(0).duration == (
        25 * HOUR
    )


# --- lookups -------------------------------------------------------------------------


def test_periods_overlapping_is_half_open() -> None:
    """[Dec 20, Feb 15) on a 15th cycle touches two periods; the one starting Feb 15 is out."""
    cycle = fixed_date(15, date(2026, 12, 1), tz="Europe/Berlin")
    found = cycle.periods_overlapping(
        local("Europe/Berlin", 2026, 12, 20), local("Europe/Berlin", 2027, 2, 15)
    )
    assert [p.label for p in found] == ["2026-12-15..2027-01-15", "2027-01-15..2027-02-15"]
    # One microsecond further and Feb 15's period overlaps.
    longer = cycle.periods_overlapping(
        local("Europe/Berlin", 2026, 12, 20),
        local("Europe/Berlin", 2027, 2, 15) + timedelta(microseconds=1),
    )
    assert len(longer) == 3
    empty = local("Europe/Berlin", 2026, 12, 20)
    assert cycle.periods_overlapping(empty, empty) == []
    # UTC bounds: 2027-01-14 23:00 UTC is Jan 15 00:00 in Berlin, the start of a period.
    utc_found = cycle.periods_overlapping(
        datetime(2027, 1, 14, 23, tzinfo=UTC), datetime(2027, 1, 15, tzinfo=UTC)
    )
    assert [p.label for p in utc_found] == ["2027-01-15..2027-02-15"]


def test_period_names_refused() -> None:
    """Malformed names, impossible dates and ranges that are not a period are ValueErrors."""
    cycle = fixed_date(15, date(2026, 12, 1), tz="UTC")
    for name in ["2026-13", "2026-00", "December", "2026-12-15", "2026-02-30..2026-03-15"]:
        with pytest.raises(ValueError):
            cycle.period_named(name)
    with pytest.raises(ValueError, match="is not a period of this cycle"):
        cycle.period_named("2026-12-15..2027-01-16")
    # A calendar month is named by YYYY-MM; its range form is accepted too.
    months = fixed_date(1, date(2026, 12, 1), tz="UTC")
    assert months.period_named("2026-12-01..2027-01-01").label == "2026-12"


def test_naive_instants_are_refused() -> None:
    """A datetime without a zone names no instant."""
    cycle = fixed_date(1, date(2026, 1, 1), tz="UTC")
    with pytest.raises(ValueError, match="no time zone"):
        cycle.period_containing(datetime(2026, 5, 1))


def test_schedule_validation() -> None:
    """Bad counts, zones, anchors and day-of-month settings are refused at construction."""
    with pytest.raises(ValueError, match="count"):
        Schedule(Unit.DAYS, 0, date(2026, 1, 1), "UTC")
    with pytest.raises(ValueError, match="IANA"):
        Schedule(Unit.DAYS, 1, date(2026, 1, 1), "Mars/Olympus")
    with pytest.raises(ValueError, match="not day 31"):
        Schedule(Unit.MONTHS, 1, date(2026, 1, 30), "UTC", day_of_month=31)
    with pytest.raises(ValueError, match="month schedules only"):
        Schedule(Unit.DAYS, 1, date(2026, 1, 1), "UTC", day_of_month=1)
    with pytest.raises(ValueError, match=r"1\.\.31"):
        fixed_date(32, date(2026, 1, 1), tz="UTC")
    with pytest.raises(ValueError, match="weekday"):
        weekly_on(7, date(2026, 1, 1), tz="UTC")
    with pytest.raises(TypeError):
        Schedule(Unit.DAYS, 1, datetime(2026, 1, 1), "UTC")
    # A stored unit string works, and Feb 28 is day 31 of February 2027.
    stored = Schedule("months", 1, date(2027, 2, 28), "UTC", day_of_month=31)  # type: ignore[arg-type]
    assert stored.unit is Unit.MONTHS
    assert stored.period(1).first_day == date(2027, 3, 31)
    berlin = ZoneInfo("Europe/Berlin")
    with pytest.raises(ValueError, match="must end after it starts"):
        Period(datetime(2026, 1, 2, tzinfo=berlin), datetime(2026, 1, 1, tzinfo=berlin))
    with pytest.raises(ValueError, match="one ZoneInfo zone"):
        Period(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))


# --- properties ----------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "America/Santiago",  # DST gap at midnight
    "Australia/Lord_Howe",  # 30-minute DST
    "Asia/Kolkata",
    "Pacific/Auckland",
]


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    """Any schedule: days, weeks or months, anchored 1990..2060 in a DST-rich zone."""
    tz = draw(st.sampled_from(ZONES))
    anchor = draw(st.dates(date(1990, 1, 1), date(2060, 12, 31)))
    kind = draw(st.sampled_from(["days", "weeks", "months", "fixed"]))
    if kind == "days":
        return fixed_period(anchor, draw(st.integers(1, 60)), tz=tz)
    if kind == "weeks":
        return Schedule(Unit.WEEKS, draw(st.integers(1, 8)), anchor, tz)
    if kind == "fixed":
        return fixed_date(draw(st.integers(1, 31)), anchor, tz=tz)
    return Schedule(Unit.MONTHS, draw(st.sampled_from([1, 2, 3, 6, 12, 13])), anchor, tz)


@given(schedules(), st.integers(-200, 200))
def test_periods_are_contiguous_local_midnights(schedule: Schedule, n: int) -> None:
    """period(n).end == period(n+1).start, each a local midnight, in the plan's zone."""
    period, following = schedule.period(n), schedule.period(n + 1)
    assert period.end == following.start
    assert period.end.astimezone(UTC) == following.start.astimezone(UTC)
    assert period.start.tzinfo is schedule.zone
    assert period.days >= 1
    assert period.start.astimezone(UTC) < period.end.astimezone(UTC)
    # The first instant of the day: the instant one microsecond before is the day before.
    before = period.start.astimezone(UTC) - timedelta(microseconds=1)
    assert before.astimezone(schedule.zone).date() == period.first_day - timedelta(days=1)
    # A DST change moves a period by at most a few hours from its days x 24 h.
    assert abs(period.duration - period.days * 24 * HOUR) <= 3 * HOUR


@given(schedules(), st.integers(-200, 200))
def test_month_periods_never_drift(schedule: Schedule, n: int) -> None:
    """A month period starts on its day of the month, or the last day of a shorter month."""
    start = schedule.period(n).first_day
    if schedule.unit is Unit.MONTHS:
        last = calendar.monthrange(start.year, start.month)[1]
        assert start.day == min(schedule.month_day, last)
    else:
        step = schedule.count * (7 if schedule.unit is Unit.WEEKS else 1)
        assert (start - schedule.anchor).days == n * step


@given(
    schedules(), st.datetimes(datetime(1985, 1, 1), datetime(2065, 1, 1), timezones=st.just(UTC))
)
def test_period_containing_contains_the_instant(schedule: Schedule, instant: datetime) -> None:
    """Any UTC instant lies in exactly the period returned, and in neither neighbour."""
    n = schedule.index_containing(instant)
    period = schedule.period_containing(instant)
    assert period == schedule.period(n)
    assert period.contains(instant)
    assert period.start.astimezone(UTC) <= instant < period.end.astimezone(UTC)
    assert not schedule.period(n - 1).contains(instant)
    assert not schedule.period(n + 1).contains(instant)
    # The same instant given in the plan's own zone finds the same period.
    assert schedule.period_containing(instant.astimezone(schedule.zone)) == period


@given(schedules(), st.integers(-100, 100), st.integers(1, 5))
def test_overlapping_and_named_agree_with_indexes(schedule: Schedule, n: int, span: int) -> None:
    """periods_overlapping(start of n, start of n+span) is n..n+span-1; labels read back."""
    found = schedule.periods_overlapping(schedule.period(n).start, schedule.period(n + span).start)
    assert found == [schedule.period(k) for k in range(n, n + span)]
    period = schedule.period(n)
    assert schedule.period_named(
        f"{period.first_day.isoformat()}..{period.end_day.isoformat()}"
    ) == (period)
    assert schedule.index_containing(period.start) == n
    last_instant = period.end.astimezone(UTC) - timedelta(microseconds=1)
    assert schedule.index_containing(last_instant) == n
