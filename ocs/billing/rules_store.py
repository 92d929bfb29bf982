"""The billing rules an operator manages: taxes, their assignments, exemptions, tax codes,
surcharges and bundles, as PostgreSQL stores them (migrations 0023, 0024).

``taxes.py``, ``surcharges.py`` and ``bundles.py`` read these tables to bill;
this module writes and lists them for the admin API and the command line. It
checks what it can before the database does, so that an operator's mistake is
refused 400 naming the field (``rules[1].allowance``), an unknown plan, tax,
account, subscription or bundle is refused 404, and a tax or bundle in another
currency than the plan it would bill is refused naming the field, never left
to a constraint's message (or a 500).

Rates are integers of millionths of a percent (decision 0022): ``parse_rate``
reads the decimal percent an operator writes ("8.875") and ``taxes.rate_text``
writes it back.
"""

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

import asyncpg

from ocs.billing import surcharges, taxes
from ocs.billing.currency import CurrencyError, minor_unit_exponent
from ocs.billing.surcharges import Surcharge
from ocs.billing.taxes import LEVELS, Exemption, Tax
from ocs.errors import OcsError, Reason, invalid

ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # as the tables' CHECKs: taxes, surcharges, bundles
MAX_TAX_RATE = 100_000_000_000  # 100,000% in millionths of a percent: the tables' bound
FULL_RATE = 100_000_000  # 100%: a discount's most
RATE_DECIMALS = 6  # millionths of a percent
# Dates a bill can be about (as the billing endpoints): far ones would overflow the
# period arithmetic of a run (a 120-month term from 9999-12-31).
FIRST_YEAR, LAST_YEAR = 1970, 2999
TARGET_KINDS = ("tax_code", "zone", "charge")
SURCHARGE_KINDS = ("percent", "flat")
SURCHARGE_TARGETS = ("zone", "charge")
# A tax code's owner -> its table and key column (fixed names: never from input).
CODE_TABLES = {
    "zone": ("zone_tax_codes", "zone"),
    "product": ("product_tax_codes", "product_code"),
    "rate_type": ("rate_type_tax_codes", "rate_type"),
}
FUNCTIONS = ("sum", "avg", "min", "max", "count")
MEASURES = ("duration", "consumption", "amount")
RULE_KINDS = ("free", "discount", "commitment", "flat_fee")
PERIODICITIES = ("one_shot", "monthly", "yearly")
TIMINGS = ("upfront", "due_date")
RESILIATIONS = ("none", "fixed", "remaining_months")
MAX_LIST = 1000


def parse_rate(text: str, field: str, *, maximum: int = MAX_TAX_RATE) -> int:
    """A decimal percent ("20", "8.875") in millionths of a percent; 400 naming ``field``."""
    if not re.fullmatch(r"\d{1,9}(\.\d{1,6})?", text.strip(), re.ASCII):
        raise invalid(field, f'expected a percentage such as "20" or "8.875", not {text!r}')
    try:
        value = Decimal(text.strip()) * 1_000_000
    except InvalidOperation:  # pragma: no cover - the pattern already guards
        raise invalid(field, f"not a percentage: {text!r}") from None
    rate = int(value)
    if not 0 <= rate <= maximum:
        raise invalid(field, f"must be at most {taxes.rate_text(maximum)}%")
    return rate


def check_day(field: str, day: date | None) -> None:
    """Refuse a date outside the years a bill can be about, naming the field."""
    if day is not None and not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise invalid(field, f"expected a year from {FIRST_YEAR} to {LAST_YEAR}")


def _text(field: str, value: str, longest: int) -> None:
    """Refuse an empty or too long text, naming the field."""
    if not 1 <= len(value) <= longest:
        raise invalid(field, f"expected 1 to {longest} characters")


def _an_id(field: str, value: str) -> None:
    """Refuse an id the tables' CHECK would refuse, naming the field."""
    if not ID.fullmatch(value):
        raise invalid(field, "expected 1 to 64 letters, digits, '-', '_' or '.'")


def _currency(field: str, code: str) -> None:
    """Refuse a currency ocs cannot invoice in."""
    try:
        minor_unit_exponent(code)
    except CurrencyError as error:
        raise invalid(field, str(error)) from None


