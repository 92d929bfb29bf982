"""Mediation's catalog in PostgreSQL: rate types, plans' rates by rate type, suppliers'
rate-type overrides and the versioned usage import templates (migration 0040).

Every function takes an open connection (the importer reads inside its own
transaction; the admin API and CLI acquire one). Each check a table would make is
made first, so a mistake is a 400 naming the field, an unknown plan 404
``plan_not_found``, an unknown rate type, rate, override or template 404
``not_found``. A change to a plan's rates by rate type NOTIFYs the catalog channel
(``rate_types:<plan>``), so every serving process reloads them as it does a tariff
change, without rebuilding a deck.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ocs.catalog.snapshot import (
    CATALOG_CHANNEL,
    RATE_COLUMNS,
    RATE_TYPES,
    rate_from_row,
    tiers_to_json,
)
from ocs.catalog.store import mark_prices_changed, validate_currency, validate_plan_id
from ocs.errors import OcsError, Reason, invalid
from ocs.mediation.shipped import shipped_template
from ocs.mediation.template import Template, template_from_json, template_to_json
from ocs.money import MAX_AMOUNT
from ocs.rating.rates import Rate, Tier

# The tables' limits (migration 0040).
MAX_RATE_TYPE = 100
MAX_DESCRIPTION = 500
MAX_RATE_NAME = 200
MAX_CODE = 64
# INTEGER columns: first_block, increment, per, surcharge_percent_bp.
MAX_INT = 2**31 - 1
MAX_TIERS = 32
MAX_BAND_PRICES = 16
MAX_OVERRIDES = 10_000

# A supplier's or a template's name: the tables' CHECK.
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Control characters: PostgreSQL's [[:cntrl:]] (C0, DEL and the C1 range).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class RateType:
    """A named class of usage ("Canada On-Net") a template classifies records to."""

    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class RateTypeRate:
    """A plan's rate for usage of one rate type: its price shape and what invoices name."""

    plan_id: str
    rate_type: str
    name: str
    currency: str
    rate: Rate
    tax_code: str | None = None
    gl_code: str | None = None


@dataclass(frozen=True, slots=True)
class Override:
    """A supplier's regrouping: usage classified ``from_rate_type`` is rated as ``to_rate_type``."""

    supplier: str
    from_rate_type: str
    to_rate_type: str


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    """One stored version of a usage import template."""

    name: str
    version: int
    supplier: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TemplateSummary:
    """A template by name: its supplier and latest version, and how many it has."""

    name: str
    supplier: str
    latest_version: int
    versions: int
    updated_at: datetime


# --- checks ----------------------------------------------------------------------------


def validate_rate_type_name(name: str, field: str = "name") -> str:
    """A rate type's name itself: 1 to 100 characters, no control character, no space at
    either end (two names that differ only there would read the same); else 400."""
    if not 1 <= len(name) <= MAX_RATE_TYPE:
        raise invalid(field, f"expected 1 to {MAX_RATE_TYPE} characters")
    if _CONTROL.search(name):
        raise invalid(field, "must not contain a control character")
    if name != name.strip():
        raise invalid(field, "must not begin or end with a space")
    return name


def validate_supplier(supplier: str, field: str = "supplier") -> str:
    """A supplier's name itself when 1 to 64 letters, digits, '-', '_' or '.'; else 400."""
    if not _ID.fullmatch(supplier):
        raise invalid(field, "expected 1 to 64 letters, digits, '-', '_' or '.'")
    return supplier


def validate_template_name(name: str, field: str = "name") -> str:
    """A template's name itself when 1 to 64 letters, digits, '-', '_' or '.'; else 400."""
    if not _ID.fullmatch(name):
        raise invalid(field, "expected 1 to 64 letters, digits, '-', '_' or '.'")
    return name


def _text(field: str, value: str, longest: int, *, empty: bool = False) -> str:
    """A free text within its length, without control characters; else 400 naming it."""
    if len(value) > longest or (not empty and not value):
        raise invalid(field, f"expected {0 if empty else 1} to {longest} characters")
    if _CONTROL.search(value):
        raise invalid(field, "must not contain a control character")
    return value


def _count(field: str, value: int, least: int) -> int:
    """A whole number the INTEGER column holds, at least ``least``; else 400 naming it."""
    if isinstance(value, bool) or not least <= value <= MAX_INT:
        raise invalid(field, f"expected a whole number from {least} to {MAX_INT}")
    return value


