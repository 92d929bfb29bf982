"""The catalog snapshot: plans and their rated prefix decks, immutable, one per process.

A snapshot is built from PostgreSQL in one read and never changed; a new
catalog version builds a new snapshot beside the old one and ``CatalogHolder``
swaps the reference, so a request in flight finishes on the snapshot it began
with and traffic never pauses.

A plan's deck is a ``PrefixTable`` of its tariffs (ocs.numbers.prefixes): the
prefixes come out of PostgreSQL as one value (``decks.lines``, migration 0013)
and go into numpy arrays without a Python object per row, and the compiled index
is built in a worker thread (its kernels release the GIL), so a million-prefix
deck reloads in a fraction of a second while the event loop keeps answering. A
change NOTIFYs which plan it touched (``deck:<plan>``, ``plan:<plan>``); the
holder then rereads that plan's tariffs (one document, ocs.decks.tariff_sets)
and rebuilds its deck only, and every other plan keeps its own. Carriers' cost
decks and route sets (ocs.catalog.routes) load into the same snapshot: a
``carrier:<id>`` notification rebuilds that carrier's deck only, a
``routes:<id>`` one rereads the route sets and rebuilds no deck. A plan's rates by
rate type (usage mediation, ``rate_type_rates``) are read whole on every load, a
few rows a plan; a ``rate_types:<plan>`` notification reloads them and rebuilds
no deck. So are the plans' IVR defaults (ocs.catalog.plan_ivr), on ``ivr:<plan>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
import numpy as np

from ocs import metrics
from ocs.catalog.plan_ivr import IVR_CHANGED, PlanIvr, read_plan_ivrs
from ocs.catalog.routes import (
    REFERENCE_SECONDS,
    RouteBook,
    RouteDecision,
    build_route_book,
    copy_columns,
    read_routes,
)
from ocs.catalog.routes import warm_up as warm_up_routes
from ocs.db.listener import ChannelListener
from ocs.decks.cells import direction_bit
from ocs.decks.code_lists import STANDARD, build_code_table, read_code_lists
from ocs.decks.tariff_sets import read_tariff_sets, read_tariffs
from ocs.numbers.matcher import PrefixIndex
from ocs.numbers.prefixes import PrefixTable
from ocs.rating.bands import BandSchedule, Segments, schedule_from_json
from ocs.rating.counter_rules import CounterDef, counters_for_zone, read_counters
from ocs.rating.rates import Rate, Tier
from ocs.rating.translation import TranslationSet, translation_from_json

log = logging.getLogger("ocs.catalog")

CATALOG_CHANNEL = "ocs_catalog"
# The zone a destination in the operator's own ranges (onnet_prefixes) is rated in.
ON_NET = "On-net"
# A catalog notification ``sync:<token>`` changes nothing: it is the marker
# ``CatalogHolder.caught_up`` sends to learn that the notifications before it were seen.
SYNC = "sync"
# A catalog notification ``rate_types:<plan>``: a plan's rates by rate type changed.
# They are no deck's, so the reload it starts keeps every deck.
RATE_TYPES = "rate_types"
# A reload begun by notifications that failed is tried again after this many seconds,
# doubled after each further failure up to RETRY_MAX_S: no later change may come to
# start it, and the snapshot must not stay behind the catalog.
RETRY_S = 1.0
RETRY_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    """A rating plan: its limits, number translation, time bands and how calls reserve."""

    id: str
    name: str
    currency: str
    credit_limit: int
    min_balance: int
    max_lines: int
    max_call_duration: int
    translation: TranslationSet = field(default_factory=TranslationSet)
    bands: BandSchedule | None = None
    route_set_id: str | None = None
    allow_negative_margin: bool = False
    # How a call reserves funds: "whole" (its longest call, as far as the funds go),
    # "slice" (slice_seconds at a time, extended by updates) or "share" (at most the
    # available funds divided by the free lines).
    reservation_policy: str = "whole"
    slice_seconds: int = 60


@dataclass(frozen=True, slots=True)
class Tariff:
    """The rate of one zone in one plan (outbound)."""

    zone: str
    rate: Rate


@dataclass(frozen=True, slots=True)
class PlanTariffs:
    """A plan's outbound tariffs, ordered by zone id: a deck's slot i is ``tariffs[i]``."""

    zone_ids: tuple[int, ...] = ()
    tariffs: tuple[Tariff, ...] = ()
    # Zone name -> tariff, for the usage services (a deck of 41,000 zones is not scanned
    # per usage event); built on first use, left out of equality.
    by_zone: dict[str, Tariff] = field(default_factory=dict, compare=False, repr=False)

    def named(self, zone: str) -> Tariff | None:
        """The tariff of a zone by name (the first, if two carry the name)."""
        if not self.by_zone and self.tariffs:
            for tariff in self.tariffs:
                self.by_zone.setdefault(tariff.zone, tariff)
        return self.by_zone.get(zone)


# The on-net ranges: the operator's own prefixes (PUT /v1/on-net, admin only), and apart
# from them its number sets' on-net numbers, each one a whole number (decision 0030).
_ONNET_PREFIXES_SQL = "SELECT prefix FROM onnet_prefixes"
_ONNET_NUMBERS_SQL = "SELECT number FROM number_set_numbers WHERE on_net"


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """One immutable catalog version: plans, their decks and tariffs, routes, counters,
    access numbers, on-net ranges and area-code tables, all read in one transaction."""

    plans: dict[str, Plan]
    decks: dict[str, PrefixTable[Tariff]]
    tariffs: dict[str, PlanTariffs] = field(default_factory=dict)
    routes: RouteBook = field(default_factory=RouteBook)
    counters: dict[str, tuple[CounterDef, ...]] = field(default_factory=dict)
    # Inbound tariffs, over the deck's prefixes given for inbound calls.
    inbound_decks: dict[str, PrefixTable[Tariff]] = field(default_factory=dict)
    inbound_tariffs: dict[str, PlanTariffs] = field(default_factory=dict)
    # (plan, access number) -> the plan whose deck rates calls through that number.
    access_numbers: dict[tuple[str, str], str] = field(default_factory=dict)
    # The operator's own ranges: a destination in them is rated in zone ON_NET.
    onnet: PrefixTable[bool] = field(default_factory=PrefixTable)
    # The number sets' on-net numbers: a destination that is one of them, exactly (not a
    # longer number starting with it), is rated in zone ON_NET too.
    onnet_numbers: frozenset[str] = frozenset()
    # Area-code tables by list id: STANDARD, and plans' custom code lists.
    code_lists: dict[str, PrefixTable[str]] = field(default_factory=dict)
    # (plan, rate type) -> the plan's rate for usage of that rate type (mediation).
    rate_type_tariffs: dict[tuple[str, str], Tariff] = field(default_factory=dict)
    # (plan, zone) -> the plan's counters covering that zone, filled as zones are asked.
    zone_counters: dict[tuple[str, str], tuple[CounterDef, ...]] = field(default_factory=dict)
    # Plans' IVR defaults, by plan: only the plans that have one set.
    ivr_defaults: dict[str, PlanIvr] = field(default_factory=dict)

    def plan(self, plan_id: str) -> Plan | None:
        """The plan by id; None if the catalog has no such plan."""
        return self.plans.get(plan_id)

    def ivr_default(self, plan_id: str) -> PlanIvr | None:
        """The plan's IVR default; None when it has none set (its answers carry none)."""
        return self.ivr_defaults.get(plan_id)

    def rating_plan(self, plan_id: str, access_number: str | None) -> str:
        """The plan whose deck rates a call that came in through ``access_number``."""
        if not access_number:
            return plan_id
        return self.access_numbers.get((plan_id, access_number), plan_id)

    def destination_name(self, plan_id: str, digits: str) -> str | None:
        """The place a normalised number calls, by the plan's custom code list when it
        has one (then only by it), else by the standard table; None if unnamed."""
        table = self.code_lists.get(plan_id) or self.code_lists.get(STANDARD)
        if table is None:
            return None
        match = table.match(digits)
        return None if match is None else match[1]

    def counters_for_zone(self, plan_id: str, zone: str) -> tuple[CounterDef, ...]:
        """The plan's active counters covering ``zone``, in the order a call tries them
        (``counters_for_zone``); found once per zone, since every call asks."""
        key = (plan_id, zone)
        found = self.zone_counters.get(key)
        if found is None:
            found = counters_for_zone(self.counters.get(plan_id, ()), zone)
            self.zone_counters[key] = found
        return found

    def counters_for(self, plan_id: str) -> tuple[CounterDef, ...]:
        """The plan's usage counters, ordered by id."""
        return self.counters.get(plan_id, ())

    def tariff_named(self, plan_id: str, zone: str) -> Tariff | None:
        """A plan's tariff by zone name (usage services are zones without prefixes)."""
        found = self.tariffs.get(plan_id)
        return None if found is None else found.named(zone)

    def rate_type_tariff(self, plan_id: str, rate_type: str) -> Tariff | None:
        """A plan's rate for usage of ``rate_type`` (its zone is the rate type's name);
        None when the plan has none, and the usage is rated by its zone instead."""
        return self.rate_type_tariffs.get((plan_id, rate_type))

    def tariff_for(
        self, plan_id: str, digits: str, direction: str = "outbound"
    ) -> tuple[str, Tariff] | None:
        """(matched prefix, tariff) of a normalised number in a plan's deck.

        Outbound: a number in the operator's own ranges, or one of its number sets'
        on-net numbers, is rated in the plan's ``On-net`` zone when it has one; any
        other by the plan's deck. Inbound: by the plan's inbound tariffs (None when it
        has none for the number).
        """
        if direction == "inbound":
            inbound = self.inbound_decks.get(plan_id)
            return None if inbound is None else inbound.match(digits)
        # Most operators have no on-net ranges: no prefix lookup on the hot path then.
        if digits in self.onnet_numbers or (
            len(self.onnet) and self.onnet.match(digits) is not None
        ):
            on_net = self.tariff_named(plan_id, ON_NET)
            if on_net is not None:
                return "", on_net
        deck = self.decks.get(plan_id)
        return None if deck is None else deck.match(digits)

    def routes_for(
        self, plan_id: str, digits: str, sell_rate: Rate, bands: Segments | None = None
    ) -> RouteDecision | None:
        """The plan's route set's carriers for a normalised number sold at ``sell_rate``
        (``RouteBook.routes_for``; ``bands``: the time bands from the call's start, for
        a rate with band prices); None when the plan has no route set. Only carriers
        priced in the plan's currency are compared and offered."""
        plan = self.plans.get(plan_id)
        if plan is None or plan.route_set_id is None:
            return None
        return self.routes.routes_for(
            plan.route_set_id, digits, sell_rate, REFERENCE_SECONDS, bands, currency=plan.currency
        )

    def routes_in_other_currency(self) -> frozenset[tuple[str, str, str | None]]:
        """(plan, carrier, the carrier's currency or None) for each carrier of a plan's
        route set that is priced in another currency than the plan's, or in none known:
        a carrier the plan's calls are never offered (``RouteBook.routes_for``)."""
        found: set[tuple[str, str, str | None]] = set()
        for plan in self.plans.values():
            if plan.route_set_id is None:
                continue
            for carrier_id in self.routes.other_currency(plan.route_set_id, plan.currency):
                found.add((plan.id, carrier_id, self.routes.currencies.get(carrier_id)))
        return frozenset(found)