def _tax_of(row: asyncpg.Record) -> Tax:
    """The tax of a ``taxes`` row."""
    return Tax(
        row["code"],
        row["name"],
        row["rate"],
        row["level"],
        row["currency"].strip(),
        row["valid_from"],
        row["valid_until"],
        row["compound"],
    )


async def _plan_currency(conn: asyncpg.Connection, plan_id: str) -> str:
    """The plan's currency; 404 plan_not_found when there is no such plan."""
    currency = await conn.fetchval("SELECT currency FROM plans WHERE id = $1", plan_id)
    if currency is None:
        raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan")
    return str(currency).strip()


async def _require_charge(conn: asyncpg.Connection, charge_id: str, field: str) -> None:
    """404 naming ``field`` when no charge has this id (a typo would tax nothing)."""
    if await conn.fetchval("SELECT 1 FROM charges WHERE id = $1", charge_id) is None:
        raise OcsError(Reason.NOT_FOUND, f"{field}: no charge {charge_id!r}", field=field)


# --- taxes -----------------------------------------------------------------------------


def validate_tax(tax: Tax) -> None:
    """Refuse (400, naming the field) a tax the database would refuse."""
    _an_id("code", tax.code)
    _text("name", tax.name, 200)
    if not 0 <= tax.rate <= MAX_TAX_RATE:
        raise invalid("rate", f"must be from 0 to {taxes.rate_text(MAX_TAX_RATE)}%")
    if tax.level not in LEVELS:
        raise invalid("level", f"expected one of {', '.join(LEVELS)}")
    _currency("currency", tax.currency)
    check_day("valid_from", tax.valid_from)
    check_day("valid_until", tax.valid_until)
    if tax.valid_until is not None and tax.valid_until <= tax.valid_from:
        raise invalid("valid_until", "must be after valid_from (it is the first day without)")


async def create_tax(pool: asyncpg.Pool, tax: Tax) -> Tax:
    """Define a tax; a code in use is refused (a rate change is a new tax, decision 0022)."""
    validate_tax(tax)
    try:
        await taxes.create_tax(pool, tax)
    except asyncpg.UniqueViolationError:
        raise invalid("code", f"tax {tax.code!r} exists already") from None
    return tax


