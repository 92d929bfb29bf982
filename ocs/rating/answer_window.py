"""Grants for calls whose answer is still to come: the least over every answer they may have.

A banded call is priced from its answer (decision 0040), but a RADIUS NAS is told its
Session-Timeout at the Access-Accept, before the call rings. A call authorized off-peak
that rings into peak would be granted what its reservation pays off-peak, and a NAS
without Disconnect cuts it only there. So the grant of an unanswered call is the least
``max_duration`` over every answer second in ``[0, window]`` from the authorization, and
its reservation the most its grant may cost over those answers.

Why a few answer seconds suffice. With ``p(s)`` the price of second ``s`` (a step
function that changes only at the band edges, the offsets of ``bands``), a call answered
at ``t`` pays for its first ``L`` band-priced seconds ``A(t) = p(t) + ... + p(t + L - 1)``,
and ``A(t + 1) - A(t) = p(t + L) - p(t)``: ``A`` is linear in ``t`` between the answers
where ``t`` or ``t + L`` is a band edge. Everything else a cost adds (connect fee, tiers,
surcharges, the rounding, the max cost) does not depend on the answer and never falls as
``A`` grows. Between two consecutive points of ``{0, window} U {e, e - L}`` a cost is thus
largest at one of the two, and one evaluation at each point is exact: with no counter the
least grant is the largest duration whose greatest cost over those points fits the funds.
A counter's call pays ``cost(d) - cost(covered)`` of the zone rate (two lengths, two
amounts that are each linear between the points of both); there the greater whole cost of
an interval's two ends less the smaller covered cost bounds every answer inside it. It is
an upper bound, not always the maximum (rounding, the max cost), so a counter's grant may
be a second or so short of the exact least, never long.
"""

import msgspec

from ocs.rating.bands import bands_from
from ocs.rating.rates import (
    CounterSplit,
    Rate,
    Segments,
    banded_seconds,
    cost,
    max_duration_with_counter,
)


def _answers(bands: Segments, window: int, lengths: tuple[int, ...]) -> list[int]:
    """The answer seconds in ``[0, window]`` where a cost may be largest: the ends, each
    band edge inside, and each second from which a call ``length`` long ends at an edge."""
    points = {0, window}
    for offset, _ in bands[1:]:
        points.add(offset)
        for length in lengths:
            points.add(offset - length)
    return sorted(t for t in points if 0 <= t <= window)


def worst_cost(
    rate: Rate, duration: int, split: CounterSplit | None, bands: Segments, window: int
) -> int:
    """The most a call of ``duration`` may cost answered ``0..window`` seconds after the
    moment ``bands`` start from (exact without a counter, an upper bound with one)."""
    if duration <= 0:
        return 0
    covered = 0 if split is None or split.seconds <= 0 else min(duration, split.seconds)
    if split is not None and covered >= duration:
        return cost(split.rate, duration)  # the counter pays it all, by no band
    length = banded_seconds(rate, duration)
    if not covered:
        points = _answers(bands, window, (length,))
        return max(cost(rate, duration, bands_from(bands, t)) for t in points)
    assert split is not None
    points = _answers(bands, window, (length, banded_seconds(rate, covered)))
    whole = [cost(rate, duration, bands_from(bands, t)) for t in points]
    part = [cost(rate, covered, bands_from(bands, t)) for t in points]
    zone = whole[0] - part[0]
    for n in range(len(points) - 1):
        zone = max(zone, max(whole[n], whole[n + 1]) - min(part[n], part[n + 1]))
    return cost(split.rate, covered) + zone


def least_grant(
    rate: Rate, funds: int, cap: int, split: CounterSplit | None, bands: Segments, window: int
) -> int:
    """The longest duration (<= ``cap``) that ``funds`` pay for whenever in ``0..window``
    seconds after the moment ``bands`` start from the call is answered. ``bands`` must
    reach ``window`` plus the call's billed seconds."""
    if window <= 0 or len(bands) < 2:
        return max_duration_with_counter(rate, funds, cap, split, bands)
    # A call cut at its max cost stops where its cost without the cap reaches the cap
    # (``max_duration``), whenever it is answered. ``Rate`` is a msgspec Struct, not a
    # dataclass: ``dataclasses.replace`` raised TypeError on it.
    uncapped = (
        msgspec.structs.replace(rate, max_cost=0)
        if rate.max_cost and rate.cut_at_max_cost
        else None
    )

    def fits(duration: int) -> bool:
        if worst_cost(rate, duration, split, bands, window) > funds:
            return False
        return uncapped is None or worst_cost(uncapped, duration, None, bands, window) <= (
            rate.max_cost
        )

    # No more than the least grant at the ends and the edges: usually that one fits.
    longest = min(
        max_duration_with_counter(rate, funds, cap, split, bands_from(bands, t))
        for t in _answers(bands, window, ())
    )
    if longest <= 0 or fits(longest):
        return max(longest, 0)
    # Else the largest that fits, by bisection (``fits`` holds at ``low`` throughout).
    low, high = 0, longest - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
