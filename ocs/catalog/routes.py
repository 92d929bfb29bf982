"""Route sets and carrier cost decks: which carriers may take a call, and at a margin.

A *carrier* publishes a cost deck: prefix -> rate (connect fee, first block,
increment, price per minute), matched like a plan's deck, longest prefix
first, by the same compiled matcher (a ``PrefixTable`` per carrier). A *route
set* is an ordered list of carriers; a plan may name one. ``RouteBook`` holds
them all, immutable, inside the catalog snapshot (``CatalogSnapshot.routes``)
and is rebuilt beside it when a carrier or route set changes.

The margin rule, stated once (``RouteBook.routes_for``):

* Both sides are priced by the one rating function, ``rating.cost``, for a
  *reference call* of ``reference_seconds`` (60 s) with everything that
  function counts: connect fee, first block, increment rounding. The sell side
  is the plan's tariff for the number, at the time-band prices in effect for
  the call (``bands``: the bands from the authorize time, as the call is
  charged), the buy side the carrier's rate for the number (its own longest
  prefix).
* A carrier with no prefix for the number is not a route: it is left out, and
  is not counted as dropped.
* A carrier whose reference cost is at most the sell cost is kept (zero margin
  is kept); one whose cost is higher is *dropped* (negative margin).
* Kept and dropped carriers keep the route set's order.
* Costs are compared in one currency only: a carrier's deck is priced in its own
  currency (``RouteBook.currencies``), and a carrier in another currency than the
  plan's, or in none recorded (a carrier from before migration 0076 that it could
  not tell), is no route for that plan: neither kept nor dropped, never offered
  (``RouteDecision.other_currency`` lists it). The store refuses to give a plan such
  a route set (ocs.catalog.routes_store); this is the rule for what is already there.

What a plan does with that (``RouteDecision.usable``): the kept carriers are
offered, in order; when none is kept, a plan that allows negative margin is
offered the dropped ones (in order) and any other plan's call is refused.

A call rated in the plan's ``On-net`` zone (the operator's own numbers) is not routed
at all (``CallService.price``): no carrier, never refused for margin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

import asyncpg
import numba
import numpy as np

from ocs.decks.cost_deck import RATE_FIELDS, intern_rates, rates_of
from ocs.numbers.matcher import Int, Int64Array, PrefixIndex
from ocs.numbers.prefixes import PrefixTable
from ocs.rating.bands import Segments
from ocs.rating.rates import Rate, cost

REFERENCE_SECONDS = 60


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The carriers for one call, each in the route set's order.

    ``carriers``: those with a prefix for the number and a cost at most the sell
    price; ``dropped``: those with a prefix but a higher cost (negative margin).
    ``sell_cost`` and ``costs`` (carrier -> cost, for every carrier that matched)
    are the reference-call costs the comparison used, in micro-units of the plan's
    currency. ``other_currency``: the route set's carriers priced in another currency
    (or none known), never compared and never offered.
    """

    carriers: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    sell_cost: int = 0
    costs: tuple[tuple[str, int], ...] = ()
    other_currency: tuple[str, ...] = ()

    def usable(self, allow_negative_margin: bool) -> tuple[str, ...]:
        """The carriers to offer: the kept ones; when none is kept and the plan allows
        negative margin, the dropped ones; else none (the call is refused)."""
        if self.carriers or not allow_negative_margin:
            return self.carriers
        return self.dropped

    def refused(self, allow_negative_margin: bool) -> bool:
        """No carrier to offer: the call is refused."""
        return not self.usable(allow_negative_margin)