# --- prefixes out of PostgreSQL ------------------------------------------------------


# The first line of a stored deck is at most this long: a prefix of 32 digits, a zone id
# of 19 and the directions, each after a tab, and the line feed.
_FIRST_LINE_MAX = 32 + 1 + 19 + 2 + 1


def deck_line_columns(
    data: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """A plan's stored deck lines (``read_deck_lines``: COPY text
    ``prefix<TAB>zone_id[<TAB>directions]<LF>``) as columns: (prefix at, prefix length,
    zone id, directions), int64 arrays with one entry a line.

    ``directions`` (``direction_bit``s: 1 outbound, 2 inbound, 3 both) is None for a
    document whose lines carry none (migration 0053): a deck whose tariffs all go one
    way, or one stored before, whose prefixes rate every direction their zone has a
    tariff in. The import compares a new deck with the stored lines by these
    (ocs.catalog.store), and a reload builds the plan's deck from them (``build_deck``).
    """
    first_line = bytes(data[:_FIRST_LINE_MAX]).partition(b"\n")[0]
    width = max(first_line.count(b"\t"), 1)  # an empty document: no line at all
    at, length, values = copy_columns(data, width)
    zone = np.ascontiguousarray(values[:, 0])
    return at, length, zone, np.ascontiguousarray(values[:, 1]) if width > 1 else None


async def read_deck_lines(conn: asyncpg.Connection, plan_id: str) -> bytes:
    """A plan's deck as stored (migration 0013): COPY text, one ``prefix<TAB>zone_id``
    line per prefix in prefix order, or b"" for a plan with no deck. One value, not
    a row per prefix: ~13 MB for a million prefixes, read in a few hundredths of a
    second."""
    lines = await conn.fetchval("SELECT lines FROM decks WHERE plan_id = $1", plan_id)
    return b"" if lines is None else bytes(lines)


def build_deck(
    data: bytes, tariffs: PlanTariffs, direction: str = "outbound"
) -> PrefixTable[Tariff]:
    """A plan's deck in one direction from its stored lines (``read_deck_lines``) and
    its ``tariffs`` in that direction. Runs in a worker thread: no event-loop state.

    Prefixes whose zone has no tariff in the plan are left out, as if absent, and so
    are those the deck gave for the other direction only (the lines' directions).
    Raises ValueError on a prefix that is not 1 to 32 digits.
    """
    buf = np.frombuffer(data, np.uint8)
    at, length, zone, ways = deck_line_columns(buf)
    zone_ids = np.asarray(tariffs.zone_ids, np.int64)  # sorted: ORDER BY zone_id
    slot = np.searchsorted(zone_ids, zone)
    rated = slot < len(zone_ids)
    rated[rated] = zone_ids[slot[rated]] == zone[rated]
    if ways is not None:
        rated &= (ways & direction_bit(direction)) != 0
    if not rated.all():
        at, length, slot = at[rated], length[rated], slot[rated]
    return PrefixTable.from_index(PrefixIndex.from_buffer(buf, at, length, slot), tariffs.tariffs)


def plan_from_row(row: asyncpg.Record) -> Plan:
    """A ``plans`` row as a ``Plan``; columns a row lacks take the plan's defaults."""
    return Plan(
        id=row["id"],
        name=row["name"],
        currency=row["currency"],
        credit_limit=row["credit_limit"],
        min_balance=row["min_balance"],
        max_lines=row["max_lines"],
        max_call_duration=row["max_call_duration"],
        translation=translation_from_json(row.get("translation")),
        bands=schedule_from_json(row.get("bands")),
        route_set_id=row.get("route_set_id"),
        allow_negative_margin=bool(row.get("allow_negative_margin", False)),
        reservation_policy=row.get("reservation_policy") or "whole",
        slice_seconds=row.get("slice_seconds") or 60,
    )


def _plans(rows: Iterable[asyncpg.Record]) -> dict[str, Plan]:
    """Plans by id."""
    return {r["id"]: plan_from_row(r) for r in rows}


def tiers_from_json(text: str | None) -> tuple[Tier, ...]:
    """The ``tariffs.tiers`` column: a JSON list of tier objects."""
    if not text:
        return ()
    return tuple(
        Tier(
            start=int(t["start"]),
            price_per_minute=int(t["price_per_minute"]),
            increment=int(t.get("increment", 1)),
            flat=int(t.get("flat", 0)),
        )
        for t in json.loads(text)
    )


def tiers_to_json(tiers: Iterable[Tier]) -> str:
    """Tiers as the ``tariffs.tiers`` column stores them (``tiers_from_json`` reads it)."""
    return json.dumps(
        [
            {
                "start": t.start,
                "price_per_minute": t.price_per_minute,
                "increment": t.increment,
                "flat": t.flat,
            }
            for t in tiers
        ]
    )


# The price shape's columns, the same in ``tariffs`` and ``rate_type_rates``.
RATE_COLUMNS = (
    "connect_fee, first_block, increment, price_per_minute, tiers, max_cost,"
    " cut_at_max_cost, surcharge_percent_bp, surcharge_flat, band_prices, per"
)


def rate_from_row(r: asyncpg.Record) -> Rate:
    """The rate of a row holding ``RATE_COLUMNS`` (a tariff's or a rate-type rate's)."""
    return Rate(
        connect_fee=r["connect_fee"],
        first_block=r["first_block"],
        increment=r["increment"],
        price_per_minute=r["price_per_minute"],
        tiers=tiers_from_json(r["tiers"]),
        max_cost=r["max_cost"],
        cut_at_max_cost=r["cut_at_max_cost"],
        surcharge_percent_bp=r["surcharge_percent_bp"],
        surcharge_flat=r["surcharge_flat"],
        band_prices=tuple(sorted(json.loads(r["band_prices"] or "{}").items())),
        per=r["per"],
    )


def plan_tariffs(document: bytes) -> tuple[PlanTariffs, PlanTariffs]:
    """A plan's stored tariffs (``tariff_sets.document``, ocs.decks.tariff_sets) as its
    (outbound, inbound) ``PlanTariffs``. The document is sorted by zone id: so is each."""
    ids: dict[str, list[int]] = {"outbound": [], "inbound": []}
    tariffs: dict[str, list[Tariff]] = {"outbound": [], "inbound": []}
    for stored in read_tariffs(document):
        ids[stored.direction].append(stored.zone_id)
        tariffs[stored.direction].append(Tariff(zone=stored.zone, rate=stored.rate))
    out, back = "outbound", "inbound"
    return (
        PlanTariffs(tuple(ids[out]), tuple(tariffs[out])),
        PlanTariffs(tuple(ids[back]), tuple(tariffs[back])),
    )


async def _read_tariffs(
    conn: asyncpg.Connection,
    plans: Iterable[str],
    previous: CatalogSnapshot | None,
    changed: set[str] | None,
) -> tuple[dict[str, PlanTariffs], dict[str, PlanTariffs]]:
    """Every plan's (outbound, inbound) tariffs, each kind holding only plans that have
    some. With ``previous`` and ``changed``, only the tariffs of plans in ``changed``
    are read (every writer of tariffs NOTIFYs their plan, ocs.catalog.store) and every
    other plan keeps its own, so a reload reads and builds one plan's, not all."""
    if previous is None or changed is None:
        documents = await read_tariff_sets(conn)
    else:
        documents = await read_tariff_sets(conn, [p for p in plans if p in changed])
    outbound: dict[str, PlanTariffs] = {}
    inbound: dict[str, PlanTariffs] = {}
    for plan_id in plans:
        if previous is not None and changed is not None and plan_id not in changed:
            both = (
                previous.tariffs.get(plan_id, PlanTariffs()),
                previous.inbound_tariffs.get(plan_id, PlanTariffs()),
            )
        elif (document := documents.get(plan_id)) is not None:
            # In a thread: 41,000 tariffs take some 0.1 s to decode.
            both = await asyncio.to_thread(plan_tariffs, document)
        else:
            continue
        for kind, own in zip((outbound, inbound), both, strict=True):
            if own.tariffs:
                kind[plan_id] = own
    return outbound, inbound


async def read_rate_type_tariffs(conn: asyncpg.Connection) -> dict[tuple[str, str], Tariff]:
    """Every plan's rates by rate type, as tariffs whose zone is the rate type: one query."""
    rows = await conn.fetch(f"SELECT plan_id, rate_type, {RATE_COLUMNS} FROM rate_type_rates")
    return {
        (r["plan_id"], r["rate_type"]): Tariff(zone=r["rate_type"], rate=rate_from_row(r))
        for r in rows
    }


async def load_snapshot(
    pool: asyncpg.Pool,
    previous: CatalogSnapshot | None = None,
    changed: set[str] | None = None,
    carriers: set[str] | None = None,
    code_lists: bool = False,
) -> CatalogSnapshot:
    """Read the catalog in one repeatable-read transaction and build a snapshot.

    With ``previous`` and ``changed`` (plan ids whose decks or tariffs may have
    changed), only those plans' tariffs are read, every other plan keeps its
    tariffs and its deck from ``previous``, and every carrier not in ``carriers``
    (ids whose cost decks may have changed) keeps its cost deck; ``changed=None``
    rebuilds every deck.
    Area-code tables are kept from ``previous`` too unless ``code_lists`` (one
    changed) or ``changed`` is None.
    """
    reread_codes = previous is None or changed is None or code_lists
    code_documents: dict[str, bytes] = {}
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        plans = _plans(await conn.fetch("SELECT * FROM plans"))
        counters = await read_counters(conn)
        tariffs, inbound_tariffs = await _read_tariffs(conn, plans, previous, changed)
        rate_type_tariffs = await read_rate_type_tariffs(conn)
        ivr_defaults = await read_plan_ivrs(conn)
        access_numbers = {
            (r["plan_id"], r["number"]): r["rating_plan"]
            for r in await conn.fetch("SELECT plan_id, number, rating_plan FROM access_numbers")
        }
        # The operator's own ranges (PUT /v1/on-net) and the on-net numbers of its number
        # sets: kept apart, so that replacing the one leaves the other, and a set's number
        # stays one number (an operator's "4" would otherwise be all of +4).
        onnet = PrefixTable({r["prefix"]: True for r in await conn.fetch(_ONNET_PREFIXES_SQL)})
        onnet_numbers = frozenset(r["number"] for r in await conn.fetch(_ONNET_NUMBERS_SQL))
        decks: dict[str, PrefixTable[Tariff]] = {}
        inbound_decks: dict[str, PrefixTable[Tariff]] = {}
        load: dict[str, bytes] = {}
        for plan_id in plans:
            unchanged = previous is not None and changed is not None and plan_id not in changed
            for own, built, old_decks, old_tariffs in (
                (
                    tariffs,
                    decks,
                    None if previous is None else previous.decks,
                    None if previous is None else previous.tariffs,
                ),
                (
                    inbound_tariffs,
                    inbound_decks,
                    None if previous is None else previous.inbound_decks,
                    None if previous is None else previous.inbound_tariffs,
                ),
            ):
                plan_tariffs = own.get(plan_id, PlanTariffs())
                if (
                    unchanged
                    and old_decks is not None
                    and old_tariffs is not None
                    and plan_id in old_decks
                    and old_tariffs.get(plan_id, PlanTariffs()) == plan_tariffs
                ):
                    built[plan_id] = old_decks[plan_id]
                elif plan_tariffs.tariffs and plan_id not in load:
                    load[plan_id] = await read_deck_lines(conn, plan_id)
        if reread_codes:
            code_documents = await read_code_lists(conn)
        route_rows = await read_routes(
            conn,
            None if previous is None else previous.routes,
            None if changed is None else (carriers or set()),
        )
    empty: PrefixTable[Tariff] = PrefixTable()
    for plan_id, data in load.items():
        # The prefixes were read for whichever direction needed a rebuild; one kept
        # from the previous snapshot is not built again.
        if plan_id not in decks and plan_id in tariffs:
            decks[plan_id] = await asyncio.to_thread(build_deck, data, tariffs[plan_id])
        if plan_id not in inbound_decks and plan_id in inbound_tariffs:
            inbound_decks[plan_id] = await asyncio.to_thread(
                build_deck, data, inbound_tariffs[plan_id], "inbound"
            )
    for plan_id in plans:
        decks.setdefault(plan_id, empty)
    routes = await build_route_book(route_rows)
    if reread_codes:
        built_codes = {
            list_id: await asyncio.to_thread(build_code_table, lines)
            for list_id, lines in code_documents.items()
        }
    else:
        assert previous is not None
        built_codes = previous.code_lists
    return CatalogSnapshot(
        plans=plans,
        decks=decks,
        tariffs=tariffs,
        routes=routes,
        counters=counters,
        inbound_decks=inbound_decks,
        inbound_tariffs=inbound_tariffs,
        access_numbers=access_numbers,
        onnet=onnet,
        onnet_numbers=onnet_numbers,
        code_lists=built_codes,
        rate_type_tariffs=rate_type_tariffs,
        ivr_defaults=ivr_defaults,
    )


def _plan_named(payload: str | None) -> str | None:
    """The plan a catalog notification names (``deck:<id>``, ``plan:<id>``), if any."""
    kind, _, plan_id = (payload or "").partition(":")
    return plan_id if kind in ("deck", "plan") and plan_id else None


class CatalogHolder:
    """Holds the current snapshot and replaces it when the catalog changes (LISTEN/NOTIFY).

    ``version`` counts the snapshots loaded; ``caught_up`` waits until every change
    notified before it is in the snapshot, so a caller (a test) need not guess a pause.
    A LISTEN connection PostgreSQL drops is replaced, then the whole catalog reloaded
    (ocs.db.listener); a reload that fails is tried again on a timer (``retry_s``).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        """An empty holder reading from ``pool``; ``start`` begins listening and loads."""
        self._pool = pool
        self._snapshot = CatalogSnapshot(plans={}, decks={})
        self._listener: ChannelListener | None = None
        self._reload_lock = asyncio.Lock()
        # Plans named by notifications not yet reloaded; a full reload when unsure.
        self._pending: set[str] = set()
        self._pending_full = False
        # Carriers whose cost decks changed; route sets or rate-type rates changed
        # (reread whole, no deck rebuilt).
        self._pending_carriers: set[str] = set()
        self._pending_rows = False
        self._pending_codes = False  # an area-code table changed (all are reread)
        self._tasks: set[asyncio.Task[None]] = set()
        # caught_up's markers in flight, by token: each is given the reloads scheduled
        # before its notification came back.
        self._markers: dict[str, asyncio.Future[tuple[asyncio.Task[None], ...]]] = {}
        self.version = 0
        # A failed reload's next try (plain attributes: a test narrows them).
        self.retry_s = RETRY_S
        self.retry_max_s = RETRY_MAX_S
        self._failures = 0
        self._retry: asyncio.TimerHandle | None = None
        # (plan, carrier, carrier's currency) of the snapshot served: carriers a plan's
        # route set lists that its calls are never offered (another currency, or none).
        self.other_currency_routes: frozenset[tuple[str, str, str | None]] = frozenset()

    @property
    def snapshot(self) -> CatalogSnapshot:
        """The current snapshot: a request takes it once and finishes on it."""
        return self._snapshot

    async def reload(
        self,
        plans: set[str] | None = None,
        carriers: set[str] | None = None,
        code_lists: bool = False,
    ) -> None:
        """Build a new snapshot and swap it in; on failure the old one keeps serving.

        ``plans``: only these plans' decks may have changed (None: any, and every
        carrier's cost deck and area-code table too); ``carriers``: these
        carriers' cost decks may have changed as well; ``code_lists``: an
        area-code table may have changed.
        """
        async with self._reload_lock:
            await self._reload_locked(plans, carriers, code_lists)

    async def _reload_locked(
        self, plans: set[str] | None, carriers: set[str] | None = None, code_lists: bool = False
    ) -> None:
        """``reload`` with the lock held: build, swap, count the version, log; a full
        reload tells the listener which LISTEN it began on (``ChannelListener.reloaded``:
        after a lost connection, the catalog is current again)."""
        started = time.perf_counter()
        listener = self._listener
        epoch = None if listener is None else listener.epoch
        snapshot = await load_snapshot(self._pool, self._snapshot, plans, carriers, code_lists)
        self._snapshot = snapshot
        self.version += 1
        self._note_other_currency_routes(snapshot)
        if listener is not None and epoch is not None and plans is None:
            listener.reloaded(epoch)
        reloaded = [*sorted(plans or ()), *(f"carrier:{c}" for c in sorted(carriers or ()))]
        log.info(
            "catalog loaded",
            extra={
                "plans": len(snapshot.plans),
                "prefixes": sum(len(d) for d in snapshot.decks.values()),
                "carriers": len(snapshot.routes.decks),
                "reloaded": "all" if plans is None else ",".join(reloaded),
                "seconds": round(time.perf_counter() - started, 3),
                "catalog_version": self.version,
            },
        )

    def _note_other_currency_routes(self, snapshot: CatalogSnapshot) -> None:
        """Warn once (per process, until it is fixed) of each carrier a plan's route
        set lists in another currency than the plan's, or in none known: its calls are
        never offered that carrier, so they may be refused no_profitable_route. The
        sampler exports how many there are (``ocs_catalog_size{what=...}``)."""
        found = snapshot.routes_in_other_currency()
        for plan_id, carrier_id, currency in sorted(
            found - self.other_currency_routes, key=lambda r: (r[0], r[1])
        ):
            plan = snapshot.plans[plan_id]
            log.warning(
                "carrier not offered: priced in another currency than the plan"
                if currency is not None
                else "carrier not offered: its currency is not known (set it)",
                extra={
                    "plan": plan_id,
                    "plan_currency": plan.currency,
                    "carrier": carrier_id,
                    "carrier_currency": currency,
                    "route_set": plan.route_set_id,
                },
            )
        self.other_currency_routes = found

    @property
    def listener(self) -> ChannelListener | None:
        """What listens for catalog changes (None: not started, or stopped)."""
        return self._listener

    async def start(self) -> None:
        """Listen for changes on ``CATALOG_CHANNEL``, then load the whole catalog; raises,
        listening no more, if either fails.

        LISTEN runs first: a change committed while the catalog loads is notified to it
        and reloaded after the load. Loaded first, such a change was in neither the load
        nor any notification, and missing until some later change (decision 0013). The
        reload lock is taken before LISTEN, so that a reload a notification schedules
        waits for the full load and builds on it, never on the empty snapshot.
        """
        listener = ChannelListener(
            self._pool, CATALOG_CHANNEL, "catalog", self._on_notify, self._on_reconnect
        )
        try:
            async with self._reload_lock:
                await listener.start()
                self._listener = listener
                await self._reload_locked(None)
        except BaseException:
            await self.stop()
            raise

    async def caught_up(self) -> int:
        """Wait until every catalog change notified before this call is in the snapshot
        (or its reload failed, the previous snapshot serving on); the version then.

        It sends a ``sync:<token>`` marker on the catalog channel. PostgreSQL delivers a
        listener the notifications of different transactions in commit order, so when
        the marker comes back every change committed before the call has been seen; the
        barrier then waits for the reloads those changes started, and for a reload
        already running. Other processes' holders ignore the marker. A holder not
        started (no listener) waits for a running reload only. Raises RuntimeError if
        the holder stops meanwhile; a lost listener never answers, so a caller bounds
        the wait (``asyncio.timeout``).
        """
        if self._listener is not None:
            token = secrets.token_hex(8)
            marker: asyncio.Future[tuple[asyncio.Task[None], ...]]
            marker = asyncio.get_running_loop().create_future()
            self._markers[token] = marker
            try:
                await self._pool.execute(
                    "SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"{SYNC}:{token}"
                )
                reloads = await marker
            finally:
                self._markers.pop(token, None)
            if reloads:
                await asyncio.wait(reloads)
        # A reload begun by reload() rather than a notification: let it land too.
        async with self._reload_lock:
            return self.version

    def _on_reconnect(self) -> None:
        """LISTEN runs again on a new connection: what changed meanwhile is unknown, so
        everything is reloaded; ``caught_up`` markers sent meanwhile were lost with the
        connection and are answered by that reload."""
        self._pending_full = True
        task = self._schedule_reload()
        for marker in self._markers.values():
            if not marker.done():
                marker.set_result((task,))

    def _schedule_reload(self) -> asyncio.Task[None]:
        """Start a task reloading what is pending."""
        task = asyncio.get_running_loop().create_task(self._reload_pending())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _retry_later(self) -> None:
        """Try the failed reload again after a pause that grows with each failure."""
        if self._retry is not None:
            return  # one is due already
        delay = min(self.retry_s * 2 ** min(self._failures - 1, 16), self.retry_max_s)
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._schedule_reload()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """Note what a notification changed and schedule a reload (a marker: answer it)."""
        plan_id = _plan_named(payload)
        kind, _, name = (payload or "").partition(":")
        if kind == SYNC:
            # asyncpg runs listeners in arrival order: every notification before this
            # one has scheduled its reload already.
            marker = self._markers.get(name)
            if marker is not None and not marker.done():
                marker.set_result(tuple(self._tasks))
            return
        if plan_id is not None:
            self._pending.add(plan_id)
        elif kind == "carrier" and name:
            self._pending_carriers.add(name)
        elif kind in ("routes", RATE_TYPES, IVR_CHANGED) and name:
            # None touches a deck: a reload that keeps them all rereads them.
            self._pending_rows = True
        elif kind == "codes":  # codes: (the standard table) or codes:<plan>
            self._pending_codes = True
        else:
            self._pending_full = True
        self._schedule_reload()

    async def _reload_pending(self) -> None:
        """Reload what the notifications so far named, unless an earlier task did."""
        async with self._reload_lock:
            if not (
                self._pending_full
                or self._pending
                or self._pending_carriers
                or self._pending_rows
                or self._pending_codes
            ):
                return  # an earlier task reloaded these changes already
            plans = None if self._pending_full else self._pending
            carriers, code_lists = self._pending_carriers, self._pending_codes
            self._pending, self._pending_full = set(), False
            self._pending_carriers, self._pending_rows = set(), False
            self._pending_codes = False
            try:
                await self._reload_locked(plans, carriers, code_lists)
            except Exception:
                self._pending_full = True  # rebuild everything on the next try
                self._failures += 1
                metrics.CATALOG_RELOAD_FAILURES.inc()
                log.exception(
                    "catalog reload failed; the previous snapshot keeps serving",
                    extra={"failures": self._failures},
                )
                self._retry_later()
                return
            self._failures = 0

    async def stop(self) -> None:
        """Stop listening and cancel reloads in progress; the last snapshot stays."""
        for marker in self._markers.values():
            if not marker.done():
                marker.set_exception(RuntimeError("the catalog holder stopped"))
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        for task in list(self._tasks):
            task.cancel()


def warm_up() -> None:
    """Compile, or load from the on-disk cache, the kernels a catalog reload runs."""
    tariff = Tariff("x", Rate(connect_fee=0, first_block=1, increment=1, price_per_minute=1))
    deck = build_deck(b"44\t7\n447\t9\n", PlanTariffs((7,), (tariff,)))
    assert deck.match("4477") == ("44", tariff)
    inbound = build_deck(b"44\t7\t3\n447\t7\t1\n", PlanTariffs((7,), (tariff,)), "inbound")
    assert inbound.match("4477") == ("44", tariff)
    warm_up_routes()
