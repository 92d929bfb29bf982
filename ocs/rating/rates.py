"""The one rating function: what a call of N seconds costs, and its exact inverse.

Authorization, stop, the CDR and (later) billing's re-rating all call
``cost`` and ``max_duration`` here; nothing else in ocs computes a price.

Rules, stated once:

* A call of 0 seconds (not answered) costs nothing, not even the connect fee.
* The call's time is cut into tiers: the base tier from second 0, then each
  ``Tier`` from its ``start``. A tier bills the seconds of the call inside it
  rounded up to its increment, never beyond the tier's end; the base tier
  bills at least the first block. A tier's flat amount is charged once when
  the call goes past its start.
* Cost = connect fee + flat amounts + sum(price x billed) / ``per``, rounded
  *up* to the micro-unit once per call, on that total. ``per`` is 60 for
  prices per minute; 1 for prices per unit (MB, kWh, messages), whose
  quantities are rated exactly like seconds.
* Surcharges: a percentage of that usage cost (computed before the rounding,
  so the total is still rounded once) plus a flat amount per answered call.
* Time bands: increments, the first block and tiers count from the call's
  start whatever the band; each billed second of the base tier is priced at
  the band its moment falls in (seconds billed past the real end by rounding
  at the band they would fall in). A call crossing a band edge is thus split
  at the edge; tiers keep their own prices in every band.
* A max cost caps the total: beyond it the call is free (``cut_at_max_cost``
  False), or the call is cut where its cost would pass the cap (True: the
  granted duration stops there).
* ``max_duration(funds)`` is the longest duration whose cost fits the funds,
  capped: ``cost(m) <= funds < cost(m + increment)`` unless the cap binds.
* Usage counters (bundles of seconds): a call the counter covers for ``c``
  seconds pays the counter's rate for its first min(d, c) seconds, and the
  zone's rate for the rest as that part of the whole call:
  ``cost(rate, d) - cost(rate, c)``. So a call the counter covers in part pays
  no connect fee, and increments and tiers still count from the call's start; a max
  cost that cuts the call cuts it where ``cost(rate, d)`` would pass the cap, as
  without the counter.
"""

from dataclasses import dataclass

from ocs.rating.rate_shapes import Rate, Segments, Tier

__all__ = [
    "MAX_QUANTITY",
    "CounterSplit",
    "Rate",
    "Segments",
    "Tier",
    "banded_seconds",
    "billed_seconds",
    "cost",
    "cost_with_counter",
    "counter_seconds_used",
    "increment_at",
    "max_duration",
    "max_duration_with_counter",
]

# The most seconds or units one record may hold, measured or billed: a CDR's duration
# and billed_seconds are PostgreSQL INTEGERs, and a record debited that its row cannot
# hold would be set aside unwritten by the ledger writer (money moved with no record).
MAX_QUANTITY = 2**31 - 1


