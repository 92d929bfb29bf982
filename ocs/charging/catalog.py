"""The catalog snapshot: plans and their rated prefix decks, immutable, one per process.

A snapshot is built from PostgreSQL in one read and never changed; a new
catalog version builds a new snapshot beside the old one and ``CatalogHolder``
swaps the reference, so a request in flight finishes on the snapshot it began
with and traffic never pauses.

A plan's deck is a ``PrefixTable`` of its tariffs (ocs.charging.prefixes): the
prefixes come out of PostgreSQL with COPY and go into numpy arrays without a
Python object per row, and the compiled index is built in a worker thread (its
kernels release the GIL), so a million-prefix deck reloads in about a second
while the event loop keeps answering. A change NOTIFYs which plan it touched
(``deck:<plan>``, ``plan:<plan>``); the holder then rebuilds that plan's deck
only and keeps every other deck whose tariffs did not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
import numba
import numpy as np

from ocs.charging.bands import BandSchedule, schedule_from_json
from ocs.charging.matcher import PrefixIndex
from ocs.charging.prefixes import PrefixTable
from ocs.charging.rating import Rate, Tier
from ocs.charging.translation import TranslationSet, translation_from_json

log = logging.getLogger("ocs.catalog")

CATALOG_CHANNEL = "ocs_catalog"


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    name: str
    currency: str
    credit_limit: int
    min_balance: int
    max_lines: int
    max_call_duration: int
    translation: TranslationSet = field(default_factory=TranslationSet)
    bands: BandSchedule | None = None


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


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    plans: dict[str, Plan]
    decks: dict[str, PrefixTable[Tariff]]
    tariffs: dict[str, PlanTariffs] = field(default_factory=dict)

    def plan(self, plan_id: str) -> Plan | None:
        return self.plans.get(plan_id)

    def tariff_named(self, plan_id: str, zone: str) -> Tariff | None:
        """A plan's tariff by zone name (usage services are zones without prefixes)."""
        for tariff in self.tariffs.get(plan_id, PlanTariffs()).tariffs:
            if tariff.zone == zone:
                return tariff
        return None

    def tariff_for(self, plan_id: str, digits: str) -> tuple[str, Tariff] | None:
        """(matched prefix, tariff) of a normalised number in a plan's deck."""
        deck = self.decks.get(plan_id)
        return None if deck is None else deck.match(digits)


# --- prefixes out of PostgreSQL ------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _copy_columns(data: np.ndarray) -> tuple:
    """Rows of COPY text ``prefix<TAB>zone_id<LF>``: (prefix at, prefix length, zone id)."""
    rows = 0
    for c in data:
        rows += c == 10
    at = np.empty(rows, np.int64)
    length = np.empty(rows, np.int64)
    zone = np.empty(rows, np.int64)
    i = 0
    for r in range(rows):
        start = i
        while data[i] != 9:
            i += 1
        at[r] = start
        length[r] = i - start
        i += 1
        value = 0
        while data[i] != 10:
            value = value * 10 + (np.int64(data[i]) - 48)
            i += 1
        zone[r] = value
        i += 1
    return at, length, zone


async def copy_prefixes(conn: asyncpg.Connection, plan_id: str) -> bytes:
    """A plan's (prefix, zone_id) rows as COPY text: one round trip, no row objects."""
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(
        "SELECT prefix, zone_id FROM prefixes WHERE plan_id = $1", plan_id, output=sink
    )
    return b"".join(chunks)


def build_deck(data: bytes, tariffs: PlanTariffs) -> PrefixTable[Tariff]:
    """A plan's deck from its COPY text. Runs in a worker thread: no event-loop state.

    Prefixes whose zone has no tariff in the plan are left out, as if absent.
    Raises ValueError on a prefix that is not 1 to 32 digits.
    """
    buf = np.frombuffer(data, np.uint8)
    at, length, zone = _copy_columns(buf)
    zone_ids = np.asarray(tariffs.zone_ids, np.int64)  # sorted: ORDER BY zone_id
    slot = np.searchsorted(zone_ids, zone)
    rated = slot < len(zone_ids)
    rated[rated] = zone_ids[slot[rated]] == zone[rated]
    if not rated.all():
        at, length, slot = at[rated], length[rated], slot[rated]
    return PrefixTable.from_index(PrefixIndex.from_buffer(buf, at, length, slot), tariffs.tariffs)


def plan_from_row(row: asyncpg.Record) -> Plan:
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
    )


def _plans(rows: Iterable[asyncpg.Record]) -> dict[str, Plan]:
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


def _tariffs(rows: Iterable[asyncpg.Record]) -> dict[str, PlanTariffs]:
    grouped: dict[str, tuple[list[int], list[Tariff]]] = {}
    for r in rows:  # ordered by plan, then zone id
        ids, tariffs = grouped.setdefault(r["plan_id"], ([], []))
        ids.append(r["zone_id"])
        tariffs.append(
            Tariff(
                zone=r["zone"],
                rate=Rate(
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
                ),
            )
        )
    return {plan: PlanTariffs(tuple(ids), tuple(t)) for plan, (ids, t) in grouped.items()}


