"""Proration by local calendar day: days used / days in period, halves away from zero (0019)."""

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.billing.currency import format_amount, round_line
from ocs.billing.periods import fixed_date
from ocs.billing.proration import Split, change, prorate, split

# January 2027 in Berlin: a calendar month of 31 days.
JANUARY = fixed_date(1, date(2027, 1, 1), tz="Europe/Berlin").period_named("2027-01")


def test_prorate_a_31_day_month_at_day_11() -> None:
    """10.00 a month changed on Jan 11: old [Jan 1, Jan 11) is 10 days, new [Jan 11, Feb 1) 21."""
    cut = split(JANUARY, date(2027, 1, 11))
    assert cut == Split(date(2027, 1, 11), old_days=10, new_days=21)
    assert cut.period_days == 31
    # 10_000_000 * 10 / 31 = 3_225_806.45... -> 3_225_806 (under half: down)
    assert cut.old_part(10_000_000) == 3_225_806
    # 10_000_000 * 21 / 31 = 6_774_193.548... -> 6_774_194 (over half: up)
    assert cut.new_part(10_000_000) == 6_774_194
    # Each part is a line rounded once to cents: 3.23 and 6.77.
    assert format_amount(round_line(3_225_806, "EUR"), "EUR") == "3.23"
    assert format_amount(round_line(6_774_194, "EUR"), "EUR") == "6.77"


def test_prorate_rounds_halves_away_from_zero() -> None:
    """An exact half micro-unit goes away from zero, for charges and credits alike."""
    assert prorate(3, 1, 2) == 2  # 1.5 -> 2
    assert prorate(-3, 1, 2) == -2  # -1.5 -> -2
    assert prorate(-10_000_000, 21, 31) == -6_774_194
    assert prorate(10_000_000, 0, 31) == 0
    assert prorate(10_000_000, 31, 31) == 10_000_000


def test_prorate_refuses_impossible_days() -> None:
    """Used days outside 0..period days, or an empty period, are caller mistakes."""
    for used, days in [(-1, 31), (32, 31), (0, 0)]:
        with pytest.raises(ValueError):
            prorate(10_000_000, used, days)


def test_upgrade_then_downgrade_in_one_cycle() -> None:
    """9.99 billed in advance; 19.99 from Jan 11; back to 9.99 from Jan 21 (31-day January).

    Jan 11: credit -9_990_000 * 21/31 = -6_767_419.35 -> -6_767_419 (-6.77)
            charge 19_990_000 * 21/31 = 13_541_612.90 -> 13_541_613 (13.54)
    Jan 21: credit -19_990_000 * 11/31 = -7_093_225.81 -> -7_093_226 (-7.09)
            charge  9_990_000 * 11/31 =  3_544_838.71 ->  3_544_839 (3.54)
    Invoice: 9.99 - 6.77 + 13.54 - 7.09 + 3.54 = 13.21, the sum of its rounded lines
    (one line for the whole would be (10*9.99 + 10*19.99 + 11*9.99) / 31 = 13.2158 -> 13.22).
    """
    upgrade = change(JANUARY, date(2027, 1, 11), 9_990_000, 19_990_000)
    assert (upgrade.split.old_days, upgrade.split.new_days) == (10, 21)
    assert (upgrade.credit, upgrade.charge) == (-6_767_419, 13_541_613)
    downgrade = change(JANUARY, date(2027, 1, 21), 19_990_000, 9_990_000)
    assert (downgrade.split.old_days, downgrade.split.new_days) == (20, 11)
    assert (downgrade.credit, downgrade.charge) == (-7_093_226, 3_544_839)

    lines = [9_990_000, upgrade.credit, upgrade.charge, downgrade.credit, downgrade.charge]
    rounded = [round_line(amount, "EUR") for amount in lines]
    assert [format_amount(amount, "EUR") for amount in rounded] == [
        "9.99",
        "-6.77",
        "13.54",
        "-7.09",
        "3.54",
    ]
    assert format_amount(sum(rounded), "EUR") == "13.21"


def test_add_on_and_removal() -> None:
    """An add-on (nothing before) has no credit; a removal (nothing after) has no charge."""
    add_on = change(JANUARY, date(2027, 1, 11), 0, 10_000_000)
    assert (add_on.credit, add_on.charge) == (0, 6_774_194)
    removal = change(JANUARY, date(2027, 1, 11), 10_000_000, 0)
    assert (removal.credit, removal.charge) == (-6_774_194, 0)


def test_the_change_day_is_the_local_day_in_the_plans_zone() -> None:
    """2027-01-10 23:30 UTC is Jan 11 00:30 in Berlin (day 11), but still Jan 10 in London."""
    instant = datetime(2027, 1, 10, 23, 30, tzinfo=UTC)
    assert split(JANUARY, instant) == Split(date(2027, 1, 11), 10, 21)
    london = fixed_date(1, date(2027, 1, 1), tz="Europe/London").period_named("2027-01")
    # London: old [Jan 1, Jan 10) 9 days, new [Jan 10, Feb 1) 22 days.
    assert split(london, instant) == Split(date(2027, 1, 10), 9, 22)


def test_a_dst_month_prorates_by_days_not_hours() -> None:
    """London March 2026 has 743 hours but 31 days: from Mar 29 (the 23-hour day) is 3/31."""
    march = fixed_date(1, date(2026, 3, 1), tz="Europe/London").period_named("2026-03")
    cut = split(march, date(2026, 3, 29))
    assert (cut.old_days, cut.new_days) == (28, 3)
    assert cut.new_part(31_000_000) == 3_000_000  # 31.00 * 3/31 = 3.00 exactly


def test_a_short_period_on_the_31st() -> None:
    """Day-31 cycle, Feb 28 2027 .. Mar 31: 31 days; a start on Mar 15 is 16 of them."""
    period = fixed_date(31, date(2027, 3, 1), tz="UTC").period_named("2027-02")
    assert period.days == 31
    cut = split(period, date(2027, 3, 15))
    # [Feb 28, Mar 15) = 1 + 14 = 15 days; [Mar 15, Mar 31) = 16 days.
    assert (cut.old_days, cut.new_days) == (15, 16)
    # 12.00 * 16/31 = 192_000_000 / 31 = 6_193_548.387 -> 6_193_548
    assert cut.new_part(12_000_000) == 6_193_548


def test_change_days_at_the_edges_and_outside() -> None:
    """The first day puts the whole period in the new part, the end day all in the old."""
    assert split(JANUARY, date(2027, 1, 1)) == Split(date(2027, 1, 1), 0, 31)
    assert split(JANUARY, date(2027, 2, 1)) == Split(date(2027, 2, 1), 31, 0)
    for outside in (date(2026, 12, 31), date(2027, 2, 2)):
        with pytest.raises(ValueError, match="outside the period 2027-01"):
            split(JANUARY, outside)
    with pytest.raises(ValueError, match="no time zone"):
        split(JANUARY, datetime(2027, 1, 11))


@given(
    st.integers(-(10**12), 10**12),
    st.integers(1, 366).flatmap(lambda days: st.tuples(st.integers(0, days), st.just(days))),
)
def test_parts_add_up_within_a_micro_unit(amount: int, used_and_days: tuple[int, int]) -> None:
    """Old part + new part is the amount within 1 micro; each part is the nearest micro."""
    used, days = used_and_days
    cut = Split(date(2027, 1, 1), used, days - used)
    old, new = cut.old_part(amount), cut.new_part(amount)
    assert abs(old + new - amount) <= 1
    assert abs(old * days - amount * used) * 2 <= days
    assert prorate(-amount, used, days) == -old
