"""Posting: a gapless number under the sequence's lock, then the money of each line once.

``post`` numbers drafts in one transaction: it locks the drafts (by id), then
the issuer's sequence row for the invoice date's year, numbers the drafts in
id order (``INV-2026-000001``) and moves the sequence on by as many. The number
is taken in the transaction that posts, so a rollback returns it: no gap.

``move_money`` then debits (or credits) each line that moves money and has
not moved yet, through the existing balance scripts with the line as the
ledger reference ``inv:<line id>``: ``fee.lua`` debits a positive line,
``topup.lua`` credits a negative one. Both keep their result under that
reference and answer a repeat with it, moving nothing, so a retry after a
crash (before the line was marked) records the same ledger entry and moves
no money twice. Usage lines move nothing: the real-time path debited them.

Untaxed drafts (a run with taxes off, or a plan taxed by an external engine)
are taxed first (``taxing.tax_drafts``), each as its plan says: by the plan's
own rules, or by the HTTP engine of the settings with its account's own billing
location. Only drafts whose taxes are calculated are numbered, and the
database refuses to post any other (migration 0023). A draft whose taxes
failed (the engine down, or none configured for an external plan) stays a
draft with its ``tax_error``, listed in ``Posted.held``; posting it again once
the engine answers posts it, once.
"""

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import asyncpg

from ocs.balances.store import FEE_DEDUPE_TTL, BalanceStore, TopupResult
from ocs.billing import commitments, credit, owed, statement, taxing
from ocs.billing.taxes import TaxEngine
from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.events.outbox import emit_from

# Lines whose money moves at once (the auto-pipeline sends them together).
MOVE_BATCH = 1000
# Invoices whose pending lines are read at once by ``move_money``.
INVOICE_PAGE = 500
CREDIT_KIND = "invoice_credit"


def ledger_reference(line_id: int) -> str:
    """The ledger reference of an invoice line's money: ``inv:<line id>``."""
    return f"inv:{line_id}"


@dataclass(frozen=True, slots=True)
class Posted:
    """Invoices posted now (id -> number), lines whose money moved now, and drafts held.

    ``held``: drafts left unposted because their taxes could not be calculated
    (id -> reason, also stored as the invoice's ``tax_error``).
    """

    numbers: dict[int, str]
    lines_moved: int
    held: dict[int, str] = field(default_factory=dict)


# The drafts among the ids that can be posted, locked in id order. Only these are
# numbered: a draft whose taxes are calculated after this lock (by another worker) is
# neither counted nor numbered by this transaction.
_LOCK_DRAFTS_SQL = """
SELECT id, issuer, extract(year FROM invoice_date)::int AS year FROM invoices
WHERE id = ANY($1::bigint[]) AND state = 'draft' AND (taxes_calculated OR kind = 'credit_note')
ORDER BY id FOR UPDATE
"""

# Every locked draft ($1: their ids) numbered at once: the k-th of its sequence (in id
# order) takes that sequence's first number + k. Numbers are zero-padded to 6 digits,
# wider when they grow. Each stores what it asks ($5 ids, $6 asks: ``owed.asked``) in
# the same row write.
_NUMBER_SQL = """
UPDATE invoices i SET state = 'posted', posted_at = now(), amount_asked = a.asked,
       number = d.issuer || '-' || d.year || '-'
                || lpad((s.first + d.k)::text, GREATEST(6, length((s.first + d.k)::text)), '0')
FROM (SELECT id, issuer, extract(year FROM invoice_date)::int AS year,
             row_number() OVER (PARTITION BY issuer, extract(year FROM invoice_date)
                                ORDER BY id) - 1 AS k
      FROM invoices
      WHERE id = ANY($1::bigint[])) AS d
JOIN unnest($2::text[], $3::int[], $4::bigint[]) AS s(issuer, year, first)
  ON s.issuer = d.issuer AND s.year = d.year
JOIN unnest($5::bigint[], $6::bigint[]) AS a(id, asked) ON a.id = d.id
WHERE i.id = d.id
RETURNING i.id, d.issuer, d.year, i.number, i.account_id, i.kind, i.currency, i.total,
          i.invoice_date
"""


# The completed statements of the locked drafts: what each asks is computed from them.
_ASKS_OF_SQL = """
SELECT id, currency::text AS currency, amount_due, new_charges FROM invoices
WHERE id = ANY($1::bigint[])
"""


async def _asks(conn: asyncpg.Connection, invoice_ids: list[int]) -> tuple[list[int], list[int]]:
    """(ids, what each asks) of these drafts, from their completed statements, by the
    one rule (``owed.asked``: rounded once to the currency's minor unit). A credit note's
    statement is all 0: it asks 0."""
    rows = await conn.fetch(_ASKS_OF_SQL, invoice_ids)
    ids = [r["id"] for r in rows]
    asks = [owed.asked(r["amount_due"], r["new_charges"], r["currency"]) for r in rows]
    return ids, asks