@dataclass(frozen=True, slots=True)
class RouteBook:
    """Carriers' cost decks and route sets, immutable; one per catalog snapshot.

    ``decks``: carrier id -> its cost deck (every carrier has one, maybe empty);
    ``names``: carrier id -> name; ``route_sets``: route set id -> carrier ids in order;
    ``currencies``: carrier id -> the ISO 4217 code its deck is priced in (a carrier
    missing, or None: not known, and no route for any plan).
    """

    decks: Mapping[str, PrefixTable[Rate]] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)
    route_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    currencies: Mapping[str, str | None] = field(default_factory=dict)

    def carrier_rate(self, carrier_id: str, digits: str) -> tuple[str, Rate] | None:
        """(matched prefix, rate) of a normalised number in a carrier's cost deck."""
        deck = self.decks.get(carrier_id)
        return None if deck is None else deck.match(digits)

    def routes_for(
        self,
        route_set_id: str,
        digits: str,
        sell_rate: Rate,
        reference_seconds: int = REFERENCE_SECONDS,
        bands: Segments | None = None,
        *,
        currency: str,
    ) -> RouteDecision:
        """The route set's carriers for a normalised number sold at ``sell_rate``, a
        price in ``currency`` (the plan's).

        Margin is compared on the cost of a reference call of ``reference_seconds``
        (60 s) computed by ``rating.cost`` on both sides, connect fees, first
        blocks and increments included: a carrier is kept when its cost is at most
        the sell cost and dropped when it is higher. ``bands``: the time bands from
        the call's start (``BandSchedule.segments``) for a sell rate with band
        prices, so that the sell side is what the call will be charged. A carrier
        with no prefix for the number is not a route: neither kept nor dropped.
        Both lists keep the route set's order. An unknown route set has no carriers.
        A carrier priced in another currency than ``currency``, or in none known, is
        never compared (its micro-units are not the plan's): it is listed in
        ``other_currency`` and neither kept nor dropped.
        """
        sell_cost = cost(sell_rate, reference_seconds, bands)
        kept: list[str] = []
        dropped: list[str] = []
        costs: list[tuple[str, int]] = []
        other: list[str] = []
        decks = self.decks
        currencies = self.currencies
        for carrier_id in self.route_sets.get(route_set_id, ()):
            if currencies.get(carrier_id) != currency:
                other.append(carrier_id)
                continue
            deck = decks.get(carrier_id)
            match = None if deck is None else deck.match(digits)
            if match is None:
                continue
            buy = cost(match[1], reference_seconds)
            costs.append((carrier_id, buy))
            (kept if buy <= sell_cost else dropped).append(carrier_id)
        return RouteDecision(tuple(kept), tuple(dropped), sell_cost, tuple(costs), tuple(other))

    def other_currency(self, route_set_id: str, currency: str) -> tuple[str, ...]:
        """The route set's carriers priced in another currency than ``currency`` or in
        none known: those ``routes_for`` never offers a plan in ``currency``."""
        currencies = self.currencies
        return tuple(
            c for c in self.route_sets.get(route_set_id, ()) if currencies.get(c) != currency
        )


EMPTY_DECK: PrefixTable[Rate] = PrefixTable()


# --- loading from PostgreSQL -----------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def copy_columns(data: np.ndarray, width: int) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Rows of COPY text ``prefix<TAB>n<TAB>...<LF>`` with ``width`` whole numbers after
    the prefix: (prefix at, prefix length, (rows, width) int64 numbers). A carrier's
    cost deck has the 4 fields of a rate; a plan's prefixes (ocs.catalog.snapshot)
    have 1, the zone id, or 2, the zone id and the directions."""
    rows = 0
    for c in data:
        rows += c == 10
    at = np.empty(rows, np.int64)
    length = np.empty(rows, np.int64)
    values = np.empty((rows, width), np.int64)
    i = 0
    for r in range(rows):
        start = i
        while data[i] != 9:
            i += 1
        at[r] = start
        length[r] = i - start
        for c in range(width):
            i += 1
            value: Int = 0
            while data[i] != 9 and data[i] != 10:
                value = value * 10 + (np.int64(data[i]) - 48)
                i += 1
            values[r, c] = value
        i += 1
    return at, length, values


async def copy_carrier_rates(conn: asyncpg.Connection, carrier_id: str) -> bytes:
    """A carrier's cost deck as COPY text, one round trip and no row objects."""
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(
        "SELECT prefix, connect_fee, first_block, increment, price_per_minute"
        " FROM carrier_rates WHERE carrier_id = $1",
        carrier_id,
        output=sink,
    )
    return b"".join(chunks)


