"""Time bands: which band (peak, off-peak, weekend, holiday, ...) each second of a call is in.

A plan's schedule is a list of weekly rules (band, weekdays, start and end as
local "HH:MM") plus holiday dates, in the plan's time zone (zoneinfo). A time
no rule covers is in no band: the tariff's base price applies. Holidays take
the whole local day. Band edges fall on local minutes, so the schedule is
evaluated minute by minute in local time, which makes daylight-saving nights
exact: the 60 minutes a spring-forward night skips never exist, the hour an
autumn night repeats is counted twice, each minute in the band its local time
is in.
"""

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ocs.errors import invalid

MINUTES_A_DAY = 24 * 60
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", ZoneInfo(self.time_zone))

    def band_at(self, local: datetime) -> str | None:
        """The band of a local time: the holiday band on a holiday, else the first rule
        covering it; None when no rule does."""
        if local.date() in self.holidays:
            return self.holiday_band
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        for rule in self.rules:
            if weekday in rule.days and rule.start <= minute < rule.end:
                return rule.band
        return None

    def segments(self, start_epoch: int, length: int) -> Segments:
        """Bands from ``start_epoch`` for ``length`` seconds: (offset, band) at each change."""
        minute, second = divmod(start_epoch, 60)
        relative = _minute_segments(self, minute, (second + length) // 60 + 1)
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
def _minute_segments(schedule: BandSchedule, first_minute: int, minutes: int) -> Segments:
    zone = schedule._zone
    out: list[tuple[int, str | None]] = []
    for n in range(minutes):
        local = datetime.fromtimestamp((first_minute + n) * 60, zone)
        band = schedule.band_at(local)
        if not out or out[-1][1] != band:
            out.append((n * 60, band))
    return tuple(out)


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
