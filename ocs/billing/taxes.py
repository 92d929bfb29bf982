"""Taxes on an invoice: which taxes each line bears, and the tax lines, rounded once per code.

The rule (decision 0022), stated here once:

- A line bears the taxes its plan assigns (``plan_taxes``) to its tax code,
  its zone or its charge, valid on the invoice date. A charge line's tax code
  is its charge's (``charges.tax_code``, else its product's,
  ``product_tax_codes``); a usage line's is its rate type's
  (``rate_type_tax_codes``) when it has one, else its zone's
  (``zone_tax_codes``); a surcharge line is taxed as the charge, or the zone
  and rate type, it surcharges (a zone's is split per rate type,
  ``surcharges``); any other line (a bundle's) is taxed by the zone, charge or
  tax code it names, and bears no tax when it names none. A counter fee is
  taxed as the counter's own charge when the counter says so
  (``counters.taxes_follow_counter``), else as the regular tariff of the
  counter's first zone.
- **Per code, once.** For each tax, its basis is the sum of the (already
  rounded) amounts of every line bearing it; the tax is ``basis x rate``
  rounded **once** to the currency's minor unit, half away from zero
  (``round_half_away``, decision 0019). Never per line then summed: three
  lines of 1.03 EUR at 20% are 0.62 EUR of VAT (3.09 x 20% = 0.618), not
  0.63 (0.206 -> 0.21 three times), Lago #821's one-cent error.
- **Compound** (a tax on a tax): a compound tax's basis is its lines' sum
  plus, for each non-compound tax they bear, that tax on the lines both bear
  (``shared x rate`` rounded once; when every line of that tax bears the
  compound one too, which is the ordinary case, exactly that tax's line).
- **Exemption**: an exempt account's exemption covers jurisdiction levels;
  a tax of a covered level gives a zero line naming the exemption
  reference, so the invoice says why no tax was charged.
- Rates are integers of millionths of a percent (20% = 20_000_000, 8.875% =
  8_875_000): ``basis x rate / 100_000_000`` in integers, never a float.

Tax lines move money at posting (the real-time path debited usage net of tax).

A plan chooses who taxes its invoices (``plan_billing.tax_engine``): its own
rules above (``internal``), or an external engine (``external``, the North
America case, ``tax_engine``): ``external_engine`` sends an invoice's lines as
transactions, each with its account's billing location (``TaxInvoice.billing``,
from the subscription's address) and, for calls, where they started or ended
(``transaction_locations``), and makes one tax line per engine tax of what
comes back, summing the engine's exact amounts and rounding once per tax, by
the same rule. An exempt account's exemption holds whoever computes the tax:
the engine is sent it (the certificate and its levels, so that its answer and
its audit trail record an exempt sale), and an engine's tax of a covered level is
the same zero line naming the exemption (``engine_lines``), whatever amount the
engine answered: one that taxes it anyway is charged nothing of it, and logged. An external plan's
drafts are never taxed at drafting (``taxed_at_drafting``): they are taxed at
posting.
"""

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import aiohttp
import asyncpg
import msgspec

from ocs.billing.currency import format_amount, minor_unit_micro, round_half_away, round_line
from ocs.billing.cycles import PlanBilling
from ocs.billing.lines import Line
from ocs.billing.tax_engine import (
    Location,
    Locations,
    TaxExemption,
    TaxLine,
    TaxRequest,
    TaxTransaction,
    TransactionType,
    engine_taxes,
)
from ocs.config import Settings

log = logging.getLogger("ocs.billing.taxes")

# A rate in millionths of a percent: x / 100 (percent) / 1_000_000 (millionths).
RATE_SCALE = 100_000_000
LEVELS = ("city", "county", "state", "federal", "other")


def rate_text(rate: int) -> str:
    """A rate in millionths of a percent as a customer reads it: ``"20"``, ``"8.875"``."""
    whole, fraction = divmod(rate, 1_000_000)
    return f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")


