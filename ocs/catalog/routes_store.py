"""Carriers, their cost decks and route sets in PostgreSQL; a plan's routing.

Every change commits in one transaction and then NOTIFYs the catalog channel
(``ocs_catalog``) so that every ``ocs serve`` process swaps in a new snapshot:
``carrier:<id>`` rebuilds that carrier's cost deck only, ``routes:<id>`` rereads
the route sets, ``plan:<id>`` the plan's routing settings (ocs.catalog.snapshot).

A cost deck (its CSV and its rules: ocs.decks.cost_deck) is all or nothing: a
bad deck is refused whole with every problem named, and a good deck replaces the
carrier's whole deck in one transaction.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numba
import numpy as np

from ocs.catalog.snapshot import CATALOG_CHANNEL
from ocs.catalog.store import validate_currency, validate_plan_id
from ocs.decks.cost_deck import CARRIER_COLUMNS, RATE_FIELDS, CarrierDeck, parse_carrier_deck
from ocs.errors import OcsError, Reason, invalid
from ocs.numbers.matcher import prefix_keys

MAX_NAME_CHARS = 200
MAX_ROUTE_SET_CARRIERS = 64


def validate_id(value: object, field: str) -> str:
    """A carrier or route set id: 1 to 64 letters, digits, '-', '_' or '.' (as plan ids)."""
    if not isinstance(value, str):
        raise invalid(field, "expected a string")
    return validate_plan_id(value, field)


@dataclass(frozen=True, slots=True)
class Carrier:
    """A carrier calls may be routed to; ``currency``: the ISO 4217 code its cost deck is
    priced in (None: not known, a carrier from before migration 0076 it could not tell:
    no plan's calls are offered it until it is set)."""

    id: str
    name: str
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class CarrierDeckImport:
    """The outcome of a cost deck import: prefixes and distinct rates stored."""

    carrier_id: str
    prefixes: int
    rates: int  # distinct rates


# --- writes ------------------------------------------------------------------------------


async def _notify(conn: asyncpg.Connection, payload: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, payload)


async def create_carrier(
    pool: asyncpg.Pool, carrier_id: str, name: str, currency: str | None = None
) -> tuple[Carrier, bool]:
    """Create a carrier, or rename an existing one; (carrier, whether it is new).

    A new carrier needs its ``currency`` (its cost deck's prices are in it). An existing
    one keeps its currency when ``currency`` is None or the same; one of unknown
    currency (from before migration 0076) is given it; a known currency never changes
    (the deck stored is priced in it): 400 naming ``currency``.
    """
    validate_id(carrier_id, "id")
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise invalid("name", f"expected 1 to {MAX_NAME_CHARS} printable characters")
    if currency is not None:
        currency = validate_currency(currency)
    async with pool.acquire() as conn, conn.transaction():
        # Locked so that no route set or plan is checked against the carrier while its
        # currency is set (set_route_set, set_plan_routing: FOR SHARE).
        stored = await conn.fetchrow(
            "SELECT currency FROM carriers WHERE id = $1 FOR UPDATE", carrier_id
        )
        if stored is None:
            if currency is None:
                raise invalid("currency", "a new carrier needs the currency its deck is priced in")
            inserted = await conn.fetchval(
                "INSERT INTO carriers (id, name, currency) VALUES ($1, $2, $3)"
                " ON CONFLICT (id) DO NOTHING RETURNING true",
                carrier_id,
                name,
                currency,
            )
            if inserted:
                await _notify(conn, f"carrier:{carrier_id}")
                return Carrier(carrier_id, name, currency), True
            # Created meanwhile by another request: this one renames it, as if it came later.
            stored = await conn.fetchrow(
                "SELECT currency FROM carriers WHERE id = $1 FOR UPDATE", carrier_id
            )
            if stored is None:  # no API deletes a carrier: only by hand, meanwhile
                raise OcsError(
                    Reason.NOT_FOUND, f"carrier {carrier_id!r} does not exist", field="id"
                )
        known: str | None = stored["currency"]
        if currency is not None and currency != known:
            if known is not None:
                raise invalid(
                    "currency",
                    f"carrier {carrier_id!r} is priced in {known}: its currency cannot"
                    f" change (create another carrier for a deck in {currency})",
                )
            # Unknown until now (migration 0076 could not tell): offered from now on to
            # the plans of this currency, never to others, whose route sets may still
            # list it (logged and counted by the catalog, ocs.catalog.snapshot).
            known = currency
        await conn.execute(
            "UPDATE carriers SET name = $2, currency = $3 WHERE id = $1", carrier_id, name, known
        )
        await _notify(conn, f"carrier:{carrier_id}")
    return Carrier(carrier_id, name, known), False


async def list_carriers(pool: asyncpg.Pool) -> list[Carrier]:
    """Every carrier, by id."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, name, currency FROM carriers ORDER BY id")
    return [Carrier(r["id"], r["name"], r["currency"]) for r in rows]


async def import_carrier_rates(
    pool: asyncpg.Pool, carrier_id: str, deck: CarrierDeck | str | bytes
) -> CarrierDeckImport:
    """Replace a carrier's whole cost deck in one transaction (parsing it first if text).

    The rows go in by one COPY, its text written by a compiled pass in prefix
    order (rows then fill the primary-key index leaf after leaf).
    """
    validate_id(carrier_id, "carrier_id")
    if not isinstance(deck, CarrierDeck):
        deck = await asyncio.to_thread(parse_carrier_deck, deck)
    payload = await asyncio.to_thread(_copy_text, carrier_id.encode(), deck)
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchval("SELECT 1 FROM carriers WHERE id = $1 FOR UPDATE", carrier_id)
        if found is None:
            raise OcsError(
                Reason.NOT_FOUND, f"carrier {carrier_id!r} does not exist", field="carrier_id"
            )
        await conn.execute("DELETE FROM carrier_rates WHERE carrier_id = $1", carrier_id)
        await conn.copy_to_table(
            "carrier_rates",
            source=io.BytesIO(payload),
            columns=["carrier_id", *CARRIER_COLUMNS],
            format="text",
        )
        await _notify(conn, f"carrier:{carrier_id}")
    return CarrierDeckImport(carrier_id, len(deck), len(deck.rates))


def _copy_text(carrier: bytes, deck: CarrierDeck) -> bytes:
    """COPY text of (carrier, prefix, connect fee, first block, increment, price) rows,
    in prefix order. ``carrier`` is a validated id: nothing in it needs escaping."""
    keys = prefix_keys(deck.buf, deck.prefix_at, deck.prefix_len)
    rows = np.argsort(keys, kind="stable")
    out = _copy_lines(
        np.frombuffer(carrier, np.uint8),
        deck.buf,
        deck.prefix_at,
        deck.prefix_len,
        deck.values,
        deck.rate_of,
        rows,
    )
    return out.tobytes()


@numba.njit(cache=True, nogil=True)
def _copy_lines(
    carrier: np.ndarray,
    buf: np.ndarray,
    prefix_at: np.ndarray,
    prefix_len: np.ndarray,
    values: np.ndarray,
    rate_of: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    size = 0
    for r in rows:
        size += len(carrier) + prefix_len[r] + 6 + RATE_FIELDS * 19
    out = np.empty(size, np.uint8)
    digits = np.empty(20, np.uint8)
    n = 0
    for r in rows:
        out[n : n + len(carrier)] = carrier
        n += len(carrier)
        out[n] = 9
        n += 1
        at = prefix_at[r]
        for i in range(prefix_len[r]):
            out[n + i] = buf[at + i]
        n += prefix_len[r]
        for c in range(RATE_FIELDS):
            out[n] = 9
            n += 1
            value = values[rate_of[r], c]
            k = 0
            while True:
                digits[k] = 48 + value % 10
                value //= 10
                k += 1
                if value == 0:
                    break
            for i in range(k):
                out[n + i] = digits[k - 1 - i]
            n += k
        out[n] = 10
        n += 1
    return out[:n]


def refuse_other_currency(
    field: str, carrier_id: str, carrier_currency: str | None, plan_id: str, plan_currency: str
) -> None:
    """A 400 naming ``field`` unless the carrier is priced in the plan's currency: its
    costs are compared with the plan's prices (RouteBook.routes_for), so a carrier in
    another currency, or in none known, must never be in a plan's route set."""
    if carrier_currency is None:
        raise invalid(
            field,
            f"carrier {carrier_id!r} has no currency, and plan {plan_id!r} is in"
            f" {plan_currency}: give the carrier its currency (POST /v1/carriers)",
        )
    if carrier_currency != plan_currency:
        raise invalid(
            field,
            f"carrier {carrier_id!r} is priced in {carrier_currency}, and plan {plan_id!r}"
            f" is in {plan_currency}: a route set holds carriers of its plans' currency only",
        )


def validate_carrier_list(carriers: object, field: str = "carriers") -> tuple[str, ...]:
    """A route set's carriers: a list of distinct carrier ids, in the order to try them."""
    if not isinstance(carriers, list | tuple) or len(carriers) > MAX_ROUTE_SET_CARRIERS:
        raise invalid(field, f"expected a list of at most {MAX_ROUTE_SET_CARRIERS} carrier ids")
    ids: list[str] = []
    for n, carrier_id in enumerate(carriers):
        ids.append(validate_id(carrier_id, f"{field}[{n}]"))
        if carrier_id in ids[:-1]:
            raise invalid(f"{field}[{n}]", f"carrier {carrier_id!r} is given twice")
    return tuple(ids)


async def set_route_set(
    pool: asyncpg.Pool, route_set_id: str, carriers: Sequence[str]
) -> tuple[str, ...]:
    """Create a route set or replace its carriers with ``carriers``, in that order."""
    validate_id(route_set_id, "route_set_id")
    ids = validate_carrier_list(list(carriers))
    async with pool.acquire() as conn, conn.transaction():
        # Locked so that a carrier cannot go, nor change currency, between the check
        # and the insert.
        existing = {
            r["id"]: r["currency"]
            for r in await conn.fetch(
                "SELECT id, currency FROM carriers WHERE id = ANY($1::text[]) FOR SHARE",
                list(ids),
            )
        }
        for n, carrier_id in enumerate(ids):
            if carrier_id not in existing:
                raise OcsError(
                    Reason.NOT_FOUND,
                    f"carriers[{n}]: carrier {carrier_id!r} does not exist",
                    field=f"carriers[{n}]",
                )
        await conn.execute(
            "INSERT INTO route_sets (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", route_set_id
        )
        # Held until commit: a plan given this route set meanwhile (set_plan_routing,
        # FOR SHARE) waits, and is then checked against the carriers written here.
        await conn.execute("SELECT 1 FROM route_sets WHERE id = $1 FOR UPDATE", route_set_id)
        plans = await conn.fetch(
            "SELECT id, currency FROM plans WHERE route_set_id = $1 ORDER BY id", route_set_id
        )
        for n, carrier_id in enumerate(ids):
            for plan in plans:
                refuse_other_currency(
                    f"carriers[{n}]", carrier_id, existing[carrier_id], plan["id"], plan["currency"]
                )
        await conn.execute("DELETE FROM route_set_carriers WHERE route_set_id = $1", route_set_id)
        await conn.execute(
            "INSERT INTO route_set_carriers (route_set_id, position, carrier_id)"
            " SELECT $1, c.n - 1, c.id FROM unnest($2::text[]) WITH ORDINALITY AS c (id, n)",
            route_set_id,
            list(ids),
        )
        await _notify(conn, f"routes:{route_set_id}")
    return ids


async def set_plan_routing(
    pool: asyncpg.Pool, plan_id: str, route_set_id: str | None, allow_negative_margin: bool
) -> None:
    """Give a plan a route set (None: no routing) and its negative-margin policy."""
    if route_set_id is not None:
        validate_id(route_set_id, "route_set")
    async with pool.acquire() as conn, conn.transaction():
        currency = await conn.fetchval(
            "SELECT currency FROM plans WHERE id = $1 FOR UPDATE", plan_id
        )
        if currency is None:
            raise OcsError(
                Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id"
            )
        if route_set_id is not None:
            found = await conn.fetchval(
                "SELECT 1 FROM route_sets WHERE id = $1 FOR SHARE", route_set_id
            )
            if found is None:
                raise OcsError(
                    Reason.NOT_FOUND,
                    f"route_set: route set {route_set_id!r} does not exist",
                    field="route_set",
                )
            # Its carriers held so that none changes currency before this commits.
            for carrier in await conn.fetch(
                "SELECT c.id, c.currency FROM route_set_carriers rsc"
                " JOIN carriers c ON c.id = rsc.carrier_id"
                " WHERE rsc.route_set_id = $1 ORDER BY rsc.position FOR SHARE OF c",
                route_set_id,
            ):
                refuse_other_currency(
                    "route_set", carrier["id"], carrier["currency"], plan_id, currency
                )
        await conn.execute(
            "UPDATE plans SET route_set_id = $2, allow_negative_margin = $3 WHERE id = $1",
            plan_id,
            route_set_id,
            allow_negative_margin,
        )
        await _notify(conn, f"plan:{plan_id}")
