"""The shapes of a price: a tariff's ``Rate``, its ``Tier``s, and a call's time-band ``Segments``.

They live apart from the rating functions (``ocs.rating.rates``) because those may be
compiled with mypyc (decision 0038), and mypyc drops a class statement's keywords: a
``Rate`` defined there would lose ``frozen``, ``array_like`` and ``omit_defaults``, and a
live call's record would change its bytes in Redis.
"""

import msgspec

# (offset in seconds from the call's start, band or None) at each band change.
Segments = tuple[tuple[int, str | None], ...]


class Tier(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True, gc=False):
    """From second ``start`` of the call on: a flat amount once, then a price.

    A msgspec Struct kept as an array (``[start, price, increment, flat]``, trailing
    defaults left out): that is how a live call's record carries it in Redis.
    """

    start: int
    price_per_minute: int
    increment: int = 1
    flat: int = 0

    def __post_init__(self) -> None:
        if self.start < 1:
            raise ValueError("a tier starts after second 0 (the base tier covers 0)")
        if self.price_per_minute < 0 or self.flat < 0:
            raise ValueError("tier amounts must not be negative")
        if self.increment < 1:
            raise ValueError("a tier's increment must be at least 1")


class Rate(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True, gc=False):
    """One tariff's price shape. Amounts are micro-units, durations seconds (or units).

    As msgpack (in a live call's record) it is an array of its fields in this order,
    trailing defaults left out: a plain rate is four numbers. Do not reorder the fields.
    """

    connect_fee: int
    first_block: int
    increment: int
    price_per_minute: int  # per ``per`` seconds or units
    tiers: tuple[Tier, ...] = ()
    max_cost: int = 0  # 0: no cap
    cut_at_max_cost: bool = False
    per: int = 60
    # Usage surcharges, part of the real-time cost (so reservations cover them):
    # a percentage in basis points (2.5% = 250) and a flat amount per answered call.
    surcharge_percent_bp: int = 0
    surcharge_flat: int = 0
    # The base tier's price per band (time bands); a band not listed, or a time in
    # no band, pays ``price_per_minute``.
    band_prices: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.connect_fee < 0 or self.price_per_minute < 0 or self.max_cost < 0:
            raise ValueError("rate amounts must not be negative")
        if self.surcharge_percent_bp < 0 or self.surcharge_flat < 0:
            raise ValueError("surcharges must not be negative")
        if self.first_block < 0:
            raise ValueError("first_block must not be negative")
        if self.increment < 1:
            raise ValueError("increment must be at least 1 second")
        if self.per < 1:
            raise ValueError("per must be at least 1")
        starts = [t.start for t in self.tiers]
        if starts != sorted(set(starts)):
            raise ValueError("tiers must start at distinct seconds, in order")

    @property
    def simple(self) -> bool:
        """True for a plain per-minute rate: no tiers, cap, surcharges or band prices."""
        return (
            not self.tiers
            and not self.max_cost
            and not self.surcharge_percent_bp
            and not self.surcharge_flat
            and not self.band_prices
        )