def build_carrier_deck(data: bytes) -> PrefixTable[Rate]:
    """A carrier's cost deck from ``copy_carrier_rates``. Runs in a worker thread.

    Cost decks repeat a few prices over many prefixes: each distinct rate is one
    ``Rate`` and one slot of the index.
    """
    if not data:
        return EMPTY_DECK
    buf = np.frombuffer(data, np.uint8)
    at, length, values = copy_columns(buf, RATE_FIELDS)
    slots, first = intern_rates(values)
    return PrefixTable.from_index(
        PrefixIndex.from_buffer(buf, at, length, slots), rates_of(values, first)
    )


@dataclass(frozen=True, slots=True)
class RouteRows:
    """What one catalog read found: everything but the carrier decks still to build."""

    names: dict[str, str]
    currencies: dict[str, str | None]
    route_sets: dict[str, tuple[str, ...]]
    kept: dict[str, PrefixTable[Rate]]  # decks reused from the previous book
    load: dict[str, bytes]  # carrier -> its deck as COPY text, to build


async def read_routes(
    conn: asyncpg.Connection,
    previous: RouteBook | None = None,
    changed: Set[str] | None = None,
) -> RouteRows:
    """Read carriers (names, currencies) and route sets (inside the catalog's read
    transaction).

    With ``previous`` and ``changed`` (carrier ids whose decks may have changed),
    every other carrier keeps its deck from ``previous``; ``changed=None``
    reads every deck anew. Names, currencies and route sets are small and always read.
    """
    carriers = await conn.fetch("SELECT id, name, currency FROM carriers")
    names = {r["id"]: r["name"] for r in carriers}
    currencies = {r["id"]: r["currency"] for r in carriers}
    route_sets: dict[str, list[str]] = {
        r["id"]: [] for r in await conn.fetch("SELECT id FROM route_sets")
    }
    for r in await conn.fetch(
        "SELECT route_set_id, carrier_id FROM route_set_carriers ORDER BY route_set_id, position"
    ):
        route_sets[r["route_set_id"]].append(r["carrier_id"])
    kept: dict[str, PrefixTable[Rate]] = {}
    load: dict[str, bytes] = {}
    for carrier_id in names:
        if (
            previous is not None
            and changed is not None
            and carrier_id not in changed
            and carrier_id in previous.decks
        ):
            kept[carrier_id] = previous.decks[carrier_id]
        else:
            load[carrier_id] = await copy_carrier_rates(conn, carrier_id)
    return RouteRows(
        names=names,
        currencies=currencies,
        route_sets={k: tuple(v) for k, v in route_sets.items()},
        kept=kept,
        load=load,
    )


async def build_route_book(rows: RouteRows) -> RouteBook:
    """The book from ``read_routes``: new decks are built in worker threads."""
    decks = dict(rows.kept)
    for carrier_id, data in rows.load.items():
        decks[carrier_id] = await asyncio.to_thread(build_carrier_deck, data)
    return RouteBook(
        decks=decks, names=rows.names, route_sets=rows.route_sets, currencies=rows.currencies
    )


def warm_up() -> None:
    """Compile, or load from the on-disk cache, the kernels a route book build runs."""
    deck = build_carrier_deck(b"44\t0\t1\t1\t5\n447\t150000\t30\t6\t60000\n4\t0\t1\t1\t5\n")
    assert deck.match("4477") == ("447", Rate(150_000, 30, 6, 60_000))
    assert len(deck.values) == 2