async def load_snapshot(
    pool: asyncpg.Pool,
    previous: CatalogSnapshot | None = None,
    changed: set[str] | None = None,
) -> CatalogSnapshot:
    """Read the catalog in one repeatable-read transaction and build a snapshot.

    With ``previous`` and ``changed`` (plan ids whose decks may have changed),
    every other plan keeps its deck from ``previous`` as long as its tariffs are
    the same; ``changed=None`` rebuilds every deck.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        plans = _plans(await conn.fetch("SELECT * FROM plans"))
        tariffs = _tariffs(
            await conn.fetch(
                "SELECT t.plan_id, t.zone_id, z.name AS zone, t.connect_fee, t.first_block,"
                " t.increment, t.price_per_minute, t.tiers, t.max_cost, t.cut_at_max_cost,"
                " t.surcharge_percent_bp, t.surcharge_flat, t.band_prices, t.per"
                " FROM tariffs t JOIN zones z ON z.id = t.zone_id WHERE t.direction = 'outbound'"
                " ORDER BY t.plan_id, t.zone_id"
            )
        )
        decks: dict[str, PrefixTable[Tariff]] = {}
        load: dict[str, bytes] = {}
        for plan_id in plans:
            plan_tariffs = tariffs.get(plan_id, PlanTariffs())
            if (
                previous is not None
                and changed is not None
                and plan_id not in changed
                and plan_id in previous.decks
                and previous.tariffs.get(plan_id, PlanTariffs()) == plan_tariffs
            ):
                decks[plan_id] = previous.decks[plan_id]
            elif plan_tariffs.tariffs:
                load[plan_id] = await copy_prefixes(conn, plan_id)
    empty: PrefixTable[Tariff] = PrefixTable()
    for plan_id, data in load.items():
        decks[plan_id] = await asyncio.to_thread(build_deck, data, tariffs[plan_id])
    for plan_id in plans:
        decks.setdefault(plan_id, empty)
    return CatalogSnapshot(plans=plans, decks=decks, tariffs=tariffs)


def _plan_named(payload: str | None) -> str | None:
    """The plan a catalog notification names (``deck:<id>``, ``plan:<id>``), if any."""
    kind, _, plan_id = (payload or "").partition(":")
    return plan_id if kind in ("deck", "plan") and plan_id else None


class CatalogHolder:
    """Holds the current snapshot and replaces it when the catalog changes (LISTEN/NOTIFY)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._snapshot = CatalogSnapshot(plans={}, decks={})
        self._listener: asyncpg.Connection | None = None
        self._reload_lock = asyncio.Lock()
        # Plans named by notifications not yet reloaded; a full reload when unsure.
        self._pending: set[str] = set()
        self._pending_full = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.version = 0

    @property
    def snapshot(self) -> CatalogSnapshot:
        return self._snapshot

    async def reload(self, plans: set[str] | None = None) -> None:
        """Build a new snapshot and swap it in; on failure the old one keeps serving.

        ``plans``: only these plans' decks may have changed (None: any).
        """
        async with self._reload_lock:
            await self._reload_locked(plans)

    async def _reload_locked(self, plans: set[str] | None) -> None:
        started = time.perf_counter()
        snapshot = await load_snapshot(self._pool, self._snapshot, plans)
        self._snapshot = snapshot
        self.version += 1
        log.info(
            "catalog loaded",
            extra={
                "plans": len(snapshot.plans),
                "prefixes": sum(len(d) for d in snapshot.decks.values()),
                "reloaded": "all" if plans is None else ",".join(sorted(plans)),
                "seconds": round(time.perf_counter() - started, 3),
                "catalog_version": self.version,
            },
        )

    async def start(self) -> None:
        await self.reload()
        self._listener = await self._pool.acquire()
        await self._listener.add_listener(CATALOG_CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        plan_id = _plan_named(payload)
        if plan_id is None:
            self._pending_full = True
        else:
            self._pending.add(plan_id)
        task = asyncio.get_running_loop().create_task(self._reload_pending())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_pending(self) -> None:
        async with self._reload_lock:
            if not (self._pending_full or self._pending):
                return  # an earlier task reloaded these changes already
            plans = None if self._pending_full else self._pending
            self._pending, self._pending_full = set(), False
            try:
                await self._reload_locked(plans)
            except Exception:
                self._pending_full = True  # rebuild everything on the next change
                log.exception("catalog reload failed; the previous snapshot keeps serving")

    async def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(CATALOG_CHANNEL, self._on_notify)
            await self._pool.release(self._listener)
            self._listener = None
        for task in list(self._tasks):
            task.cancel()


def warm_up() -> None:
    """Compile, or load from the on-disk cache, the kernels a catalog reload runs."""
    tariff = Tariff("x", Rate(connect_fee=0, first_block=1, increment=1, price_per_minute=1))
    deck = build_deck(b"44\t7\n447\t9\n", PlanTariffs((7,), (tariff,)))
    assert deck.match("4477") == ("44", tariff)