def _amount(field: str, value: int) -> int:
    """An amount in micro-units, 0 to ``MAX_AMOUNT``; else 400 naming it."""
    if isinstance(value, bool) or not 0 <= value <= MAX_AMOUNT:
        raise invalid(field, "expected an amount from 0 to 1000000000")
    return value


def make_rate(
    *,
    price: int,
    connect_fee: int = 0,
    first_block: int = 0,
    increment: int = 1,
    per: int = 60,
    tiers: Sequence[Tier] = (),
    max_cost: int = 0,
    cut_at_max_cost: bool = False,
    surcharge_percent_bp: int = 0,
    surcharge_flat: int = 0,
    band_prices: Sequence[tuple[str, int]] = (),
) -> Rate:
    """A rate-type rate's price shape, checked field by field (400 naming the field: the
    API's and the CLI's names), then as a whole by building the ``Rate``.

    ``price`` is per ``per`` seconds (60: a price per minute) or units (1: per MB).
    """
    _amount("price", price)
    _amount("connect_fee", connect_fee)
    _count("first_block", first_block, 0)
    _count("increment", increment, 1)
    _count("per", per, 1)
    _amount("max_cost", max_cost)
    _count("surcharge_percent", surcharge_percent_bp, 0)
    _amount("surcharge_flat", surcharge_flat)
    if len(tiers) > MAX_TIERS:
        raise invalid("tiers", f"at most {MAX_TIERS} tiers")
    for n, tier in enumerate(tiers):
        _count(f"tiers[{n}].from_second", tier.start, 1)
        _amount(f"tiers[{n}].price_per_minute", tier.price_per_minute)
        _count(f"tiers[{n}].increment", tier.increment, 1)
        _amount(f"tiers[{n}].flat", tier.flat)
    if len(band_prices) > MAX_BAND_PRICES:
        raise invalid("band_prices", f"at most {MAX_BAND_PRICES} bands")
    for band, amount in band_prices:
        _text("band_prices", band, 64)
        _amount(f"band_prices.{band}", amount)
    try:
        return Rate(
            connect_fee=connect_fee,
            first_block=first_block,
            increment=increment,
            price_per_minute=price,
            tiers=tuple(tiers),
            max_cost=max_cost,
            cut_at_max_cost=cut_at_max_cost,
            per=per,
            surcharge_percent_bp=surcharge_percent_bp,
            surcharge_flat=surcharge_flat,
            band_prices=tuple(sorted(band_prices)),
        )
    except ValueError as exc:
        # What only the whole shape can break: the tiers' order.
        raise invalid("tiers", str(exc)) from None


# --- rate types ------------------------------------------------------------------------


async def create_rate_type(
    conn: asyncpg.Connection, name: str, description: str = ""
) -> tuple[RateType, bool]:
    """Define a rate type, or give an existing one this description; (it, whether new)."""
    validate_rate_type_name(name)
    _text("description", description, MAX_DESCRIPTION, empty=True)
    row = await conn.fetchrow(
        "INSERT INTO rate_types (name, description) VALUES ($1, $2)"
        " ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description"
        " RETURNING name, description, (xmax = 0) AS created",
        name,
        description,
    )
    return RateType(row["name"], row["description"]), bool(row["created"])


async def list_rate_types(conn: asyncpg.Connection) -> list[RateType]:
    """Every rate type, by name."""
    rows = await conn.fetch("SELECT name, description FROM rate_types ORDER BY name")
    return [RateType(r["name"], r["description"]) for r in rows]


def _in_use(name: str, plans: Sequence[str], suppliers: Sequence[str]) -> OcsError:
    """The refusal to delete a rate type that rates or overrides still name, naming them."""
    users = []
    if plans:
        users.append(f"the rates of plan(s) {', '.join(plans)}")
    if suppliers:
        users.append(f"the overrides of supplier(s) {', '.join(suppliers)}")
    # A code in use is a 400 naming it, as the billing rules' (decision 0024).
    return invalid("name", f"rate type {name!r} is in use by {' and '.join(users)}")