async def list_taxes(
    pool: asyncpg.Pool,
    *,
    code: str | None = None,
    currency: str | None = None,
    valid_on: date | None = None,
) -> list[Tax]:
    """Taxes by code, filtered by code, currency and the day they are in force on."""
    rows = await pool.fetch(
        "SELECT * FROM taxes WHERE ($1::text IS NULL OR code = $1)"
        " AND ($2::text IS NULL OR currency = $2)"
        " AND ($3::date IS NULL OR (valid_from <= $3"
        "                          AND (valid_until IS NULL OR $3 < valid_until)))"
        " ORDER BY code LIMIT $4",
        code,
        currency,
        valid_on,
        MAX_LIST,
    )
    return [_tax_of(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Assignment:
    """A tax a plan assigns to a tax code, a zone or a charge (``plan_taxes``)."""

    id: int
    plan_id: str
    target_kind: str
    target: str
    tax: Tax


def _check_target(kind: str, target: str, kinds: Sequence[str]) -> None:
    """Refuse an unknown target kind or an empty or too long target."""
    if kind not in kinds:
        raise invalid("target_kind", f"expected one of {', '.join(kinds)}")
    _text("target", target, 64)


_ASSIGNED_SQL = """
SELECT p.id AS assignment, p.plan_id, p.target_kind, p.target, t.*
FROM plan_taxes p JOIN taxes t ON t.code = p.tax
WHERE p.plan_id = $1 AND ($2::text IS NULL OR p.tax = $2)
  AND ($3::text IS NULL OR (p.target_kind, p.target) = ($3, $4))
ORDER BY p.target_kind, p.target, t.code
"""


def _assignment(row: asyncpg.Record) -> Assignment:
    """An assignment of a ``_ASSIGNED_SQL`` row."""
    return Assignment(
        row["assignment"], row["plan_id"], row["target_kind"], row["target"], _tax_of(row)
    )


async def assign(
    pool: asyncpg.Pool, plan_id: str, code: str, target_kind: str, target: str
) -> tuple[Assignment, bool]:
    """Assign a tax to a plan's tax code, zone or charge: (the assignment, made now).

    Repeating an assignment changes nothing (made now: False). A tax in another
    currency than the plan's is refused naming ``tax`` (the database refuses it too:
    both foreign keys carry the currency).
    """
    _check_target(target_kind, target, TARGET_KINDS)
    async with pool.acquire() as conn, conn.transaction():
        currency = await _plan_currency(conn, plan_id)
        row = await conn.fetchrow("SELECT * FROM taxes WHERE code = $1", code)
        if row is None:
            raise OcsError(Reason.NOT_FOUND, f"tax: no tax {code!r}", field="tax")
        tax = _tax_of(row)
        if tax.currency != currency:
            raise invalid(
                "tax",
                f"tax {tax.code} is in {tax.currency}, plan {plan_id} bills in {currency}:"
                " only a tax in the plan's currency can be assigned",
            )
        if target_kind == "charge":
            await _require_charge(conn, target, "target")
        try:
            made = await conn.fetchval(
                "INSERT INTO plan_taxes (plan_id, currency, tax, target_kind, target)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id",
                plan_id,
                currency,
                code,
                target_kind,
                target,
            )
        except asyncpg.ForeignKeyViolationError:
            # A currency changed between the reads and the insert: the keys refuse it.
            raise invalid("tax", f"tax {code} is not in plan {plan_id}'s currency") from None
        [found] = await conn.fetch(_ASSIGNED_SQL, plan_id, code, target_kind, target)
    return _assignment(found), made is not None


async def assignments(pool: asyncpg.Pool, plan_id: str) -> list[Assignment]:
    """A plan's tax assignments, by target; 404 for an unknown plan."""
    async with pool.acquire() as conn:
        await _plan_currency(conn, plan_id)
        rows = await conn.fetch(_ASSIGNED_SQL, plan_id, None, None, None)
    return [_assignment(r) for r in rows]


async def unassign(
    pool: asyncpg.Pool, plan_id: str, code: str, target_kind: str, target: str
) -> Assignment:
    """Remove a tax assignment; the one removed. 404 when the plan has no such one."""
    _check_target(target_kind, target, TARGET_KINDS)
    async with pool.acquire() as conn, conn.transaction():
        await _plan_currency(conn, plan_id)
        found = await conn.fetch(_ASSIGNED_SQL, plan_id, code, target_kind, target)
        if not found:
            raise OcsError(
                Reason.NOT_FOUND,
                f"tax: plan {plan_id} does not assign {code!r} to {target_kind} {target!r}",
                field="tax",
            )
        await conn.execute("DELETE FROM plan_taxes WHERE id = $1", found[0]["assignment"])
    return _assignment(found[0])


# --- exemptions ------------------------------------------------------------------------


async def exempt(
    pool: asyncpg.Pool, account_id: str, reference: str, levels: Sequence[str]
) -> Exemption:
    """Make an account exempt from taxes of ``levels`` under ``reference`` (replacing any)."""
    _text("reference", reference, 200)
    if not levels:
        raise invalid("levels", f"at least one of {', '.join(LEVELS)}")
    for level in levels:
        if level not in LEVELS:
            raise invalid("levels", f"{level!r} is not one of {', '.join(LEVELS)}")
    ordered = [level for level in LEVELS if level in levels]
    try:
        await taxes.exempt(pool, account_id, reference, ordered)
    except asyncpg.ForeignKeyViolationError:
        raise OcsError(
            Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist", field="account"
        ) from None
    return Exemption(reference, frozenset(ordered))


async def exemption(pool: asyncpg.Pool, account_id: str) -> Exemption:
    """An account's exemption; 404 when it has none."""
    async with pool.acquire() as conn:
        found = (await taxes.exemptions(conn, [account_id])).get(account_id)
    if found is None:
        raise OcsError(
            Reason.NOT_FOUND, f"account {account_id!r} has no tax exemption", field="account"
        )
    return found


async def unexempt(pool: asyncpg.Pool, account_id: str) -> Exemption:
    """End an account's exemption; the one ended. 404 when it has none."""
    row = await pool.fetchrow(
        "DELETE FROM account_tax_exemptions WHERE account_id = $1 RETURNING reference, levels",
        account_id,
    )
    if row is None:
        raise OcsError(
            Reason.NOT_FOUND, f"account {account_id!r} has no tax exemption", field="account"
        )
    return Exemption(row["reference"], frozenset(row["levels"]))


def ordered_levels(exemption_found: Exemption) -> list[str]:
    """An exemption's levels in the order taxes show (city to federal, then other)."""
    return [level for level in LEVELS if level in exemption_found.levels]


# --- tax codes of zones, products and rate types ----------------------------------------


@dataclass(frozen=True, slots=True)
class TaxCode:
    """The tax code of a zone's usage, a product's charges or a rate type's usage."""

    kind: str  # zone | product | rate_type
    key: str  # the zone, product code or rate type
    tax_code: str


def _check_code_kind(kind: str) -> tuple[str, str]:
    """The table and key column of a tax code's owner kind; 400 naming ``kind``."""
    if kind not in CODE_TABLES:
        raise invalid("kind", f"expected one of {', '.join(CODE_TABLES)}")
    return CODE_TABLES[kind]


async def set_tax_code(pool: asyncpg.Pool, kind: str, key: str, tax_code: str) -> TaxCode:
    """Set the tax code of a zone, a product or a rate type (replacing any)."""
    _check_code_kind(kind)
    _text("key", key, 200)
    _text("tax_code", tax_code, 64)
    setter = {
        "zone": taxes.set_zone_tax_code,
        "product": taxes.set_product_tax_code,
        "rate_type": taxes.set_rate_type_tax_code,
    }[kind]
    await setter(pool, key, tax_code)
    return TaxCode(kind, key, tax_code)


async def tax_codes(pool: asyncpg.Pool, kind: str | None = None) -> list[TaxCode]:
    """Tax codes of zones, products and rate types (of one kind, or all), by kind and key."""
    if kind is not None:
        _check_code_kind(kind)
    found: list[TaxCode] = []
    async with pool.acquire() as conn:
        for owner, (table, column) in CODE_TABLES.items():
            if kind is None or kind == owner:
                rows = await conn.fetch(
                    f"SELECT {column} AS key, tax_code FROM {table} ORDER BY {column} LIMIT $1",
                    MAX_LIST,
                )
                found += [TaxCode(owner, r["key"], r["tax_code"]) for r in rows]
    return found


async def remove_tax_code(pool: asyncpg.Pool, kind: str, key: str) -> TaxCode:
    """Remove a zone's, product's or rate type's tax code; the one removed (404: none)."""
    table, column = _check_code_kind(kind)
    tax_code = await pool.fetchval(
        f"DELETE FROM {table} WHERE {column} = $1 RETURNING tax_code", key
    )
    if tax_code is None:
        raise OcsError(Reason.NOT_FOUND, f"key: {kind} {key!r} has no tax code", field="key")
    return TaxCode(kind, key, tax_code)


# --- surcharges ------------------------------------------------------------------------


def validate_surcharge(surcharge: Surcharge) -> None:
    """Refuse (400, naming the field) a surcharge the database would refuse."""
    _an_id("id", surcharge.id)
    _text("name", surcharge.name, 200)
    if surcharge.kind not in SURCHARGE_KINDS:
        raise invalid("kind", f"expected one of {', '.join(SURCHARGE_KINDS)}")
    _check_target(surcharge.target_kind, surcharge.target, SURCHARGE_TARGETS)
    percent = surcharge.kind == "percent"
    if percent != (surcharge.rate is not None):
        raise invalid("rate", "a percent surcharge has a rate, and only it")
    if (not percent) != (surcharge.amount is not None):
        raise invalid("amount", "a flat surcharge has an amount, and only it")
    if surcharge.rate is not None and not 0 <= surcharge.rate <= MAX_TAX_RATE:
        raise invalid("rate", f"must be from 0 to {taxes.rate_text(MAX_TAX_RATE)}%")
    if surcharge.amount is not None and surcharge.amount < 0:
        raise invalid("amount", "must not be negative")


async def create_surcharge(pool: asyncpg.Pool, plan_id: str, surcharge: Surcharge) -> Surcharge:
    """Add a surcharge to a plan (its flat amount in the plan's currency)."""
    validate_surcharge(surcharge)
    async with pool.acquire() as conn:
        await _plan_currency(conn, plan_id)
        if surcharge.target_kind == "charge":
            await _require_charge(conn, surcharge.target, "target")
    try:
        await surcharges.create_surcharge(pool, plan_id, surcharge)
    except asyncpg.UniqueViolationError:
        raise invalid("id", f"surcharge {surcharge.id!r} exists already") from None
    except asyncpg.ForeignKeyViolationError:
        raise OcsError(
            Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan"
        ) from None
    return surcharge


async def list_surcharges(pool: asyncpg.Pool, plan_id: str) -> list[Surcharge]:
    """A plan's surcharges, by id; 404 for an unknown plan."""
    async with pool.acquire() as conn:
        await _plan_currency(conn, plan_id)
        return await surcharges.load_surcharges(conn, plan_id)


async def remove_surcharge(pool: asyncpg.Pool, plan_id: str, surcharge_id: str) -> Surcharge:
    """Remove a plan's surcharge; the one removed (404: the plan has none of that id)."""
    r = await pool.fetchrow(
        "DELETE FROM surcharges WHERE plan_id = $1 AND id = $2 RETURNING *", plan_id, surcharge_id
    )
    if r is None:
        raise OcsError(
            Reason.NOT_FOUND, f"id: plan {plan_id} has no surcharge {surcharge_id!r}", field="id"
        )
    return Surcharge(
        r["id"], r["name"], r["kind"], r["target_kind"], r["target"], r["rate"], r["amount"]
    )


# --- bundles ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndicatorSpec:
    """A bundle's indicator: ``function`` of ``measure`` over the cycle's CDRs, filtered."""

    name: str
    function: str
    measure: str
    unit: str = ""
    zone: str | None = None
    rate_type: str | None = None
    service: str | None = None


@dataclass(frozen=True, slots=True)
class DiscountTier:
    """A discount's tier: ``rate`` (millionths of a percent) from ``threshold`` units."""

    threshold: int
    rate: int


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A bundle's rule (its position is its place in the bundle's list, from 1)."""

    kind: str
    description: str
    indicator: str | None = None
    allowance: int | None = None
    amount: int | None = None
    periodicity: str | None = None
    timing: str | None = None
    tiers: tuple[DiscountTier, ...] = ()


@dataclass(frozen=True, slots=True)
class BundleSpec:
    """A bundle: its currency, commitment term and resiliation rule, indicators and rules."""

    id: str
    name: str
    currency: str
    commitment_months: int | None = None
    resiliation: str = "none"
    resiliation_fee: int = 0
    indicators: tuple[IndicatorSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()


def _one_of(field: str, value: str | None, allowed: Sequence[str]) -> None:
    """Refuse a value outside ``allowed``, naming the field."""
    if value not in allowed:
        raise invalid(field, f"expected one of {', '.join(allowed)}")


def _validate_indicator(where: str, indicator: IndicatorSpec) -> None:
    """Refuse an indicator the tables would refuse."""
    _an_id(f"{where}.name", indicator.name)
    _one_of(f"{where}.function", indicator.function, FUNCTIONS)
    _one_of(f"{where}.measure", indicator.measure, MEASURES)
    if len(indicator.unit) > 16:
        raise invalid(f"{where}.unit", "at most 16 characters")
    for name in ("zone", "rate_type", "service"):
        value = getattr(indicator, name)
        if value is not None:
            _text(f"{where}.{name}", value, 200)
    if indicator.service is not None and indicator.measure == "duration":
        raise invalid(f"{where}.service", "usage events have a service, calls' seconds none")


def _absent(where: str, rule: RuleSpec, kind: str, names: Sequence[str]) -> None:
    """Refuse any of ``names`` given on a rule of a kind that has none of them."""
    for name in names:
        if getattr(rule, name) not in (None, ()):
            raise invalid(f"{where}.{name}", f"a {kind} rule has none")


def _validate_rule(where: str, rule: RuleSpec, indicators: dict[str, IndicatorSpec]) -> None:
    """Refuse a rule the tables would refuse, or that would bill nothing sensible."""
    _one_of(f"{where}.kind", rule.kind, RULE_KINDS)
    _text(f"{where}.description", rule.description, 200)
    if rule.kind == "flat_fee":
        _absent(where, rule, "flat_fee", ("indicator", "allowance", "tiers"))
        if rule.amount is None or rule.amount <= 0:
            raise invalid(f"{where}.amount", "a flat fee needs an amount above 0")
        _one_of(f"{where}.periodicity", rule.periodicity, PERIODICITIES)
        _one_of(f"{where}.timing", rule.timing, TIMINGS)
        return
    _absent(where, rule, rule.kind, ("periodicity", "timing"))
    if rule.indicator is None:
        raise invalid(f"{where}.indicator", f"a {rule.kind} rule needs one of the indicators")
    indicator = indicators.get(rule.indicator)
    if indicator is None:
        raise invalid(f"{where}.indicator", f"no indicator {rule.indicator!r} in this bundle")
    if rule.kind == "free":
        _absent(where, rule, "free", ("amount", "tiers"))
        if rule.allowance is None or rule.allowance <= 0:
            raise invalid(f"{where}.allowance", "a free rule needs an allowance above 0")
        if indicator.function not in ("sum", "count"):
            raise invalid(f"{where}.indicator", "a free allowance counts a sum or count indicator")
    elif rule.kind == "discount":
        _absent(where, rule, "discount", ("allowance", "amount"))
        if not rule.tiers:
            raise invalid(f"{where}.tiers", "a discount needs at least one tier")
        thresholds = [t.threshold for t in rule.tiers]
        if len(set(thresholds)) != len(thresholds):
            raise invalid(f"{where}.tiers", "two tiers have the same threshold")
        for n, tier in enumerate(rule.tiers):
            if tier.threshold < 0:
                raise invalid(f"{where}.tiers[{n}].threshold", "must not be negative")
            if not 0 < tier.rate <= FULL_RATE:
                raise invalid(f"{where}.tiers[{n}].rate", "must be above 0% and at most 100%")
    else:  # commitment: a minimum spend
        _absent(where, rule, "commitment", ("allowance", "tiers"))
        if rule.amount is None or rule.amount <= 0:
            raise invalid(f"{where}.amount", "a commitment needs a minimum above 0")
        if (indicator.function, indicator.measure) != ("sum", "amount"):
            raise invalid(f"{where}.indicator", "a commitment is on a sum of amount (a spend)")


def validate_bundle(bundle: BundleSpec) -> None:
    """Refuse (400, naming the field: ``rules[1].allowance``) a bundle the tables would
    refuse, or whose rules cannot bill."""
    _an_id("id", bundle.id)
    _text("name", bundle.name, 200)
    _currency("currency", bundle.currency)
    if bundle.commitment_months is not None and not 1 <= bundle.commitment_months <= 120:
        raise invalid("commitment_months", "expected 1 to 120 months")
    _one_of("resiliation", bundle.resiliation, RESILIATIONS)
    if bundle.resiliation_fee < 0:
        raise invalid("resiliation_fee", "must not be negative")
    if bundle.resiliation != "none":
        if bundle.commitment_months is None:
            raise invalid("commitment_months", "a resiliation fee needs a commitment term")
        if bundle.resiliation_fee <= 0:
            raise invalid("resiliation_fee", "a resiliation rule needs a fee above 0")
    indicators: dict[str, IndicatorSpec] = {}
    for n, indicator in enumerate(bundle.indicators):
        _validate_indicator(f"indicators[{n}]", indicator)
        if indicator.name in indicators:
            raise invalid(f"indicators[{n}].name", f"{indicator.name!r} is named twice")
        indicators[indicator.name] = indicator
    if not bundle.rules:
        raise invalid("rules", "a bundle needs at least one rule")
    for n, rule in enumerate(bundle.rules):
        _validate_rule(f"rules[{n}]", rule, indicators)


async def create_bundle(pool: asyncpg.Pool, bundle: BundleSpec) -> BundleSpec:
    """Define a bundle with its indicators and rules, in one transaction."""
    validate_bundle(bundle)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO bundles (id, name, currency, commitment_months, resiliation,"
                " resiliation_fee) VALUES ($1, $2, $3, $4, $5, $6)",
                bundle.id,
                bundle.name,
                bundle.currency,
                bundle.commitment_months,
                bundle.resiliation,
                bundle.resiliation_fee,
            )
            await conn.executemany(
                "INSERT INTO bundle_indicators (bundle_id, name, function, measure, unit, zone,"
                " rate_type, service) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [
                    (
                        bundle.id,
                        i.name,
                        i.function,
                        i.measure,
                        i.unit,
                        i.zone,
                        i.rate_type,
                        i.service,
                    )
                    for i in bundle.indicators
                ],
            )
            await conn.executemany(
                "INSERT INTO bundle_rules (bundle_id, position, kind, description, indicator,"
                " allowance, amount, periodicity, timing)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                [
                    (
                        bundle.id,
                        position,
                        r.kind,
                        r.description,
                        r.indicator,
                        r.allowance,
                        r.amount,
                        r.periodicity,
                        r.timing,
                    )
                    for position, r in enumerate(bundle.rules, 1)
                ],
            )
            await conn.executemany(
                "INSERT INTO bundle_discount_tiers (bundle_id, position, threshold, rate)"
                " VALUES ($1, $2, $3, $4)",
                [
                    (bundle.id, position, t.threshold, t.rate)
                    for position, r in enumerate(bundle.rules, 1)
                    for t in r.tiers
                ],
            )
    except asyncpg.UniqueViolationError:
        raise invalid("id", f"bundle {bundle.id!r} exists already") from None
    except asyncpg.IntegrityConstraintViolationError as error:
        # What validate_bundle let through (it should not): still the operator's input.
        raise invalid("bundle", f"refused by the database: {error}") from None
    return bundle


async def list_bundles(
    pool: asyncpg.Pool, *, bundle_id: str | None = None, currency: str | None = None
) -> list[BundleSpec]:
    """Bundles by id, with their indicators and rules (filtered by id and currency)."""
    async with pool.acquire() as conn:
        heads = await conn.fetch(
            "SELECT * FROM bundles WHERE ($1::text IS NULL OR id = $1)"
            " AND ($2::text IS NULL OR currency = $2) ORDER BY id LIMIT $3",
            bundle_id,
            currency,
            MAX_LIST,
        )
        ids = [h["id"] for h in heads]
        indicator_rows = await conn.fetch(
            "SELECT * FROM bundle_indicators WHERE bundle_id = ANY($1::text[])"
            " ORDER BY bundle_id, name",
            ids,
        )
        rule_rows = await conn.fetch(
            "SELECT * FROM bundle_rules WHERE bundle_id = ANY($1::text[])"
            " ORDER BY bundle_id, position",
            ids,
        )
        tier_rows = await conn.fetch(
            "SELECT * FROM bundle_discount_tiers WHERE bundle_id = ANY($1::text[])"
            " ORDER BY bundle_id, position, threshold",
            ids,
        )
    indicators: dict[str, list[IndicatorSpec]] = defaultdict(list)
    for i in indicator_rows:
        indicators[i["bundle_id"]].append(
            IndicatorSpec(
                i["name"], i["function"], i["measure"], i["unit"], i["zone"], i["rate_type"],
                i["service"],
            )
        )  # fmt: skip
    tiers: dict[tuple[str, int], list[DiscountTier]] = defaultdict(list)
    for t in tier_rows:
        tiers[t["bundle_id"], t["position"]].append(DiscountTier(t["threshold"], t["rate"]))
    rules: dict[str, list[RuleSpec]] = defaultdict(list)
    for r in rule_rows:
        rules[r["bundle_id"]].append(
            RuleSpec(
                r["kind"], r["description"], r["indicator"], r["allowance"], r["amount"],
                r["periodicity"], r["timing"], tuple(tiers[r["bundle_id"], r["position"]]),
            )
        )  # fmt: skip
    return [
        BundleSpec(
            h["id"],
            h["name"],
            h["currency"].strip(),
            h["commitment_months"],
            h["resiliation"],
            h["resiliation_fee"],
            tuple(indicators[h["id"]]),
            tuple(rules[h["id"]]),
        )
        for h in heads
    ]


@dataclass(frozen=True, slots=True)
class HeldBundle:
    """A bundle on a subscription, from ``start_date`` to ``end_date`` (excluded; None:
    the subscription's own)."""

    id: int
    subscription_id: int
    bundle_id: str
    start_date: date | None
    end_date: date | None


def _held(row: asyncpg.Record) -> HeldBundle:
    """A ``subscription_bundles`` row."""
    return HeldBundle(
        row["id"], row["subscription_id"], row["bundle_id"], row["start_date"], row["end_date"]
    )


async def _subscription(conn: asyncpg.Connection, subscription_id: int) -> asyncpg.Record:
    """A subscription's start and its plan's currency; 404 naming ``subscription``."""
    row = await conn.fetchrow(
        "SELECT s.id, s.start_date, p.currency FROM subscriptions s"
        " JOIN plans p ON p.id = s.plan_id WHERE s.id = $1",
        subscription_id,
    )
    if row is None:
        raise OcsError(
            Reason.NOT_FOUND, f"no subscription {subscription_id}", field="subscription_id"
        )
    return row


async def attach(
    pool: asyncpg.Pool,
    subscription_id: int,
    bundle_id: str,
    *,
    start_date: date | None = None,
    end_date: date | None = None,
) -> HeldBundle:
    """Put a bundle on a subscription from ``start_date`` (None: the subscription's start)
    to ``end_date`` (excluded; None: the subscription's end). Only a bundle in the
    subscription's plan's currency (decision 0023: another would give no lines)."""
    check_day("start_date", start_date)
    check_day("end_date", end_date)
    if start_date is not None and end_date is not None and end_date < start_date:
        raise invalid("end_date", "must not be before start_date")
    async with pool.acquire() as conn, conn.transaction():
        sub = await _subscription(conn, subscription_id)
        currency = await conn.fetchval("SELECT currency FROM bundles WHERE id = $1", bundle_id)
        if currency is None:
            raise OcsError(Reason.NOT_FOUND, f"bundle: no bundle {bundle_id!r}", field="bundle")
        plan_currency = str(sub["currency"]).strip()
        if str(currency).strip() != plan_currency:
            raise invalid(
                "bundle",
                f"bundle {bundle_id} is in {str(currency).strip()}, the subscription's plan"
                f" bills in {plan_currency}",
            )
        row = await conn.fetchrow(
            "INSERT INTO subscription_bundles (subscription_id, bundle_id, start_date, end_date)"
            " VALUES ($1, $2, $3, $4) RETURNING *",
            subscription_id,
            bundle_id,
            start_date,
            end_date,
        )
    return _held(row)


async def detach(
    pool: asyncpg.Pool, subscription_id: int, bundle_id: str, on: date
) -> list[HeldBundle]:
    """End a subscription's bundle on ``on`` (its first day without; before its commitment
    term ends, the resiliation fee is billed). The holdings ended; 404 when the
    subscription holds that bundle on no day from ``on``."""
    check_day("on", on)
    async with pool.acquire() as conn, conn.transaction():
        sub = await _subscription(conn, subscription_id)
        rows = await conn.fetch(
            "SELECT * FROM subscription_bundles WHERE subscription_id = $1 AND bundle_id = $2"
            " AND (end_date IS NULL OR end_date > $3) ORDER BY id FOR UPDATE",
            subscription_id,
            bundle_id,
            on,
        )
        if not rows:
            raise OcsError(
                Reason.NOT_FOUND,
                f"bundle: subscription {subscription_id} holds no bundle {bundle_id!r} after {on}",
                field="bundle",
            )
        for row in rows:
            start = max(sub["start_date"], row["start_date"] or sub["start_date"])
            if on < start:
                raise invalid("on", f"before the bundle's start, {start}")
        ended = await conn.fetch(
            "UPDATE subscription_bundles SET end_date = $2 WHERE id = ANY($1::bigint[])"
            " RETURNING *",
            [r["id"] for r in rows],
            on,
        )
    return sorted((_held(r) for r in ended), key=lambda h: h.id)


async def held_bundles(pool: asyncpg.Pool, subscription_id: int) -> list[HeldBundle]:
    """The bundles a subscription holds, oldest first; 404 for an unknown subscription."""
    async with pool.acquire() as conn:
        await _subscription(conn, subscription_id)
        rows = await conn.fetch(
            "SELECT * FROM subscription_bundles WHERE subscription_id = $1 ORDER BY id",
            subscription_id,
        )
    return [_held(r) for r in rows]


# --- subscriptions' billing addresses --------------------------------------------------


@dataclass(frozen=True, slots=True)
class BillingAddress:
    """A subscription's structured billing address (migration 0028), which an external
    tax engine sources taxes by; ``billing_address`` keeps the street lines."""

    city: str
    county: str
    region: str
    postal_code: str
    country: str
    email: str  # where invoices and dunning notices are emailed ("": not emailed)


async def billing_addresses(
    pool: asyncpg.Pool, subscription_ids: Sequence[int]
) -> dict[int, BillingAddress]:
    """Subscription id -> its billing address parts, for the ones that exist."""
    rows = await pool.fetch(
        "SELECT id, billing_city, billing_county, billing_region, billing_postal_code,"
        " billing_country, billing_email FROM subscriptions WHERE id = ANY($1::bigint[])",
        list(subscription_ids),
    )
    return {
        r["id"]: BillingAddress(
            r["billing_city"],
            r["billing_county"],
            r["billing_region"],
            r["billing_postal_code"],
            r["billing_country"],
            r["billing_email"],
        )
        for r in rows
    }