# Each invoice posted, as its ``invoice.posted`` event says it, in id order (built in the
# database: 100,000 of them at once when a run is posted).
_POSTED_EVENTS_SQL = """
SELECT account_id AS subject,
       jsonb_build_object('invoice_id', id, 'number', number, 'account_id', account_id,
                          'kind', kind, 'currency', currency::text, 'total', total,
                          'invoice_date', to_char(invoice_date, 'YYYY-MM-DD')) AS data
FROM invoices WHERE id = ANY($2::bigint[]) ORDER BY id
"""


async def assign_numbers(conn: asyncpg.Connection, invoice_ids: list[int]) -> dict[int, str]:
    """Number and post these drafts, gaplessly per issuer and year; call in a transaction.

    Ids that are not drafts (any more), or invoices whose taxes are not
    calculated, are left out of the answer (a credit note mirrors a posted
    invoice, taxes included). The drafts are locked (id order), then each
    sequence row (issuer, year order) moves on by as many, then one UPDATE
    numbers them all: the numbers never leave the database but in the answer.
    Before they are numbered, their statements are completed from the invoices posted
    before them (``statement.complete_statements``): a posted statement is final,
    and what each asks is stored from it (``owed.asked``, rounded to the minor unit).
    Each invoice (or credit note) posted is announced (``invoice.posted``, one
    event each) in the same transaction.
    """
    locked = await conn.fetch(_LOCK_DRAFTS_SQL, invoice_ids)
    if not locked:
        return {}
    # Their statements follow the invoices posted before them, these included: a period
    # drafted before the one before it was posted would otherwise keep what it saw then.
    await statement.complete_statements(conn, [row["id"] for row in locked])
    drafts = Counter((row["issuer"], row["year"]) for row in locked)
    issuers: list[str] = []
    years: list[int] = []
    firsts: list[int] = []
    for (issuer, year), count in sorted(drafts.items()):
        await conn.execute(
            "INSERT INTO invoice_sequences (issuer, year) VALUES ($1, $2)"
            " ON CONFLICT (issuer, year) DO NOTHING",
            issuer,
            year,
        )
        # The UPDATE takes the sequence's row lock until commit: numbers are gapless.
        first = await conn.fetchval(
            "UPDATE invoice_sequences SET next_number = next_number + $3"
            " WHERE issuer = $1 AND year = $2 RETURNING next_number - $3",
            issuer,
            year,
            count,
        )
        issuers.append(issuer)
        years.append(year)
        firsts.append(first)
    locked_ids = [row["id"] for row in locked]
    # What each asks is fixed now, from its final statement (decision 0027): payments,
    # credit and dunning read this one figure.
    asked_ids, asks = await _asks(conn, locked_ids)
    rows = await conn.fetch(_NUMBER_SQL, locked_ids, issuers, years, firsts, asked_ids, asks)
    rows.sort(key=lambda r: (r["issuer"], r["year"], r["id"]))
    await emit_from(conn, "invoice.posted", _POSTED_EVENTS_SQL, sorted(r["id"] for r in rows))
    return {r["id"]: r["number"] for r in rows}


async def _move(store: BalanceStore, account_id: str, line_id: int, amount: int) -> str:
    """Move one line's money once; its ledger stream entry."""
    reference = ledger_reference(line_id)
    result: TopupResult | str | None
    if amount > 0:
        # A posted charge becomes debt when the balance cannot pay it, as recurring fees do.
        result = await store.fee(account_id, amount, reference, require_funds=False)
    else:
        result = await store.topup(account_id, -amount, reference, FEE_DEDUPE_TTL, CREDIT_KIND)
    if not isinstance(result, TopupResult):
        raise OcsError(
            Reason.ACCOUNT_NOT_FOUND,
            f"account {account_id!r} cannot be debited for invoice line {line_id}: {result}",
        )
    return result.ledger_entry


async def _mark(pool: asyncpg.Pool, batch: list[asyncpg.Record], entries: list[str | None]) -> None:
    """Record the ledger entries of lines whose money moved (each line once)."""
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE invoice_lines l SET ledger_entry = m.entry, moved_at = now()"
            " FROM unnest($1::bigint[], $2::text[]) AS m(id, entry)"
            " WHERE l.id = m.id AND l.moved_at IS NULL",
            [r["id"] for r in batch],
            entries,
        )