async def delete_rate_type(conn: asyncpg.Connection, name: str) -> RateType:
    """Delete a rate type no rate or override names; the one deleted.

    404 ``not_found`` when there is none; 400 naming ``name`` and what uses it when a
    plan's rate or a supplier's override still names it.
    """
    validate_rate_type_name(name)
    async with conn.transaction():
        # Locked: a rate or override naming it cannot be added meanwhile (their FKs).
        row = await conn.fetchrow(
            "SELECT name, description FROM rate_types WHERE name = $1 FOR UPDATE", name
        )
        if row is None:
            raise OcsError(Reason.NOT_FOUND, f"name: no rate type {name!r}", field="name")
        users = await conn.fetchrow(
            "SELECT ARRAY(SELECT plan_id FROM rate_type_rates WHERE rate_type = $1"
            "             ORDER BY plan_id LIMIT 10) AS plans,"
            " ARRAY(SELECT DISTINCT supplier FROM rate_type_overrides WHERE to_rate_type = $1"
            "       ORDER BY supplier LIMIT 10) AS suppliers",
            name,
        )
        if users["plans"] or users["suppliers"]:
            raise _in_use(name, users["plans"], users["suppliers"])
        await conn.execute("DELETE FROM rate_types WHERE name = $1", name)
    return RateType(row["name"], row["description"])


# --- a plan's rates by rate type ------------------------------------------------------


async def _plan_currency(conn: asyncpg.Connection, plan_id: str, *, lock: bool) -> str:
    """The plan's currency (its row locked when ``lock``); 404 plan_not_found if none."""
    validate_plan_id(plan_id, "plan_id")
    locking = " FOR UPDATE" if lock else ""
    currency = await conn.fetchval(f"SELECT currency FROM plans WHERE id = $1{locking}", plan_id)
    if currency is None:
        raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id")
    return str(currency).strip()


def _rate_type_rate(row: asyncpg.Record) -> RateTypeRate:
    """A ``rate_type_rates`` row."""
    return RateTypeRate(
        plan_id=row["plan_id"],
        rate_type=row["rate_type"],
        name=row["name"],
        currency=row["currency"].strip(),
        rate=rate_from_row(row),
        tax_code=row["tax_code"],
        gl_code=row["gl_code"],
    )


_RATE_ROW = f"plan_id, rate_type, name, currency, tax_code, gl_code, {RATE_COLUMNS}"


async def _notify(conn: asyncpg.Connection, plan_id: str) -> None:
    """Tell every serving process that the plan's rates by rate type changed, and note
    that its prices changed now (``mark_prices_changed``)."""
    await mark_prices_changed(conn, plan_id)
    await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"{RATE_TYPES}:{plan_id}")


