"""Taxing untaxed drafts at posting: the tax lines a run left out.

A run with ``calculate_taxes`` off writes drafts without tax lines
(``taxes_calculated`` false), and so does any run for a plan taxed by an
external engine (``taxes.taxed_at_drafting``). Before posting, ``tax_drafts``
adds them from the stored lines, per invoice by its plan's choice
(``plan_billing.tax_engine``):

- ``internal``: the plan's rules (``taxes.tax_lines``, the same rule as at
  drafting);
- ``external``: the HTTP engine of the settings (``tax_engine_url``), asked
  with the invoice's account's own billing location (its subscription's
  address) and member number; with no engine configured the invoice is held,
  ``tax_error`` "no tax engine configured". The account's tax exemption is
  sent to the engine and applies as on the internal path: the engine's taxes
  of an exempt level are zero lines naming the exemption.

A failed engine call holds the invoice back, untaxed, with its reason: it is
never posted untaxed.

An engine found unavailable (no answer in time, unreachable, 5xx or 429 after
every retry) is not asked again in the same pass (``EngineOutage``): the rest
of the pass's external drafts are held at once with that reason, and taxed on
a later pass. Each invoice would otherwise wait out every attempt's timeout in
turn (4 attempts of 10 s: about 43 s an invoice), and a thousand of them would
hold the billing worker's pass (drafting, posting, dunning) for half a day.
"""

import logging
from collections import defaultdict
from datetime import date

import aiohttp
import asyncpg

from ocs.billing.drafts import LINE_COLUMNS, TOTALS_JOIN, TOTALS_SQL, line_records
from ocs.billing.lines import Line
from ocs.billing.statement import write_statements
from ocs.billing.tax_engine import TaxEngineUnavailable
from ocs.billing.taxes import (
    EXTERNAL,
    Exemption,
    TaxEngine,
    TaxInvoice,
    TaxRules,
    billing_location,
    exemptions,
    external_engine,
    load_rules,
    tax_lines,
)
from ocs.config import Settings

log = logging.getLogger("ocs.billing.taxing")

NOT_CONFIGURED = "no tax engine configured"
# A draft whose taxable lines were rewritten (a rerun) between their reading and its taxes.
CHANGED = "its lines changed while its taxes were computed"
# The reason of a TaxEngineUnavailable raised for a draft the engine was not asked about.
NOT_ASKED = "not_asked"


class EngineOutage:
    """The external engine, found unavailable once in a pass, is not asked again in it.

    ``guard`` wraps an engine: after its first ``TaxEngineUnavailable`` every
    later call raises one at once (reason ``not_asked``, the first failure's
    message), so the pass's other drafts are held without waiting out the
    engine's timeouts and retries. The outage is logged once, when found. One
    outage per pass: the billing worker guards its engine with a new one for
    each pass (over all its runs); ``tax_drafts`` guards the HTTP engine it
    makes with one for the call. An engine given to ``tax_drafts`` is used as
    it is: its caller guards it.
    """

    def __init__(self) -> None:
        self.reason: str | None = None

    def found(self, invoice_id: int, error: TaxEngineUnavailable) -> None:
        """Record the engine as unavailable (logged the first time only)."""
        if self.reason is not None:
            return
        self.reason = error.message
        log.warning(
            "tax engine unavailable: the pass's other external drafts are held untaxed",
            extra={"invoice_id": invoice_id, "reason": error.reason, "detail": error.message},
        )

    def guard(self, engine: TaxEngine) -> TaxEngine:
        """``engine``, not called any more once it was found unavailable."""

        async def ask(invoice: TaxInvoice, lines: list[Line]) -> list[Line]:
            if self.reason is not None:
                raise TaxEngineUnavailable(
                    NOT_ASKED, f"not asked, unavailable earlier in this pass: {self.reason}"
                )
            try:
                return await engine(invoice, lines)
            except TaxEngineUnavailable as error:
                self.found(invoice.id, error)
                raise

        return ask


_UNTAXED_SQL = """
SELECT i.id, i.account_id, i.plan_id, i.currency, i.invoice_date,
       COALESCE(b.tax_engine, 'internal') AS tax_engine,
       l.id AS line_id, l.kind, l.amount, l.exact_amount, l.charge_id, l.zone, l.counter_id,
       l.description,
       l.tax_code, l.rate_type, l.direction, l.quantity, l.calls, l.billed_seconds
FROM invoices i
LEFT JOIN plan_billing b ON b.plan_id = i.plan_id
LEFT JOIN invoice_lines l ON l.invoice_id = i.id
WHERE i.id = ANY($1::bigint[]) AND i.state = 'draft' AND i.kind = 'invoice'
  AND NOT i.taxes_calculated
ORDER BY i.id, l.position
"""