def _base_billed(rate: Rate, duration: int) -> int:
    if duration <= rate.first_block:
        return rate.first_block
    over = duration - rate.first_block
    return rate.first_block + -(-over // rate.increment) * rate.increment


def billed_seconds(rate: Rate, duration: int) -> int:
    """Seconds (or units) the call is billed for, over all tiers."""
    if duration < 0:
        raise ValueError("duration must not be negative")
    if duration == 0:
        return 0
    if not rate.tiers:
        return _base_billed(rate, duration)
    return sum(billed for billed, _, _ in _tier_parts(rate, duration))


def banded_seconds(rate: Rate, duration: int) -> int:
    """Seconds of a call of ``duration`` priced at their band: the base tier's billed ones."""
    if duration <= 0:
        return 0
    if not rate.tiers:
        return _base_billed(rate, duration)
    end = rate.tiers[0].start
    return min(_base_billed(rate, min(duration, end)), end)


def _tier_parts(rate: Rate, duration: int) -> list[tuple[int, int, int]]:
    """(billed, price, flat) of each tier the call reaches."""
    ends = [t.start for t in rate.tiers] + [None]
    parts = []
    base_end = ends[0]
    base = _base_billed(rate, duration if base_end is None else min(duration, base_end))
    if base_end is not None:
        base = min(base, base_end)
    parts.append((base, rate.price_per_minute, 0))
    for tier, end in zip(rate.tiers, ends[1:], strict=True):
        if duration <= tier.start:
            break
        used = (duration if end is None else min(duration, end)) - tier.start
        billed = -(-used // tier.increment) * tier.increment
        if end is not None:
            billed = min(billed, end - tier.start)
        parts.append((billed, tier.price_per_minute, tier.flat))
    return parts


def _banded_amount(rate: Rate, billed: int, bands: Segments) -> int:
    """price x seconds of the base tier's first ``billed`` seconds, each at its band's price."""
    prices = dict(rate.band_prices)
    amount = 0
    for n, (offset, band) in enumerate(bands):
        if offset >= billed:
            break
        end = bands[n + 1][0] if n + 1 < len(bands) else billed
        price = prices.get(band, rate.price_per_minute) if band else rate.price_per_minute
        amount += price * (min(end, billed) - offset)
    return amount


def _uncapped_cost(rate: Rate, duration: int, bands: Segments | None = None) -> int:
    if duration == 0:
        return 0
    banded = bool(rate.band_prices and bands)
    if not rate.tiers:
        billed = _base_billed(rate, duration)
        amount = (
            _banded_amount(rate, billed, bands)
            if banded and bands
            else rate.price_per_minute * billed
        )
        fixed = rate.connect_fee
    else:
        parts = _tier_parts(rate, duration)
        if banded and bands:
            base, *rest = parts
            amount = _banded_amount(rate, base[0], bands) + sum(p * b for b, p, _ in rest)
        else:
            amount = sum(price * billed for billed, price, _ in parts)
        fixed = rate.connect_fee + sum(flat for _, _, flat in parts)
    if not rate.surcharge_percent_bp:
        return fixed + -(-amount // rate.per) + rate.surcharge_flat
    # The percentage applies to the whole usage cost, and the total is rounded once.
    numerator = (fixed * rate.per + amount) * (10_000 + rate.surcharge_percent_bp)
    return -(-numerator // (rate.per * 10_000)) + rate.surcharge_flat


def cost(rate: Rate, duration: int, bands: Segments | None = None) -> int:
    """Cost in micro-units of a call lasting ``duration`` seconds (or units).

    ``bands``: the time bands from the call's start (``BandSchedule.segments``),
    for a rate with band prices.
    """
    if duration < 0:
        raise ValueError("duration must not be negative")
    total = _uncapped_cost(rate, duration, bands)
    if rate.max_cost and total > rate.max_cost:
        return rate.max_cost
    return total


def increment_at(rate: Rate, duration: int) -> int:
    """The billing step that applies just after ``duration``."""
    step = rate.increment
    for tier in rate.tiers:
        if duration >= tier.start:
            step = tier.increment
    return step


def _longest_within(
    rate: Rate, budget: int, cap: int, capped: bool, bands: Segments | None = None
) -> int:
    """Largest d in [0, cap] with cost(d) <= budget, by bisection (cost never decreases)."""
    price = cost if capped else _uncapped_cost
    if price(rate, 1, bands) > budget:
        return 0
    low, high = 1, cap
    while low < high:
        middle = (low + high + 1) // 2
        if price(rate, middle, bands) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def max_duration(rate: Rate, funds: int, cap: int, bands: Segments | None = None) -> int:
    """Longest duration (≤ cap) whose cost is within ``funds``; 0 if not even one second."""
    if cap < 1 or funds < cost(rate, 1, bands):
        return 0
    if not rate.simple:
        longest = _longest_within(rate, funds, cap, capped=True, bands=bands)
        if rate.max_cost and rate.cut_at_max_cost:
            # The call is cut where its uncapped cost would pass the cap.
            longest = min(
                longest, _longest_within(rate, rate.max_cost, cap, capped=False, bands=bands)
            )
        return longest
    if rate.price_per_minute == 0:
        return cap
    budget = funds - rate.connect_fee
    # ceil(p * b / per) <= budget  <=>  p * b <= per * budget, for integer budget.
    most_billed = (rate.per * budget) // rate.price_per_minute
    if most_billed <= rate.first_block:
        # cost(1) <= funds means the first block fits: the call may last exactly it.
        return min(max(rate.first_block, 1), cap)
    steps = (most_billed - rate.first_block) // rate.increment
    return min(rate.first_block + steps * rate.increment, cap)


@dataclass(frozen=True, slots=True)
class CounterSplit:
    """A usage counter covering a call's first ``seconds`` at its own ``rate``."""

    rate: Rate
    seconds: int


def counter_seconds_used(split: CounterSplit | None, duration: int) -> int:
    """Seconds of a call of ``duration`` the counter pays for."""
    return 0 if split is None else min(duration, split.seconds)


def cost_with_counter(
    rate: Rate, duration: int, split: CounterSplit | None, bands: Segments | None = None
) -> int:
    """``cost`` of a call whose first seconds a usage counter covers (module rules)."""
    if split is None or split.seconds <= 0:
        return cost(rate, duration, bands)
    covered = min(duration, split.seconds)
    counted = cost(split.rate, covered)
    if duration <= covered:
        return counted
    return counted + cost(rate, duration, bands) - cost(rate, covered, bands)


def max_duration_with_counter(
    rate: Rate, funds: int, cap: int, split: CounterSplit | None, bands: Segments | None = None
) -> int:
    """Longest duration (≤ cap) whose ``cost_with_counter`` fits the funds."""
    if split is None or split.seconds <= 0:
        return max_duration(rate, funds, cap, bands)
    if rate.max_cost and rate.cut_at_max_cost:
        # Cut where the zone rate's cost of the whole call would pass its cap, as without
        # a counter: ``cost_with_counter`` takes the capped cost, which stops growing
        # there, so the funds alone would let the call run on free to ``cap``.
        cap = min(cap, _longest_within(rate, rate.max_cost, cap, capped=False, bands=bands))
    if cap < 1 or cost_with_counter(rate, 1, split, bands) > funds:
        return 0
    low, high = 1, cap
    while low < high:
        middle = (low + high + 1) // 2
        if cost_with_counter(rate, middle, split, bands) <= funds:
            low = middle
        else:
            high = middle - 1
    return low