async def set_rate_type_rate(
    conn: asyncpg.Connection,
    plan_id: str,
    rate_type: str,
    name: str,
    rate: Rate,
    *,
    currency: str | None = None,
    tax_code: str | None = None,
    gl_code: str | None = None,
) -> RateTypeRate:
    """Set (or replace) a plan's rate for a rate type; what was stored.

    ``currency`` (the amounts') must be the plan's: 400 naming ``currency``
    otherwise; None takes the plan's. 404 for an unknown plan or rate type. Every
    serving process reloads the plan's rates by rate type (no deck is rebuilt).
    """
    validate_plan_id(plan_id, "plan_id")
    validate_rate_type_name(rate_type, "rate_type")
    _text("name", name, MAX_RATE_NAME)
    code = None if currency is None else validate_currency(currency)
    for field, value in (("tax_code", tax_code), ("gl_code", gl_code)):
        if value is not None:
            _text(field, value, MAX_CODE)
    # The shape as the catalog stores a tariff's, checked again whoever built it.
    rate = make_rate(
        price=rate.price_per_minute,
        connect_fee=rate.connect_fee,
        first_block=rate.first_block,
        increment=rate.increment,
        per=rate.per,
        tiers=rate.tiers,
        max_cost=rate.max_cost,
        cut_at_max_cost=rate.cut_at_max_cost,
        surcharge_percent_bp=rate.surcharge_percent_bp,
        surcharge_flat=rate.surcharge_flat,
        band_prices=rate.band_prices,
    )
    async with conn.transaction():
        plan_currency = await _plan_currency(conn, plan_id, lock=True)
        if code is not None and code != plan_currency:
            raise invalid(
                "currency",
                f"plan {plan_id!r} bills in {plan_currency}: its rates are in {plan_currency},"
                f" not {code}",
            )
        # Shared lock: the rate type cannot be deleted before this rate names it.
        if (
            await conn.fetchval("SELECT 1 FROM rate_types WHERE name = $1 FOR SHARE", rate_type)
            is None
        ):
            raise OcsError(
                Reason.NOT_FOUND, f"rate_type: no rate type {rate_type!r}", field="rate_type"
            )
        row = await conn.fetchrow(
            "INSERT INTO rate_type_rates (plan_id, rate_type, name, currency, connect_fee,"
            " first_block, increment, price_per_minute, per, tiers, max_cost, cut_at_max_cost,"
            " surcharge_percent_bp, surcharge_flat, band_prices, tax_code, gl_code)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14,"
            " $15::jsonb, $16, $17)"
            " ON CONFLICT (plan_id, rate_type) DO UPDATE SET name = EXCLUDED.name,"
            " currency = EXCLUDED.currency, connect_fee = EXCLUDED.connect_fee,"
            " first_block = EXCLUDED.first_block, increment = EXCLUDED.increment,"
            " price_per_minute = EXCLUDED.price_per_minute, per = EXCLUDED.per,"
            " tiers = EXCLUDED.tiers, max_cost = EXCLUDED.max_cost,"
            " cut_at_max_cost = EXCLUDED.cut_at_max_cost,"
            " surcharge_percent_bp = EXCLUDED.surcharge_percent_bp,"
            " surcharge_flat = EXCLUDED.surcharge_flat, band_prices = EXCLUDED.band_prices,"
            " tax_code = EXCLUDED.tax_code, gl_code = EXCLUDED.gl_code"
            f" RETURNING {_RATE_ROW}",
            plan_id,
            rate_type,
            name,
            plan_currency,
            rate.connect_fee,
            rate.first_block,
            rate.increment,
            rate.price_per_minute,
            rate.per,
            tiers_to_json(rate.tiers),
            rate.max_cost,
            rate.cut_at_max_cost,
            rate.surcharge_percent_bp,
            rate.surcharge_flat,
            json.dumps(dict(rate.band_prices)),
            tax_code,
            gl_code,
        )
        await _notify(conn, plan_id)
    return _rate_type_rate(row)


async def rate_type_rates(conn: asyncpg.Connection, plan_id: str) -> list[RateTypeRate]:
    """A plan's rates by rate type, by rate type; 404 plan_not_found for no such plan."""
    await _plan_currency(conn, plan_id, lock=False)
    rows = await conn.fetch(
        f"SELECT {_RATE_ROW} FROM rate_type_rates WHERE plan_id = $1 ORDER BY rate_type",
        plan_id,
    )
    return [_rate_type_rate(r) for r in rows]


async def delete_rate_type_rate(
    conn: asyncpg.Connection, plan_id: str, rate_type: str
) -> RateTypeRate:
    """Remove a plan's rate for a rate type (its usage is then rated by zone); the one
    removed. 404 for an unknown plan, or a rate type the plan has no rate for."""
    validate_rate_type_name(rate_type, "rate_type")
    async with conn.transaction():
        await _plan_currency(conn, plan_id, lock=True)
        row = await conn.fetchrow(
            f"DELETE FROM rate_type_rates WHERE plan_id = $1 AND rate_type = $2"
            f" RETURNING {_RATE_ROW}",
            plan_id,
            rate_type,
        )
        if row is None:
            raise OcsError(
                Reason.NOT_FOUND,
                f"rate_type: plan {plan_id!r} has no rate for rate type {rate_type!r}",
                field="rate_type",
            )
        await _notify(conn, plan_id)
    return _rate_type_rate(row)


# --- suppliers' overrides -------------------------------------------------------------


async def list_overrides(conn: asyncpg.Connection, supplier: str) -> list[Override]:
    """A supplier's overrides, by the rate type they regroup (none: an empty list)."""
    validate_supplier(supplier)
    rows = await conn.fetch(
        "SELECT from_rate_type, to_rate_type FROM rate_type_overrides WHERE supplier = $1"
        " ORDER BY from_rate_type",
        supplier,
    )
    return [Override(supplier, r["from_rate_type"], r["to_rate_type"]) for r in rows]