# Each (account, plan, invoice date)'s billing address: its subscription to the plan
# (else another), an active one first, then the latest started; and its member numbers
# held on the date.
_PLACES_SQL = """
SELECT a.account_id, a.plan_id, a.day, s.billing_country, s.billing_region, s.billing_county,
       s.billing_city, s.billing_postal_code,
       (SELECT array_agg(DISTINCT n.number) FROM account_numbers n
        WHERE n.account_id = a.account_id AND n.start_date <= a.day
          AND (n.end_date IS NULL OR n.end_date > a.day)) AS numbers
FROM unnest($1::text[], $2::text[], $3::date[]) AS a(account_id, plan_id, day)
LEFT JOIN LATERAL (
    SELECT * FROM subscriptions s WHERE s.account_id = a.account_id
    ORDER BY s.plan_id = a.plan_id DESC, s.status = 'active' DESC, s.start_date DESC, s.id DESC
    LIMIT 1
) s ON true
"""


def _stored_line(r: asyncpg.Record) -> Line:
    """An invoice line as stored, with what taxes and the engine need of it."""
    return Line(
        r["kind"],
        r["description"],
        None,
        None,
        r["quantity"],
        r["exact_amount"],
        r["amount"],
        False,
        charge_id=r["charge_id"],
        zone=r["zone"],
        direction=r["direction"],
        calls=r["calls"],
        billed_seconds=r["billed_seconds"],
        counter_id=r["counter_id"],
        tax_code=r["tax_code"],
        rate_type=r["rate_type"],
    )


async def _places(
    conn: asyncpg.Connection, invoices: list[TaxInvoice]
) -> dict[tuple[str, str, date], TaxInvoice]:
    """(account, plan, date) -> the invoice's billing location and member number, as a
    ``TaxInvoice`` template (id and currency left to the caller)."""
    keys = sorted({(i.account_id, i.plan_id, i.invoice_date) for i in invoices})
    rows = await conn.fetch(
        _PLACES_SQL, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
    )
    found: dict[tuple[str, str, date], TaxInvoice] = {}
    for r in rows:
        numbers = r["numbers"] or []
        found[r["account_id"], r["plan_id"], r["day"]] = TaxInvoice(
            0,
            r["account_id"],
            r["plan_id"],
            "",
            r["day"],
            billing_location(
                r["billing_country"] or "",
                r["billing_region"] or "",
                r["billing_county"] or "",
                r["billing_city"] or "",
                r["billing_postal_code"] or "",
            ),
            numbers[0] if len(numbers) == 1 else None,
        )
    return found


async def _ask_engine(
    pool: asyncpg.Pool,
    outside: list[TaxInvoice],
    stored: dict[int, list[Line]],
    engine: TaxEngine | None,
    settings: Settings | None,
    exempt: dict[str, Exemption],
) -> tuple[dict[int, list[Line]], dict[int, str]]:
    """The external plans' invoices taxed by the engine: (id -> tax lines, id -> reason).

    Each invoice is asked with its own account's billing location and member
    number, and carries its account's exemption (``exempt``); one HTTP session
    serves the whole call, so connections are reused. Once the HTTP engine is
    found unavailable, the invoices left are held without asking it (``EngineOutage``).
    """
    if engine is None and (settings is None or not settings.tax_engine_url):
        return {}, {i.id: NOT_CONFIGURED for i in outside}
    async with pool.acquire() as conn:
        places = await _places(conn, outside)
    computed: dict[int, list[Line]] = {}
    failed: dict[int, str] = {}
    async with aiohttp.ClientSession() as session:
        if engine is not None:
            ask = engine
        elif settings is not None:
            ask = EngineOutage().guard(external_engine(settings, session=session))
        else:  # refused above: no engine is configured
            return {}, {i.id: NOT_CONFIGURED for i in outside}
        for invoice in outside:
            place = places[invoice.account_id, invoice.plan_id, invoice.invoice_date]
            located = TaxInvoice(
                invoice.id,
                invoice.account_id,
                invoice.plan_id,
                invoice.currency,
                invoice.invoice_date,
                place.billing,
                place.number,
                exempt.get(invoice.account_id),
            )
            lines = [line for line in stored[invoice.id] if line.kind != "tax"]
            try:
                computed[invoice.id] = await ask(located, lines)
            except Exception as error:  # any engine failure holds the invoice back, untaxed
                failed[invoice.id] = f"tax engine: {error}" if str(error) else "tax engine failed"
    return computed, failed


