"""Time bands: which band (peak, off-peak, weekend, holiday, ...) each second of a call is in.

A plan's schedule is a list of weekly rules (band, weekdays, start and end as
local "HH:MM") plus holiday dates, in the plan's time zone (zoneinfo). A time
no rule covers is in no band: the tariff's base price applies. Holidays take
the whole local day. Band edges fall on local minutes, and a call is placed as
if each of its minutes were looked up in local time, which makes
daylight-saving nights exact: the 60 minutes a spring-forward night skips never
exist, the hour an autumn night repeats is counted twice, each minute in the
band its local time is in.

Looking up every minute cost about 4 ms for a 24-hour call, the loop's time
while an import priced long calls or a stop priced one; a call is therefore
placed by jumping from one band edge (or local midnight) to the next and from
one change of the zone's UTC offset to the next, with the same result
(decision 0032, addendum 2026-12-07).
"""

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ocs.errors import invalid

MINUTES_A_DAY = 24 * 60
# 1970-01-01 (epoch day 0) as a proleptic Gregorian ordinal, and its weekday (Thursday).
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH_WEEKDAY = 3
# How far apart, in minutes, a zone's UTC offset is looked at between band edges. Two
# offset changes of one zone are days apart in the whole tz database (the closest, 4 days,
# Africa/Freetown 1939; daylight-saving rules, months), so at most one falls between two
# looks and bisection finds its first minute.
_OFFSET_LOOK = 6 * 60
Segments = tuple[tuple[int, str | None], ...]  # (offset in seconds, band) in order, from 0


def bands_from(bands: Segments, seconds: int) -> Segments:
    """``bands``, the segments from one moment, as they are from ``seconds`` later: those
    that end by then dropped, the rest moved back by ``seconds`` (the first from 0). The
    bands a call's authorization placed, for the call as it was answered later."""
    if seconds <= 0:
        return bands
    last = len(bands) - 1
    return tuple(
        (max(offset - seconds, 0), band)
        for n, (offset, band) in enumerate(bands)
        if n == last or bands[n + 1][0] > seconds
    )


@dataclass(frozen=True, slots=True)
class BandRule:
    """One time band: the weekdays and the minutes of the local day it covers."""

    band: str
    days: frozenset[int]  # 0 = Monday ... 6 = Sunday
    start: int  # minute of the local day, inclusive
    end: int  # minute of the local day, exclusive (1440 = midnight)


