"""The one rating function: what a call of N seconds costs, and its exact inverse.

Authorization, stop, the CDR and (later) billing's re-rating all call
``cost`` and ``max_duration`` here; nothing else in ocs computes a price.

Rules, stated once:

* A call of 0 seconds (not answered) costs nothing, not even the connect fee.
* Billed seconds: at least the first block, then whole increments:
  ``billed = first_block + ceil((d - first_block) / increment) * increment``
  for ``d > first_block``; ``first_block`` for ``0 < d <= first_block``.
* Cost = connect fee + price_per_minute * billed / 60, rounded *up* to the
  micro-unit (the rounding happens once per call, on the total).
* ``max_duration(funds)`` is the longest duration whose cost fits the funds,
  capped: ``cost(m) <= funds < cost(m + increment)`` unless the cap binds.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """One tariff's price shape. Amounts are micro-units, durations seconds."""

    connect_fee: int
    first_block: int
    increment: int
    price_per_minute: int

    def __post_init__(self) -> None:
        if self.connect_fee < 0 or self.price_per_minute < 0:
            raise ValueError("rate amounts must not be negative")
        if self.first_block < 0:
            raise ValueError("first_block must not be negative")
        if self.increment < 1:
            raise ValueError("increment must be at least 1 second")


def billed_seconds(rate: Rate, duration: int) -> int:
    """Seconds the call is billed for after first block and increments."""
    if duration < 0:
        raise ValueError("duration must not be negative")
    if duration == 0:
        return 0
    if duration <= rate.first_block:
        return rate.first_block
    over = duration - rate.first_block
    steps = -(-over // rate.increment)
    return rate.first_block + steps * rate.increment


def cost(rate: Rate, duration: int) -> int:
    """Cost in micro-units of a call lasting ``duration`` seconds."""
    billed = billed_seconds(rate, duration)
    if billed == 0:
        return 0
    return rate.connect_fee + -(-(rate.price_per_minute * billed) // 60)


def max_duration(rate: Rate, funds: int, cap: int) -> int:
    """Longest duration (≤ cap) whose cost is within ``funds``; 0 if not even one second."""
    if cap < 1 or funds < cost(rate, 1):
        return 0
    if rate.price_per_minute == 0:
        return cap
    budget = funds - rate.connect_fee
    # ceil(p * b / 60) <= budget  <=>  p * b <= 60 * budget, for integer budget.
    most_billed = (60 * budget) // rate.price_per_minute
    if most_billed <= rate.first_block:
        # cost(1) <= funds means the first block fits: the call may last exactly it.
        return min(max(rate.first_block, 1), cap)
    steps = (most_billed - rate.first_block) // rate.increment
    return min(rate.first_block + steps * rate.increment, cap)