async def tax_drafts(
    pool: asyncpg.Pool,
    invoice_ids: list[int],
    engine: TaxEngine | None = None,
    *,
    settings: Settings | None = None,
) -> dict[int, str]:
    """Add the tax lines of the untaxed drafts among ``invoice_ids``; those that failed.

    Each invoice is taxed as its plan says: by the plan's rules
    (``taxes.tax_lines``, as at drafting), or, for a plan taxed externally, by
    ``engine`` when given, else by the HTTP engine of ``settings``, called
    outside any transaction with the invoice's own billing location. An
    external plan without an engine, and an invoice whose engine call fails,
    keep no tax lines and stay untaxed with ``tax_error`` set to the reason
    (answered: id -> reason), so they cannot be posted. Each invoice is
    written in its own transaction, under its row lock, and only if it is
    still an untaxed draft. Once the HTTP engine is found unavailable, the
    external drafts left are held without asking it (``EngineOutage``).
    """
    async with pool.acquire() as conn:
        rows = await conn.fetch(_UNTAXED_SQL, invoice_ids)
    invoices: dict[int, TaxInvoice] = {}
    external: set[int] = set()
    stored: dict[int, list[Line]] = defaultdict(list)
    # What the tax is computed on: each draft's taxable lines as read, checked again under
    # the draft's lock (a rerun may have replaced them meanwhile).
    read: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in rows:
        invoices.setdefault(
            r["id"],
            TaxInvoice(r["id"], r["account_id"], r["plan_id"], r["currency"], r["invoice_date"]),
        )
        if r["tax_engine"] == EXTERNAL:
            external.add(r["id"])
        if r["kind"] is not None:
            stored[r["id"]].append(_stored_line(r))
            if r["kind"] != "tax":
                read[r["id"]].append((r["line_id"], r["exact_amount"]))
    failed: dict[int, str] = {}
    computed: dict[int, list[Line]] = {}
    rules: dict[str, TaxRules] = {}
    exempt: dict[str, Exemption] = {}
    internal = [i for i in invoices.values() if i.id not in external]
    outside = [i for i in invoices.values() if i.id in external]
    if invoices:
        async with pool.acquire() as conn:
            for plan in sorted({i.plan_id for i in internal}):
                rules[plan] = await load_rules(conn, plan)
            # Both paths: an exemption holds whoever computes the tax.
            exempt = await exemptions(conn, sorted({i.account_id for i in invoices.values()}))
    for invoice in internal:
        lines = [line for line in stored[invoice.id] if line.kind != "tax"]
        computed[invoice.id] = tax_lines(
            lines,
            rules[invoice.plan_id],
            invoice.currency,
            invoice.invoice_date,
            exempt.get(invoice.account_id),
        )
    if outside:
        asked, refused = await _ask_engine(pool, outside, stored, engine, settings, exempt)
        computed.update(asked)
        failed.update(refused)
    async with pool.acquire() as conn:
        for invoice_id, reason in failed.items():
            await conn.execute(
                "UPDATE invoices SET tax_error = $2 WHERE id = $1 AND state = 'draft'",
                invoice_id,
                reason,
            )
        for invoice_id, found in computed.items():
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT window_start, window_end FROM invoices WHERE id = $1"
                    " AND state = 'draft' AND NOT taxes_calculated FOR UPDATE",
                    invoice_id,
                )
                if row is None:  # posted, or recomputed, meanwhile
                    continue
                now = await conn.fetch(
                    "SELECT id, exact_amount FROM invoice_lines WHERE invoice_id = $1"
                    " AND kind <> 'tax' ORDER BY id",
                    invoice_id,
                )
                if [(r["id"], r["exact_amount"]) for r in now] != sorted(read[invoice_id]):
                    # Its lines changed since they were read: held, and taxed next time. The
                    # reason is stored here, under the lock: the failures above were stored
                    # before this loop, and an earlier pass's reason would be shown instead.
                    failed[invoice_id] = CHANGED
                    await conn.execute(
                        "UPDATE invoices SET tax_error = $2 WHERE id = $1", invoice_id, CHANGED
                    )
                    continue
                await conn.execute(
                    "DELETE FROM invoice_lines WHERE invoice_id = $1 AND kind = 'tax'", invoice_id
                )
                last = await conn.fetchval(
                    "SELECT COALESCE(max(position), 0) FROM invoice_lines WHERE invoice_id = $1",
                    invoice_id,
                )
                if found:
                    await conn.copy_records_to_table(
                        "invoice_lines",
                        records=line_records(invoice_id, found, last + 1),
                        columns=LINE_COLUMNS,
                    )
                await conn.execute(
                    TOTALS_SQL + ", taxes_calculated = true"
                    " FROM unnest($1::bigint[]) AS d(id)" + TOTALS_JOIN,
                    [invoice_id],
                )
                if row["window_start"] is not None:
                    await write_statements(
                        conn, [invoice_id], (row["window_start"], row["window_end"])
                    )
    return failed