def apply_rate(basis: int, rate: int, currency: str) -> tuple[int, int]:
    """``(exact, rounded)``: ``basis x rate`` to the micro-unit, and once to the minor unit."""
    step = minor_unit_micro(currency)
    exact = round_half_away(basis * rate, RATE_SCALE)
    return exact, round_half_away(basis * rate, RATE_SCALE * step) * step


@dataclass(frozen=True, slots=True)
class Tax:
    """A tax definition: ``rate`` in millionths of a percent, valid [valid_from, valid_until)."""

    code: str
    name: str
    rate: int
    level: str
    currency: str
    valid_from: date
    valid_until: date | None = None
    compound: bool = False

    def valid_on(self, day: date) -> bool:
        """Whether the tax is in force on ``day``."""
        return self.valid_from <= day and (self.valid_until is None or day < self.valid_until)


@dataclass(frozen=True, slots=True)
class Exemption:
    """An account's tax exemption: its reference and the jurisdiction levels it covers."""

    reference: str
    levels: frozenset[str]


@dataclass(frozen=True, slots=True)
class TaxRules:
    """What one plan taxes: its assignments and the tax codes of charges, zones, counters.

    ``assigned``: (target kind, target) -> the taxes assigned to it, target kind
    ``tax_code``, ``zone`` or ``charge``. ``counters``: counter id -> (taxes follow
    the counter, the counter's first zone).
    """

    assigned: Mapping[tuple[str, str], Sequence[Tax]]
    charge_codes: Mapping[str, str]
    zone_codes: Mapping[str, str]
    counters: Mapping[str, tuple[bool, str]]
    rate_type_codes: Mapping[str, str] = field(default_factory=dict)
    # What ``taxes_of`` found, by what it depends on: a run asks it for every line of
    # every invoice, and a chunk's lines share a handful of charges, zones and codes.
    found: dict[tuple[object, ...], tuple[Tax, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def targets(self, line: Line) -> list[tuple[str, str]]:
        """The (kind, target) keys a line is taxed by."""
        charge, zone = line.charge_id, line.zone
        counter = self.counters.get(line.counter_id or "") if line.kind == "counter" else None
        if counter is not None and not counter[0]:
            charge, zone = None, counter[1]  # the regular tariff: the counter's zone
        keys: list[tuple[str, str]] = []
        if charge is not None:
            keys.append(("charge", charge))
            if code := self.charge_codes.get(charge):
                keys.append(("tax_code", code))
        if zone is not None:
            keys.append(("zone", zone))
        # A rate type's tax code is more specific than its zone's: it replaces it. (A
        # bundle line may name a rate type without a zone.)
        by_type = self.rate_type_codes.get(line.rate_type or "")
        if code := by_type or (self.zone_codes.get(zone) if zone is not None else None):
            keys.append(("tax_code", code))
        if line.kind != "tax" and line.tax_code:  # a line may name its tax code (bundles)
            keys.append(("tax_code", line.tax_code))
        return keys

    def taxes_of(self, line: Line, day: date) -> list[Tax]:
        """The taxes in force on ``day`` that ``line`` bears (each once)."""
        if not self.assigned:
            return []
        kind = line.kind
        # Everything ``targets`` reads of the line, and the day.
        key = (
            kind == "counter" and line.counter_id,
            line.charge_id,
            line.zone,
            line.rate_type,
            kind != "tax" and line.tax_code,
            day,
        )
        taxes = self.found.get(key)
        if taxes is None:
            borne: dict[str, Tax] = {}
            for target in self.targets(line):
                for tax in self.assigned.get(target, ()):
                    if tax.valid_on(day):
                        borne.setdefault(tax.code, tax)
            taxes = self.found[key] = tuple(borne.values())
        return list(taxes)


NO_TAXES = TaxRules({}, {}, {}, {})


def _tax_line(tax: Tax, basis: int, currency: str, exemption: Exemption | None) -> Line:
    """One tax line: its basis and rate shown, or a zero line naming the exemption."""
    shown = f"{tax.name} {rate_text(tax.rate)}% of {format_amount(basis, currency)} {currency}"
    if exemption is not None and tax.level in exemption.levels:
        exact = amount = 0
        shown = f"{shown}: exempt ({exemption.reference})"
    else:
        exact, amount = apply_rate(basis, tax.rate, currency)
    return Line(
        "tax",
        shown,
        None,
        None,
        1,
        exact,
        amount,
        True,
        tax_code=tax.code,
        basis=basis,
        rate=tax.rate,
    )


def tax_lines(
    lines: Sequence[Line],
    rules: TaxRules,
    currency: str,
    day: date,
    exemption: Exemption | None = None,
) -> list[Line]:
    """The tax lines of an invoice made of ``lines``: one per tax code, rounded once each.

    Non-compound taxes come first (by level, city to federal, then code), then
    compound ones. Lines that are taxes already bear none.
    """
    bearing: dict[str, list[int]] = defaultdict(list)
    taxes: dict[str, Tax] = {}
    for index, line in enumerate(lines):
        if line.kind == "tax" or line.amount == 0:
            continue
        for tax in rules.taxes_of(line, day):
            taxes[tax.code] = tax
            bearing[tax.code].append(index)
    order = sorted(taxes.values(), key=lambda t: (t.compound, LEVELS.index(t.level), t.code))
    found: list[Line] = []
    charged: dict[str, int] = {}  # non-compound tax code -> its rate, when charged
    for tax in order:
        members = bearing[tax.code]
        basis = sum(int(lines[i].amount) for i in members)
        if tax.compound:
            mine = set(members)
            for code, rate in charged.items():
                shared = sum(int(lines[i].amount) for i in bearing[code] if i in mine)
                basis += apply_rate(shared, rate, currency)[1]
        line = _tax_line(tax, basis, currency, exemption)
        found.append(line)
        if not tax.compound and line.amount:
            charged[tax.code] = tax.rate
    return found


_RULES_SQL = """
SELECT p.target_kind, p.target, t.*
FROM plan_taxes p JOIN taxes t ON t.code = p.tax
WHERE p.plan_id = $1
ORDER BY p.target_kind, p.target, t.code
"""


def _tax(row: asyncpg.Record) -> Tax:
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


async def load_rules(conn: asyncpg.Connection, plan_id: str) -> TaxRules:
    """A plan's tax rules, in three queries (none when it assigns no tax)."""
    assigned: dict[tuple[str, str], list[Tax]] = defaultdict(list)
    for row in await conn.fetch(_RULES_SQL, plan_id):
        assigned[row["target_kind"], row["target"]].append(_tax(row))
    if not assigned:
        return NO_TAXES
    charge_codes = {
        r["id"]: r["code"]
        for r in await conn.fetch(
            "SELECT c.id, COALESCE(NULLIF(c.tax_code, ''), p.tax_code) AS code FROM charges c"
            " LEFT JOIN product_tax_codes p ON p.product_code = c.product_code"
            " WHERE c.tax_code <> '' OR p.tax_code IS NOT NULL"
        )
    }
    zone_codes = {
        r["zone"]: r["tax_code"] for r in await conn.fetch("SELECT * FROM zone_tax_codes")
    }
    counters = {
        r["id"]: (r["taxes_follow_counter"], r["zones"][0])
        for r in await conn.fetch(
            "SELECT id, taxes_follow_counter, zones FROM counters WHERE plan_id = $1", plan_id
        )
    }
    rate_types = {
        r["rate_type"]: r["tax_code"] for r in await conn.fetch("SELECT * FROM rate_type_tax_codes")
    }
    return TaxRules(assigned, charge_codes, zone_codes, counters, rate_types)


async def exemptions(conn: asyncpg.Connection, account_ids: list[str]) -> dict[str, Exemption]:
    """Account -> its exemption, for the exempt ones among ``account_ids``."""
    return {
        r["account_id"]: Exemption(r["reference"], frozenset(r["levels"]))
        for r in await conn.fetch(
            "SELECT * FROM account_tax_exemptions WHERE account_id = ANY($1::text[])",
            account_ids,
        )
    }


async def create_tax(pool: asyncpg.Pool, tax: Tax) -> None:
    """Define a tax."""
    await pool.execute(
        "INSERT INTO taxes (code, name, rate, level, currency, valid_from, valid_until, compound)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        tax.code,
        tax.name,
        tax.rate,
        tax.level,
        tax.currency,
        tax.valid_from,
        tax.valid_until,
        tax.compound,
    )


async def assign_tax(
    pool: asyncpg.Pool, plan_id: str, tax: str, target_kind: str, target: str
) -> None:
    """Assign a tax to a plan's tax code, zone or charge (the database refuses another currency)."""
    await pool.execute(
        "INSERT INTO plan_taxes (plan_id, currency, tax, target_kind, target)"
        " SELECT p.id, p.currency, $2, $3, $4 FROM plans p WHERE p.id = $1",
        plan_id,
        tax,
        target_kind,
        target,
    )


async def set_zone_tax_code(pool: asyncpg.Pool, zone: str, tax_code: str) -> None:
    """The tax code of usage in ``zone``."""
    await pool.execute(
        "INSERT INTO zone_tax_codes (zone, tax_code) VALUES ($1, $2)"
        " ON CONFLICT (zone) DO UPDATE SET tax_code = EXCLUDED.tax_code",
        zone,
        tax_code,
    )


async def exempt(
    pool: asyncpg.Pool, account_id: str, reference: str, levels: Sequence[str]
) -> None:
    """Make an account exempt from taxes of ``levels``, under ``reference``."""
    await pool.execute(
        "INSERT INTO account_tax_exemptions (account_id, reference, levels) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id) DO UPDATE SET reference = $2, levels = $3",
        account_id,
        reference,
        list(levels),
    )


NO_LOCATION = Location()  # nothing known: an account without an address


@dataclass(frozen=True, slots=True)
class TaxInvoice:
    """An untaxed draft as posting taxes it: who, in what currency, on which date, where.

    ``billing``: the account's billing location (its subscription's address,
    ``billing_location``); ``number``: the account's member number when it has
    exactly one on the invoice date (None: none, or several and a usage line
    cannot say which placed its calls); ``exemption``: the account's tax
    exemption, if any (its levels are charged nothing, whatever the engine says).
    """

    id: int
    account_id: str
    plan_id: str
    currency: str
    invoice_date: date
    billing: Location = NO_LOCATION
    number: str | None = None
    exemption: Exemption | None = None


EXTERNAL = "external"


def taxed_at_drafting(billing: PlanBilling, calculate_taxes: bool) -> bool:
    """Whether a run's drafts of this plan get their tax lines at drafting.

    Only with taxes on, and only for a plan taxed by its own rules: an external
    plan's drafts stay untaxed (``taxes_calculated`` false) and are taxed by the
    engine at posting (``taxing.tax_drafts``), never by the internal rules.
    """
    return calculate_taxes and billing.tax_engine != EXTERNAL


def billing_location(
    country: str, region: str, county: str, city: str, postal_code: str
) -> Location:
    """A billing location from a subscription's address columns; an empty part is absent."""
    return Location(
        country=country or None,
        region=region or None,
        county=county or None,
        city=city or None,
        postal_code=postal_code or None,
    )


# A tax engine: the tax lines of one invoice's (untaxed) lines, or an exception when it
# cannot answer; posting then keeps the invoice a draft with the reason.
TaxEngine = Callable[[TaxInvoice, list[Line]], Awaitable[list[Line]]]

USAGE_KINDS = ("usage", "usage_event", "counter", "counter_usage")


def engine_lines(
    answered: Sequence[TaxLine], currency: str, exemption: Exemption | None = None
) -> list[Line]:
    """Invoice tax lines of an engine's answer: one per engine tax, rounded once.

    The engine's exact amounts of one tax (code, jurisdiction, rate) over every
    transaction are summed, then rounded once to the minor unit, as the plan's
    own taxes are; the basis is the sum of its bases. ``rate`` None: a flat fee.
    A tax of a level ``exemption`` covers is a zero line naming the exemption,
    as the plan's own taxes give (``_tax_line``): the engine is told of the
    exemption, yet an account exempt from a level is charged nothing of it
    whatever the engine answered (the guard; ``external_engine`` logs such taxes).
    """
    groups: dict[tuple[str, str, str, str, int | None], list[TaxLine]] = {}
    for tax in answered:
        groups.setdefault((tax.level, tax.jurisdiction, tax.code, tax.name, tax.rate), []).append(
            tax
        )
    step = minor_unit_micro(currency)
    found: list[Line] = []
    for (level, jurisdiction, code, name, rate), shares in sorted(
        groups.items(), key=lambda g: (LEVELS.index(g[0][0]), g[0][2], g[0][1])
    ):
        basis = sum(t.basis for t in shares)
        exact = sum(t.amount for t in shares)
        shown_basis = format_amount(basis, currency) if basis % step == 0 else str(basis)
        shown = f"{name} ({jurisdiction})"
        if rate is not None:
            shown = f"{shown} {rate_text(rate)}% of {shown_basis} {currency}"
        if exemption is not None and level in exemption.levels:
            exact = 0
            shown = f"{shown}: exempt ({exemption.reference})"
        found.append(
            Line(
                "tax",
                shown,
                None,
                None,
                1,
                exact,
                round_line(exact, currency),
                True,
                tax_code=code,
                basis=basis,
                rate=rate,
            )
        )
    return found


# Lines of calls: they have a direction, so the account's end of the call is known.
CALL_KINDS = ("usage", "counter", "counter_usage")
# Bundle credits on usage: the engine is told they are usage (a negative amount).
USAGE_CREDIT_KINDS = ("bundle_free", "bundle_discount")


def transaction_locations(line: Line, billing: Location, number: str | None = None) -> Locations:
    """The locations of one line's transaction, as far as ocs knows them.

    - billing: the account's billing address, always;
    - service: the same address (ocs keeps no other address where the service
      is used), when it is known at all;
    - caller / called, for lines of calls only: the account's own end of the
      calls, the service address with the account's member number when it has
      exactly one. Outbound calls start there (caller), inbound calls end there
      (called). The other end is left out: a usage line sums the calls of a
      zone, direction and rate type to many numbers, and a zone names no place
      an engine can source.
    """
    known = billing != NO_LOCATION
    service = billing if known else None
    caller = called = None
    if line.kind in CALL_KINDS and (known or number is not None):
        own = msgspec.structs.replace(billing, number=number)
        if line.direction == "inbound":
            called = own
        else:
            caller = own
    return Locations(billing=billing, service=service, caller=caller, called=called)


def transaction_type(line: Line) -> TransactionType:
    """A line's engine transaction type: ``usage`` for lines of usage, the bundle credits
    on usage and a zone's surcharges (taxed as the usage they surcharge, as on the
    internal path), ``subscription`` for the rest (a charge's surcharges included)."""
    on_usage = line.kind == "surcharge" and line.charge_id is None and line.zone is not None
    if line.kind in USAGE_KINDS or line.kind in USAGE_CREDIT_KINDS or on_usage:
        return "usage"
    return "subscription"


def tax_request(
    invoice: TaxInvoice, lines: Sequence[Line], billing: Location | None = None
) -> TaxRequest | None:
    """The engine request of an invoice's lines (None: nothing to tax).

    Every non-zero line but taxes is one transaction, numbered by its place on
    the invoice, typed by ``transaction_type`` (a zone's surcharge is ``usage``, one
    transaction per rate type, as the lines it surcharges); its product is the
    charge, zone or tax code it names (else its kind). ``billing`` replaces the
    invoice's own location.
    """
    where = invoice.billing if billing is None else billing
    transactions = tuple(
        TaxTransaction(
            id=str(index),
            type=transaction_type(line),
            product=line.charge_id or line.zone or line.tax_code or line.kind,
            description=line.description,
            amount=int(line.amount),
            locations=transaction_locations(line, where, invoice.number),
            quantity=max(int(line.calls or line.quantity), 1),
            seconds=line.billed_seconds,
        )
        for index, line in enumerate(lines, start=1)
        if line.amount and line.kind != "tax"
    )
    if not transactions:
        return None
    exemption = invoice.exemption
    return TaxRequest(
        invoice_id=str(invoice.id),
        account_id=invoice.account_id,
        currency=invoice.currency,
        tax_date=invoice.invoice_date,
        transactions=transactions,
        exemption=None
        if exemption is None
        else TaxExemption(certificate=exemption.reference, levels=tuple(sorted(exemption.levels))),
    )


def external_engine(
    settings: Settings,
    billing: Location | None = None,
    *,
    session: aiohttp.ClientSession | None = None,
) -> TaxEngine:
    """A ``TaxEngine`` asking the configured HTTP engine (``tax_engine.engine_taxes``).

    Each invoice's lines go out as ``tax_request`` makes them, with the
    invoice's own billing location, or ``billing`` for every invoice when given.
    """

    async def ask(invoice: TaxInvoice, lines: list[Line]) -> list[Line]:
        """The invoice's tax lines from the engine."""
        request = tax_request(invoice, lines, billing)
        if request is None:
            return []
        answered = await engine_taxes(settings, request, session=session)
        if invoice.exemption is not None:
            warn_exempt_taxed(invoice.id, answered, invoice.exemption)
        return engine_lines(answered, invoice.currency, invoice.exemption)

    return ask


def warn_exempt_taxed(invoice_id: int, answered: Sequence[TaxLine], exemption: Exemption) -> None:
    """Log (once per invoice) an engine's taxes on levels the account is exempt from: it
    was told of the exemption, so its records now disagree with the invoice, which
    charges nothing of them (a certificate the engine does not accept, an adapter that
    drops it). ``amount``: what was left uncharged, in micro-units."""
    taxed = [t for t in answered if t.level in exemption.levels and t.amount != 0]
    if taxed:
        log.warning(
            "tax engine taxed levels the account is exempt from",
            extra={
                "invoice_id": invoice_id,
                "certificate": exemption.reference,
                "levels": sorted({t.level for t in taxed}),
                "amount": sum(t.amount for t in taxed),
            },
        )


async def set_product_tax_code(pool: asyncpg.Pool, product_code: str, tax_code: str) -> None:
    """The tax code of a product's charges that name none themselves."""
    await pool.execute(
        "INSERT INTO product_tax_codes (product_code, tax_code) VALUES ($1, $2)"
        " ON CONFLICT (product_code) DO UPDATE SET tax_code = EXCLUDED.tax_code",
        product_code,
        tax_code,
    )


async def set_rate_type_tax_code(pool: asyncpg.Pool, rate_type: str, tax_code: str) -> None:
    """The tax code of usage of ``rate_type`` (it wins over the zone's)."""
    await pool.execute(
        "INSERT INTO rate_type_tax_codes (rate_type, tax_code) VALUES ($1, $2)"
        " ON CONFLICT (rate_type) DO UPDATE SET tax_code = EXCLUDED.tax_code",
        rate_type,
        tax_code,
    )


async def set_bundle_tax_code(pool: asyncpg.Pool, bundle_id: str, tax_code: str) -> None:
    """The tax code of a bundle's own lines: its flat fees, its resiliation fee, and a
    commitment whose indicator names no zone or rate type (decision 0023).

    A bundle is a product sold: its code is kept as the product code ``bundle_id``
    in ``product_tax_codes``, so no other table is needed.
    """
    await set_product_tax_code(pool, bundle_id, tax_code)
