"""The catalog snapshot: plans and their rated prefix decks, immutable, one per process.

A snapshot is built from PostgreSQL in one read and never changed; a new
catalog version builds a new snapshot beside the old one and ``CatalogHolder``
swaps the reference, so a request in flight finishes on the snapshot it began
with and traffic never pauses.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg

from ocs.charging.prefixes import PrefixTable
from ocs.charging.rating import Rate

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


@dataclass(frozen=True, slots=True)
class Tariff:
    """The rate of one zone in one plan (outbound)."""

    zone: str
    rate: Rate


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    plans: dict[str, Plan]
    decks: dict[str, PrefixTable[Tariff]]

    def plan(self, plan_id: str) -> Plan | None:
        return self.plans.get(plan_id)

    def tariff_for(self, plan_id: str, digits: str) -> tuple[str, Tariff] | None:
        """(matched prefix, tariff) of a normalised number in a plan's deck."""
        deck = self.decks.get(plan_id)
        return None if deck is None else deck.match(digits)


async def load_snapshot(pool: asyncpg.Pool) -> CatalogSnapshot:
    """Read the whole catalog in one repeatable-read transaction."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        plan_rows = await conn.fetch("SELECT * FROM plans")
        tariff_rows = await conn.fetch(
            "SELECT t.plan_id, t.zone_id, z.name AS zone, t.connect_fee, t.first_block,"
            " t.increment, t.price_per_minute"
            " FROM tariffs t JOIN zones z ON z.id = t.zone_id WHERE t.direction = 'outbound'"
        )
        prefix_rows = await conn.fetch("SELECT plan_id, prefix, zone_id FROM prefixes")
    plans = {
        r["id"]: Plan(
            id=r["id"],
            name=r["name"],
            currency=r["currency"],
            credit_limit=r["credit_limit"],
            min_balance=r["min_balance"],
            max_lines=r["max_lines"],
            max_call_duration=r["max_call_duration"],
        )
        for r in plan_rows
    }
    tariffs = {
        (r["plan_id"], r["zone_id"]): Tariff(
            zone=r["zone"],
            rate=Rate(
                connect_fee=r["connect_fee"],
                first_block=r["first_block"],
                increment=r["increment"],
                price_per_minute=r["price_per_minute"],
            ),
        )
        for r in tariff_rows
    }
    entries: dict[str, list[tuple[str, Tariff]]] = {plan_id: [] for plan_id in plans}
    for r in prefix_rows:
        tariff = tariffs.get((r["plan_id"], r["zone_id"]))
        if tariff is not None:
            entries[r["plan_id"]].append((r["prefix"], tariff))
    decks = {plan_id: PrefixTable(items) for plan_id, items in entries.items()}
    return CatalogSnapshot(plans=plans, decks=decks)


class CatalogHolder:
    """Holds the current snapshot and replaces it when the catalog changes (LISTEN/NOTIFY)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._snapshot = CatalogSnapshot(plans={}, decks={})
        self._listener: asyncpg.Connection | None = None
        self._reload_lock = asyncio.Lock()
        self._reload_pending = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.version = 0

    @property
    def snapshot(self) -> CatalogSnapshot:
        return self._snapshot

    async def reload(self) -> None:
        """Build a new snapshot and swap it in; on failure the old one keeps serving."""
        async with self._reload_lock:
            snapshot = await load_snapshot(self._pool)
            self._snapshot = snapshot
            self.version += 1
        log.info(
            "catalog loaded",
            extra={
                "plans": len(snapshot.plans),
                "prefixes": sum(len(d) for d in snapshot.decks.values()),
                "catalog_version": self.version,
            },
        )

    async def start(self) -> None:
        await self.reload()
        self._listener = await self._pool.acquire()
        await self._listener.add_listener(CATALOG_CHANNEL, self._on_notify)

    def _on_notify(self, *_: object) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:
            log.exception("catalog reload failed; the previous snapshot keeps serving")

    async def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(CATALOG_CHANNEL, self._on_notify)
            await self._pool.release(self._listener)
            self._listener = None
        for task in list(self._tasks):
            task.cancel()