async def overrides_of(conn: asyncpg.Connection, supplier: str) -> dict[str, str]:
    """A supplier's overrides as the importer applies them: from rate type -> to."""
    rows = await conn.fetch(
        "SELECT from_rate_type, to_rate_type FROM rate_type_overrides WHERE supplier = $1",
        supplier,
    )
    return {r["from_rate_type"]: r["to_rate_type"] for r in rows}


async def _missing_rate_types(conn: asyncpg.Connection, names: Sequence[str]) -> set[str]:
    """Which of ``names`` are no rate type; the others are locked against deletion."""
    found = await conn.fetch(
        "SELECT name FROM rate_types WHERE name = ANY($1::text[]) FOR SHARE", list(set(names))
    )
    return set(names) - {r["name"] for r in found}


async def _lock_supplier(conn: asyncpg.Connection, supplier: str) -> None:
    """Serialize changes to one supplier's table for the transaction: a replacement
    deletes and rewrites it, and a row another one added meanwhile would collide."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('rate_type_overrides:' || $1))", supplier
    )


async def replace_overrides(
    conn: asyncpg.Connection, supplier: str, pairs: Sequence[tuple[str, str]]
) -> list[Override]:
    """Replace a supplier's whole override table with (from, to) pairs; the new table.

    All or nothing: a bad pair is 400 naming it (``overrides[2].from_rate_type``, a
    rate type listed twice too), a ``to`` that is no rate type 404 naming it.
    """
    validate_supplier(supplier)
    if len(pairs) > MAX_OVERRIDES:
        raise invalid("overrides", f"at most {MAX_OVERRIDES} overrides")
    seen: dict[str, int] = {}
    for n, (source, target) in enumerate(pairs):
        field = f"overrides[{n}]"
        validate_rate_type_name(source, f"{field}.from_rate_type")
        validate_rate_type_name(target, f"{field}.to_rate_type")
        if source in seen:
            raise invalid(
                f"{field}.from_rate_type",
                f"{source!r} is overridden already by overrides[{seen[source]}]",
            )
        seen[source] = n
    async with conn.transaction():
        await _lock_supplier(conn, supplier)
        missing = await _missing_rate_types(conn, [target for _, target in pairs])
        for n, (_, target) in enumerate(pairs):
            if target in missing:
                field = f"overrides[{n}].to_rate_type"
                raise OcsError(Reason.NOT_FOUND, f"{field}: no rate type {target!r}", field=field)
        await conn.execute("DELETE FROM rate_type_overrides WHERE supplier = $1", supplier)
        if pairs:
            await conn.copy_records_to_table(
                "rate_type_overrides",
                records=[(supplier, source, target) for source, target in pairs],
                columns=["supplier", "from_rate_type", "to_rate_type"],
            )
    return sorted(
        (Override(supplier, source, target) for source, target in pairs),
        key=lambda o: o.from_rate_type,
    )


async def set_override(
    conn: asyncpg.Connection, supplier: str, from_rate_type: str, to_rate_type: str
) -> Override:
    """Set (or change) one of a supplier's overrides; 404 naming ``to_rate_type`` when it
    is no rate type."""
    validate_supplier(supplier)
    validate_rate_type_name(from_rate_type, "from_rate_type")
    validate_rate_type_name(to_rate_type, "to_rate_type")
    async with conn.transaction():
        await _lock_supplier(conn, supplier)
        if await _missing_rate_types(conn, [to_rate_type]):
            raise OcsError(
                Reason.NOT_FOUND,
                f"to_rate_type: no rate type {to_rate_type!r}",
                field="to_rate_type",
            )
        await conn.execute(
            "INSERT INTO rate_type_overrides (supplier, from_rate_type, to_rate_type)"
            " VALUES ($1, $2, $3) ON CONFLICT (supplier, from_rate_type)"
            " DO UPDATE SET to_rate_type = EXCLUDED.to_rate_type",
            supplier,
            from_rate_type,
            to_rate_type,
        )
    return Override(supplier, from_rate_type, to_rate_type)


async def delete_override(conn: asyncpg.Connection, supplier: str, from_rate_type: str) -> Override:
    """Remove one of a supplier's overrides; the one removed (404: there is none)."""
    validate_supplier(supplier)
    validate_rate_type_name(from_rate_type, "from_rate_type")
    target = await conn.fetchval(
        "DELETE FROM rate_type_overrides WHERE supplier = $1 AND from_rate_type = $2"
        " RETURNING to_rate_type",
        supplier,
        from_rate_type,
    )
    if target is None:
        raise OcsError(
            Reason.NOT_FOUND,
            f"from_rate_type: supplier {supplier!r} has no override of {from_rate_type!r}",
            field="from_rate_type",
        )
    return Override(supplier, from_rate_type, target)