async def move_money(pool: asyncpg.Pool, store: BalanceStore, invoice_ids: list[int]) -> int:
    """Move the money of the posted invoices' lines not moved yet; lines moved now.

    The lines are read a page of invoices at a time (never the whole run at
    once), and moved ``MOVE_BATCH`` at a time; a batch's lines are marked
    moved while the next batch's money moves (the mark is idempotent and a
    retry of an unmarked line moves nothing twice, so the overlap is safe).
    """
    # Each invoice once: its lines are read by one page only (a mark may still be running).
    ids = sorted(set(invoice_ids))
    moved = 0
    marking: asyncio.Task[None] | None = None
    try:
        for at in range(0, len(ids), INVOICE_PAGE):
            async with pool.acquire() as conn:
                pending = await conn.fetch(
                    "SELECT l.id, l.amount, i.account_id FROM invoice_lines l"
                    " JOIN invoices i ON i.id = l.invoice_id"
                    " WHERE l.invoice_id = ANY($1::bigint[]) AND i.state <> 'draft'"
                    "   AND l.moves_money AND l.moved_at IS NULL ORDER BY l.id",
                    ids[at : at + INVOICE_PAGE],
                )
            for first in range(0, len(pending), MOVE_BATCH):
                batch = pending[first : first + MOVE_BATCH]
                entries: list[str | None] = await asyncio.gather(
                    *(
                        _move(store, r["account_id"], r["id"], r["amount"])
                        if r["amount"]
                        else asyncio.sleep(0, result=None)
                        for r in batch
                    )
                )
                if marking is not None:
                    await marking
                marking = asyncio.create_task(_mark(pool, batch, entries))
                moved += len(batch)
        if marking is not None:
            await marking
    finally:
        if marking is not None and not marking.done():
            # Money moved: its lines are marked even when a later batch failed.
            await asyncio.gather(marking, return_exceptions=True)
    return moved


# Posted invoices and credit notes with lines whose money has not moved, posted over
# $1 seconds ago (a posting still under way moves its own): a page of them.
_UNMOVED_SQL = """
SELECT DISTINCT l.invoice_id FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
WHERE l.moves_money AND l.moved_at IS NULL AND i.state = 'posted'
  AND i.posted_at < now() - make_interval(secs => $1)
ORDER BY l.invoice_id LIMIT $2
"""


async def finish_unmoved(pool: asyncpg.Pool, store: BalanceStore, older_than: float) -> int:
    """Move the money a crash left unmoved: lines of invoices and credit notes posted
    more than ``older_than`` seconds ago; the lines moved now.

    The money of a posting moves after its numbers commit. A void's credit note has
    no run whose next posting pass would finish it, so the billing worker calls this
    every pass. Each line moves once whoever moves it (its ledger reference), so a
    posting that is only slow is harmless to finish as well.
    """
    moved = 0
    while True:
        async with pool.acquire() as conn:
            ids = [
                int(r["invoice_id"])
                for r in await conn.fetch(_UNMOVED_SQL, older_than, INVOICE_PAGE)
            ]
        now = await move_money(pool, store, ids) if ids else 0
        if not now:
            return moved
        moved += now


async def post(
    pool: asyncpg.Pool,
    store: BalanceStore,
    *,
    invoice_ids: list[int] | None = None,
    run_id: int | None = None,
    tax_engine: TaxEngine | None = None,
    settings: Settings | None = None,
) -> Posted:
    """Post drafts (given ones, or a run's), then move the money of every line not moved.

    Untaxed drafts are taxed first, each by its plan's choice: its own rules,
    or, for a plan taxed externally, ``tax_engine`` when given (a stand-in,
    as tests use), else the HTTP engine of ``settings`` (``tax_engine_url``),
    with each account's own billing location. Those whose taxes fail stay
    drafts (``Posted.held``), "no tax engine configured" for an external plan
    without one. Given posted invoices are finished (their money moved)
    again, harmlessly; a given void invoice is refused.
    """
    if (invoice_ids is None) == (run_id is None):
        raise ValueError("post takes invoice ids or a run id")
    async with pool.acquire() as conn:
        if invoice_ids is None:
            invoice_ids = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM invoices WHERE run_id = $1 AND kind = 'invoice'"
                    " AND state <> 'void' ORDER BY id",
                    run_id,
                )
            ]
        else:
            void = await conn.fetchval(
                "SELECT min(id) FROM invoices WHERE id = ANY($1::bigint[]) AND state = 'void'",
                invoice_ids,
            )
            if void is not None:
                raise OcsError(Reason.INVALID_FIELD, f"invoice {void} is void: it cannot be posted")
    held = await taxing.tax_drafts(pool, invoice_ids, tax_engine, settings=settings)
    async with pool.acquire() as conn, conn.transaction():
        numbers = await assign_numbers(conn, invoice_ids)
        # Payments made after these invoices' statements were paid by nothing yet.
        await credit.apply_credit(conn, list(numbers))
        accounts = [
            r["account_id"]
            for r in await conn.fetch(
                "SELECT DISTINCT account_id FROM invoices WHERE id = ANY($1::bigint[])",
                list(numbers),
            )
        ]
    if accounts:
        # A payment stored while this ran saw these invoices as drafts, and the credit
        # above could not see it: looked for again, now both are committed, for the few
        # accounts that hold credit.
        async with pool.acquire() as conn:
            holding = await conn.fetch(
                "SELECT DISTINCT account_id FROM payments WHERE account_id = ANY($1::text[])"
                " AND allocated + refunded < amount ORDER BY account_id",
                accounts,
            )
            for row in holding:
                async with conn.transaction():
                    await credit.pay_open_invoices(conn, row["account_id"])
    moved = await move_money(pool, store, invoice_ids)
    if accounts:
        # Their charges are paid: accounts locked on prorated charges commit the next ones.
        await commitments.refresh(pool, store, account_ids=accounts)
    return Posted(numbers, moved, held)