@dataclass(frozen=True)
class BandSchedule:
    """A plan's time bands in its time zone, with holidays that take the holiday band."""

    time_zone: str = "UTC"
    rules: tuple[BandRule, ...] = ()
    holidays: frozenset[date] = field(default_factory=frozenset)
    holiday_band: str = "holiday"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    # The minutes of the local day where a band may change, ascending, ending with
    # midnight (1440): the rules' starts and ends, and midnight (weekday, holiday).
    _edges: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", ZoneInfo(self.time_zone))
        edges = {MINUTES_A_DAY}
        for rule in self.rules:
            edges.update(e for e in (rule.start, rule.end) if 0 < e < MINUTES_A_DAY)
        object.__setattr__(self, "_edges", tuple(sorted(edges)))

    def band_at(self, local: datetime) -> str | None:
        """The band of a local time: the holiday band on a holiday, else the first rule
        covering it; None when no rule does."""
        return self._band_on(local.date(), local.weekday(), local.hour * 60 + local.minute)

    def _band_on(self, day: date, weekday: int, minute: int) -> str | None:
        """The band of ``minute`` of the local day ``day`` (its ``weekday``)."""
        if day in self.holidays:
            return self.holiday_band
        for rule in self.rules:
            if weekday in rule.days and rule.start <= minute < rule.end:
                return rule.band
        return None

    def segments(self, start_epoch: int, length: int) -> Segments:
        """Bands from ``start_epoch`` for ``length`` seconds: (offset, band) at each change."""
        minute, second = divmod(start_epoch, 60)
        relative = _edge_segments(self, minute, (second + length) // 60 + 1)
        # Shift from the start of the minute to the call's own start.
        shifted = [(max(offset - second, 0), band) for offset, band in relative]
        out: list[tuple[int, str | None]] = []
        for offset, band in shifted:
            if out and out[-1][0] == offset:
                out[-1] = (offset, band)
            elif not out or out[-1][1] != band:
                out.append((offset, band))
        return tuple(out)

    def to_json(self) -> str:
        """The schedule as the JSON stored in ``plans.bands``."""
        return json.dumps(
            {
                "time_zone": self.time_zone,
                "rules": [
                    {
                        "band": r.band,
                        "days": sorted(r.days),
                        "start": _hhmm(r.start),
                        "end": _hhmm(r.end),
                    }
                    for r in self.rules
                ],
                "holidays": sorted(d.isoformat() for d in self.holidays),
            }
        )


@lru_cache(maxsize=4096)
def _edge_segments(schedule: BandSchedule, first_minute: int, minutes: int) -> Segments:
    """The bands of the ``minutes`` minutes from epoch minute ``first_minute``, each minute
    in the band of its local wall-clock minute: (offset in seconds, band) at each change.

    From a minute, the band holds until the local clock reaches the next edge of the day
    or the zone's offset changes, whichever comes first; only there is it looked up again.
    """
    zone = schedule._zone
    edges = schedule._edges
    out: list[tuple[int, str | None]] = []
    n = 0
    shift = _offset_minutes(zone, first_minute)
    while n < minutes:
        minute = first_minute + n
        day, of_day = divmod(minute + shift, MINUTES_A_DAY)
        band = schedule._band_on(
            date.fromordinal(_EPOCH_ORDINAL + day), (day + _EPOCH_WEEKDAY) % 7, of_day
        )
        if not out or out[-1][1] != band:
            out.append((n * 60, band))
        # edges ends with 1440 > of_day: there is always a next one.
        until = min(n + edges[bisect_right(edges, of_day)] - of_day, minutes)
        moved = _offset_change(zone, minute, first_minute + until, shift)
        if moved is None:
            n = until
        else:
            n, shift = moved[0] - first_minute, moved[1]
    return tuple(out)


def _offset_minutes(zone: ZoneInfo, minute: int) -> int:
    """The whole minutes the local wall clock is ahead of UTC at epoch minute ``minute``
    (rounded down: an offset of seconds, such as a local mean time's, moves the wall
    clock's minute by its floor)."""
    offset = datetime.fromtimestamp(minute * 60, zone).utcoffset()
    return (int(offset.total_seconds()) // 60) if offset is not None else 0


def _offset_change(zone: ZoneInfo, after: int, through: int, shift: int) -> tuple[int, int] | None:
    """The first epoch minute in (``after``, ``through``] whose offset is not ``shift``
    (the offset at ``after``), with its offset; None when the offset holds throughout."""
    low = after
    while low < through:
        high = min(low + _OFFSET_LOOK, through)
        if _offset_minutes(zone, high) != shift:
            # At most one change between two looks: the minutes before it keep ``shift``.
            while high - low > 1:
                middle = (low + high) // 2
                if _offset_minutes(zone, middle) == shift:
                    low = middle
                else:
                    high = middle
            return high, _offset_minutes(zone, high)
        low = high
    return None


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _minute_of(text: object, field_name: str) -> int:
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        raise invalid(field_name, 'expected local time as "HH:MM"')
    hours, minutes = text[:2], text[3:]
    if not (hours.isdigit() and minutes.isdigit()):
        raise invalid(field_name, 'expected local time as "HH:MM"')
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > MINUTES_A_DAY:
        raise invalid(field_name, "expected 00:00 to 24:00")
    return value


def schedule_from_json(text: str | None) -> BandSchedule | None:
    """The schedule stored in ``plans.bands``; None when the plan has none."""
    if not text:
        return None
    data = json.loads(text)
    if not data:
        return None
    return validate_schedule(data)


def validate_schedule(data: object) -> BandSchedule:
    """A schedule from an API body or the catalog, refused naming the field."""
    if not isinstance(data, dict):
        raise invalid("body", "expected {time_zone, rules, holidays}")
    zone = data.get("time_zone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise invalid("time_zone", f"not an IANA time zone: {zone!r}") from None
    rules = []
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list) or len(raw_rules) > 64:
        raise invalid("rules", "expected a list of at most 64 rules")
    for n, raw in enumerate(raw_rules):
        name = f"rules[{n}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("band"), str) or not raw["band"]:
            raise invalid(f"{name}.band", "expected a band name")
        days = raw.get("days", list(range(7)))
        if (
            not isinstance(days, list)
            or not days
            or any(not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 6 for d in days)
        ):
            raise invalid(f"{name}.days", "expected weekdays 0 (Monday) to 6 (Sunday)")
        start = _minute_of(raw.get("start"), f"{name}.start")
        end = _minute_of(raw.get("end"), f"{name}.end")
        if end <= start:
            raise invalid(f"{name}.end", "must be after start (split a rule at midnight)")
        rules.append(BandRule(raw["band"], frozenset(days), start, end))
    holidays = []
    raw_holidays = data.get("holidays")
    if raw_holidays is None:
        raw_holidays = []
    if not isinstance(raw_holidays, list) or len(raw_holidays) > 366:
        raise invalid("holidays", "expected a list of dates such as 2026-12-25")
    for n, raw in enumerate(raw_holidays):
        try:
            holidays.append(date.fromisoformat(raw))
        except (TypeError, ValueError):
            raise invalid(f"holidays[{n}]", "expected a date such as 2026-12-25") from None
    return BandSchedule(zone, tuple(rules), frozenset(holidays))
