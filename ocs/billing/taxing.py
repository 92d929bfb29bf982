"""Taxing untaxed drafts at posting: the tax lines a run with taxes off left out.

A run with ``calculate_taxes`` off writes drafts without tax lines
(``taxes_calculated`` false). Before posting, ``tax_drafts`` adds them from the
stored lines, by the plan's rules (``taxes.tax_lines``, the same rule as at
drafting) or from an external engine; a failed engine call holds the invoice
back, untaxed, with its reason.
"""

from collections import defaultdict

import asyncpg

from ocs.billing.drafts import LINE_COLUMNS, TOTALS_JOIN, TOTALS_SQL, line_records
from ocs.billing.lines import Line
from ocs.billing.statement import write_statements
from ocs.billing.taxes import (
    Exemption,
    TaxEngine,
    TaxInvoice,
    TaxRules,
    exemptions,
    load_rules,
    tax_lines,
)

_UNTAXED_SQL = """
SELECT i.id, i.account_id, i.plan_id, i.currency, i.invoice_date,
       l.kind, l.amount, l.exact_amount, l.charge_id, l.zone, l.counter_id, l.description,
       l.tax_code, l.rate_type
FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
WHERE i.id = ANY($1::bigint[]) AND i.state = 'draft' AND i.kind = 'invoice'
  AND NOT i.taxes_calculated
ORDER BY i.id, l.position
"""


async def tax_drafts(
    pool: asyncpg.Pool, invoice_ids: list[int], engine: TaxEngine | None = None
) -> dict[int, str]:
    """Add the tax lines of the untaxed drafts among ``invoice_ids``; those that failed.

    Taxes come from the plan's rules (``taxes.tax_lines``, as at drafting) or,
    when ``engine`` is given, from the external engine, called outside any
    transaction. An invoice whose engine call fails keeps no tax lines, stays
    untaxed with ``tax_error`` set to the reason (answered: id -> reason), so it
    cannot be posted. Each invoice is written in its own transaction, under its
    row lock, and only if it is still an untaxed draft.
    """
    async with pool.acquire() as conn:
        rows = await conn.fetch(_UNTAXED_SQL, invoice_ids)
    invoices: dict[int, TaxInvoice] = {}
    stored: dict[int, list[Line]] = defaultdict(list)
    for r in rows:
        invoices.setdefault(
            r["id"],
            TaxInvoice(r["id"], r["account_id"], r["plan_id"], r["currency"], r["invoice_date"]),
        )
        if r["kind"] is not None:
            stored[r["id"]].append(
                Line(
                    r["kind"],
                    r["description"],
                    None,
                    None,
                    1,
                    r["exact_amount"],
                    r["amount"],
                    False,
                    charge_id=r["charge_id"],
                    zone=r["zone"],
                    counter_id=r["counter_id"],
                    tax_code=r["tax_code"],
                    rate_type=r["rate_type"],
                )
            )
    failed: dict[int, str] = {}
    computed: dict[int, list[Line]] = {}
    rules: dict[str, TaxRules] = {}
    exempt: dict[str, Exemption] = {}
    if engine is None and invoices:
        async with pool.acquire() as conn:
            for plan in sorted({i.plan_id for i in invoices.values()}):
                rules[plan] = await load_rules(conn, plan)
            exempt = await exemptions(conn, sorted({i.account_id for i in invoices.values()}))
    for invoice_id, invoice in invoices.items():
        lines = [line for line in stored[invoice_id] if line.kind != "tax"]
        if engine is None:
            computed[invoice_id] = tax_lines(
                lines,
                rules[invoice.plan_id],
                invoice.currency,
                invoice.invoice_date,
                exempt.get(invoice.account_id),
            )
            continue
        try:
            computed[invoice_id] = await engine(invoice, lines)
        except Exception as error:  # any engine failure holds the invoice back, untaxed
            failed[invoice_id] = f"tax engine: {error}" if str(error) else "tax engine failed"
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