# --- usage import templates -----------------------------------------------------------


def _definition(text: str) -> Template:
    """A stored definition as its template (it was checked when it was saved)."""
    return template_from_json(json.loads(text))


async def store_template(conn: asyncpg.Connection, template: Template) -> tuple[int, bool]:
    """Save a template: (its version, whether that version is new).

    A definition equal to the latest version's is that version (nothing stored); any
    difference is the next version. Two saves of one name at once are serialized (a
    transaction-scoped advisory lock), so each sees the other's version.

    Every version of a name keeps the supplier of the one before it (the first version
    of a shipped template's name, the shipped one's): a record is charged once per
    (supplier, record id), so a file imported again under a version naming another
    supplier would be charged again. Another supplier is refused naming ``supplier``.
    """
    validate_template_name(template.name)
    validate_supplier(template.supplier)
    definition = template_to_json(template)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('usage_template:' || $1))", template.name
        )
        latest = await conn.fetchrow(
            "SELECT version, supplier, definition FROM usage_templates WHERE name = $1"
            " ORDER BY version DESC LIMIT 1",
            template.name,
        )
        shipped = shipped_template(template.name)
        if latest is not None:
            supplier = latest["supplier"]
        else:
            supplier = None if shipped is None else shipped.supplier
        if supplier is not None and supplier != template.supplier:
            raise invalid(
                "supplier",
                f"template {template.name!r} is for supplier {supplier!r}: its records are"
                " charged once per supplier, so a version for another would charge the"
                " files imported under it again; store the template under another name",
            )
        if latest is not None:
            # Compared as templates, not as stored text: a definition stored before a
            # field with a default existed still equals the same template written now.
            try:
                same = _definition(latest["definition"]) == template
            except OcsError:
                same = False  # no longer a valid definition: any new one differs
            if same:
                return int(latest["version"]), False
        version = 1 if latest is None else int(latest["version"]) + 1
        await conn.execute(
            "INSERT INTO usage_templates (name, version, supplier, definition)"
            " VALUES ($1, $2, $3, $4::jsonb)",
            template.name,
            version,
            template.supplier,
            json.dumps(definition),
        )
    return version, True


async def save_template(conn: asyncpg.Connection, template: Template) -> int:
    """Save a template; its version: a new one only if it differs from the latest."""
    version, _new = await store_template(conn, template)
    return version


async def latest_template(conn: asyncpg.Connection, name: str) -> tuple[int, Template] | None:
    """(version, template) of a template's latest version; None when there is none."""
    row = await conn.fetchrow(
        "SELECT version, definition FROM usage_templates WHERE name = $1"
        " ORDER BY version DESC LIMIT 1",
        name,
    )
    return None if row is None else (int(row["version"]), _definition(row["definition"]))


async def template_version(
    conn: asyncpg.Connection, name: str, version: int
) -> tuple[int, Template] | None:
    """(version, template) of one version of a template; None when there is no such one."""
    row = await conn.fetchrow(
        "SELECT version, definition FROM usage_templates WHERE name = $1 AND version = $2",
        name,
        version,
    )
    return None if row is None else (int(row["version"]), _definition(row["definition"]))


async def template_versions(conn: asyncpg.Connection, name: str) -> list[TemplateVersion]:
    """Every version of a template, oldest first (none: an empty list)."""
    rows = await conn.fetch(
        "SELECT name, version, supplier, created_at FROM usage_templates WHERE name = $1"
        " ORDER BY version",
        name,
    )
    return [TemplateVersion(r["name"], r["version"], r["supplier"], r["created_at"]) for r in rows]


async def list_templates(conn: asyncpg.Connection) -> list[TemplateSummary]:
    """Every template by name: its latest version's supplier, the version, how many."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (name) name, supplier, version, created_at,"
        " count(*) OVER (PARTITION BY name) AS versions"
        " FROM usage_templates ORDER BY name, version DESC"
    )
    return [
        TemplateSummary(r["name"], r["supplier"], r["version"], r["versions"], r["created_at"])
        for r in rows
    ]
