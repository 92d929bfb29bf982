"""Posting and voiding on real PostgreSQL and Redis: gapless numbers, money moved once,
credit notes, and the refusals the database itself enforces."""

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, cast

import asyncpg
import pytest

from ocs.balances import keys
from ocs.balances.store import BalanceStore
from ocs.billing import posting, runs
from ocs.billing import void as void_module
from ocs.billing import worker as worker_module
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import set_plan_billing
from ocs.billing.void import void
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.errors import OcsError
from ocs.services import Services
from tests.billing_helpers import (
    EUR,
    billed_plan,
    customer,
    invoices,
    monthly,
    run,
    today_in,
    zone_off_utcs_day,
)
from tests.conftest import add_plan


async def _two_drafts(services: Services) -> int:
    """Two accounts with 20.00 each and a 10.00 monthly fee, drafted for March 2026."""
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "p1", "rent", date(2026, 1, 1), balance=20 * EUR)
    await customer(services, "p2", "rent", date(2026, 1, 1), balance=20 * EUR)
    return await run(services, "2026-03", invoice_date=date(2026, 4, 1))


async def _ledger_refs(services: Services, account_id: str) -> list[tuple[str, int]]:
    """(reference, amount) of the account's balance changes, from its ledger stream."""
    entries = await services.redis.xrange(keys.ledger(keys.bucket_of(account_id)))
    return [
        (fields[b"reference"].decode(), int(fields[b"amount"]))
        for _, fields in entries
        if fields[b"account"].decode() == account_id
        and fields[b"kind"] != b"opening"
        and fields[b"reference"].startswith(b"inv:")
    ]


async def test_posting_numbers_gaplessly_and_debits_each_line_once(services: Services) -> None:
    run_id = await _two_drafts(services)

    posted = await posting.post(services.pool, services.store, run_id=run_id)

    assert sorted(posted.numbers.values()) == ["INV-2026-000001", "INV-2026-000002"]
    assert posted.lines_moved == 2
    found = await invoices(services)
    assert [(i["account"], i["state"], i["number"]) for i in found] == [
        ("p1", "posted", "INV-2026-000001"),
        ("p2", "posted", "INV-2026-000002"),
    ]
    # 20.00 - 10.00, once, with the line as the ledger reference.
    assert (await services.accounts.show("p1")).balance == 10 * EUR
    async with services.pool.acquire() as conn:
        line_id = await conn.fetchval(
            "SELECT l.id FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
            " WHERE i.account_id = 'p1'"
        )
    assert await _ledger_refs(services, "p1") == [(f"inv:{line_id}", -10 * EUR)]

    # A retry posts nothing and moves nothing; a rerun leaves posted invoices alone.
    again = await posting.post(services.pool, services.store, run_id=run_id)
    assert again == posting.Posted({}, 0)
    await run(services, "2026-03", invoice_date=date(2026, 4, 2))
    assert await invoices(services) == found
    assert (await services.accounts.show("p1")).balance == 10 * EUR


class TaxedMeanwhile:
    """A connection on which, just before the drafts are numbered, another transaction
    commits a change (as a second billing worker taxing a held draft would)."""

    def __init__(self, conn: asyncpg.Connection, meanwhile: Callable[[], Awaitable[None]]):
        self._conn = conn
        self._meanwhile = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        if query.lstrip().startswith("UPDATE invoices i SET state = 'posted'"):
            await self._meanwhile()
        return cast(list[asyncpg.Record], await self._conn.fetch(query, *args))


async def test_a_draft_taxed_while_others_are_numbered_waits_for_its_own_number(
    services: Services,
) -> None:
    await _two_drafts(services)
    await customer(services, "p3", "rent", date(2026, 1, 1), balance=20 * EUR)
    await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    pool = services.pool
    async with pool.acquire() as conn:
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM invoices ORDER BY id")]
        assert len(ids) == 3
        # The first two are taxed; the third is held (its tax engine failed, say).
        await conn.execute(
            "UPDATE invoices SET taxes_calculated = (id <> $1) WHERE id = ANY($2::bigint[])",
            ids[2],
            ids,
        )

    async def taxed_by_another_worker() -> None:
        async with pool.acquire() as other:
            await other.execute("UPDATE invoices SET taxes_calculated = true WHERE id = $1", ids[2])

    async with pool.acquire() as conn, conn.transaction():
        racing = cast(asyncpg.Connection, TaxedMeanwhile(conn, taxed_by_another_worker))
        numbers = await posting.assign_numbers(racing, ids)
    # Only the drafts counted when the sequence moved are numbered.
    assert numbers == {ids[0]: "INV-2026-000001", ids[1]: "INV-2026-000002"}
    async with pool.acquire() as conn:
        third = await conn.fetchrow("SELECT state, number FROM invoices WHERE id = $1", ids[2])
        assert (third["state"], third["number"]) == ("draft", None)
        # The next posting numbers it next: the sequence and the numbers agree.
        async with conn.transaction():
            assert await posting.assign_numbers(conn, ids) == {ids[2]: "INV-2026-000003"}


async def test_a_money_move_retried_after_a_crash_moves_nothing_twice(
    services: Services,
) -> None:
    run_id = await _two_drafts(services)
    posted = await posting.post(services.pool, services.store, run_id=run_id)
    # A crash after the debit but before the line was marked: the mark is lost.
    async with services.pool.acquire() as conn:
        await conn.execute("ALTER TABLE invoice_lines DISABLE TRIGGER invoice_lines_frozen")
        await conn.execute("UPDATE invoice_lines SET moved_at = NULL, ledger_entry = NULL")
        await conn.execute("ALTER TABLE invoice_lines ENABLE TRIGGER invoice_lines_frozen")

    assert await posting.move_money(services.pool, services.store, list(posted.numbers)) == 2

    assert (await services.accounts.show("p1")).balance == 10 * EUR
    assert len(await _ledger_refs(services, "p1")) == 1


async def test_void_issues_a_numbered_credit_note_that_gives_the_money_back(
    services: Services,
) -> None:
    run_id = await _two_drafts(services)
    posted = await posting.post(services.pool, services.store, run_id=run_id)
    first = min(posted.numbers)

    note = await void(services.pool, services.store, first)

    assert note.number == "CN-2026-000001" and note.total == -10 * EUR
    assert (await services.accounts.show("p1")).balance == 20 * EUR
    states = {(i["account"], i["state"], i["total"]) for i in await invoices(services)}
    assert ("p1", "void", 10 * EUR) in states and ("p1", "posted", -10 * EUR) in states
    with pytest.raises(OcsError):
        await void(services.pool, services.store, first)  # once only
    with pytest.raises(OcsError):
        await posting.post(services.pool, services.store, invoice_ids=[first])
    # The database refuses it too, whoever asks.
    async with services.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="void -> posted"):
            await conn.execute("UPDATE invoices SET state = 'posted' WHERE id = $1", first)


async def test_a_credit_note_is_dated_today_where_the_plan_bills(services: Services) -> None:
    """Before, a credit note was dated the database server's ``current_date``: a void at
    16:00 in Los Angeles on 31 December was dated 1 January, in the next year's number
    series and revenue month."""
    zone = zone_off_utcs_day()
    await billed_plan(services, tz=zone)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "p1", "rent", date(2026, 1, 1), balance=20 * EUR)
    run_id = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    [invoice_id] = (await posting.post(services.pool, services.store, run_id=run_id)).numbers

    today = today_in(zone)
    note = await void(services.pool, services.store, invoice_id)

    async with services.pool.acquire() as conn:
        dated = await conn.fetchval(
            "SELECT invoice_date FROM invoices WHERE id = $1", note.credit_note_id
        )
    assert dated == today
    assert note.number == f"CN-{today.year}-000001"


async def test_a_void_cut_short_before_its_credit_note_moved_money_is_finished_by_the_worker(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await _two_drafts(services)
    posted = await posting.post(services.pool, services.store, run_id=run_id)
    first = min(posted.numbers)
    moves: list[list[int]] = []
    move_money = posting.move_money

    async def dies_before_the_credit_note_moves(
        pool: asyncpg.Pool, store: BalanceStore, ids: list[int]
    ) -> int:
        moves.append(ids)
        if len(moves) == 2:  # the credit note's, after its number committed
            raise RuntimeError("the process was killed")
        return await move_money(pool, store, ids)

    monkeypatch.setattr(void_module, "move_money", dies_before_the_credit_note_moves)
    with pytest.raises(RuntimeError):
        await void(services.pool, services.store, first)
    # Void and numbered, yet the 10.00 has not come back.
    states = {(i["account"], i["state"], i["total"]) for i in await invoices(services)}
    assert ("p1", "void", 10 * EUR) in states and ("p1", "posted", -10 * EUR) in states
    assert (await services.accounts.show("p1")).balance == 10 * EUR

    monkeypatch.setattr(worker_module, "UNMOVED_AFTER_S", 0.0)
    # The worker's clock inside the accounts' first month: no period of theirs is due, so
    # its pass creates no run.
    worker = BillingWorker(
        services.pool,
        WorkerSettings(run_delay=0),
        store=services.store,
        clock=lambda: datetime(2026, 1, 15, 12, tzinfo=UTC),
    )
    await worker.run_once()
    assert (await services.accounts.show("p1")).balance == 20 * EUR
    # Once: another pass, or another worker, moves nothing more.
    await worker.run_once()
    assert await posting.finish_unmoved(services.pool, services.store, 0.0) == 0
    assert (await services.accounts.show("p1")).balance == 20 * EUR
    assert (await services.accounts.show("p2")).balance == 10 * EUR


async def test_the_database_freezes_posted_invoices_and_their_lines(services: Services) -> None:
    run_id = await _two_drafts(services)
    posted = await posting.post(services.pool, services.store, run_id=run_id)
    invoice_id = min(posted.numbers)
    async with services.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "UPDATE invoices SET total = 0, subtotal = 0 WHERE id = $1", invoice_id
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "UPDATE invoice_lines SET amount = 1 WHERE invoice_id = $1", invoice_id
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("DELETE FROM invoices WHERE id = $1", invoice_id)
        with pytest.raises(asyncpg.CheckViolationError):
            # A draft cannot be voided: it is posted first.
            draft = await conn.fetchval(
                "INSERT INTO invoices (account_id, plan_id, period_start, period_end,"
                " period_label, currency, invoice_date) SELECT 'p1', 'retail',"
                " '2026-04-01Z', '2026-05-01Z', '2026-04', 'EUR', '2026-05-01' RETURNING id"
            )
            await conn.execute("UPDATE invoices SET state = 'void' WHERE id = $1", draft)
        with pytest.raises(asyncpg.UniqueViolationError):
            # One invoice per account and period.
            await conn.execute(
                "INSERT INTO invoices (account_id, plan_id, period_start, period_end,"
                " period_label, currency, invoice_date) SELECT 'p1', 'retail',"
                " '2026-03-01Z', '2026-04-01Z', '2026-03', 'EUR', '2026-04-01'"
            )


async def test_a_used_plan_keeps_its_currency_and_timing(services: Services) -> None:
    await billed_plan(services)
    await add_plan(services, "unused")
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE plans SET currency = 'USD' WHERE id = 'unused'")  # no account
        await customer(services, "u1", None, date(2026, 1, 1))
        with pytest.raises(asyncpg.CheckViolationError, match="currency cannot change"):
            await conn.execute("UPDATE plans SET currency = 'USD' WHERE id = 'retail'")
        with pytest.raises(asyncpg.CheckViolationError, match="invoice timing cannot change"):
            await conn.execute(
                "UPDATE plan_billing SET invoice_timing = 'start_of_cycle' WHERE plan_id = 'retail'"
            )
        assert await conn.fetchval("SELECT currency FROM plans WHERE id = 'retail'") == "EUR"


async def test_advance_timing_is_refused_for_manual_and_on_demand_plans(
    services: Services,
) -> None:
    await add_plan(services, "shop")
    for cycle in ("manual", "on_demand"):
        settings = PlanBilling("shop", cycle, date(2026, 1, 1), invoice_timing="start_of_cycle")
        with pytest.raises(OcsError, match="invoice_timing"):
            await set_plan_billing(services.pool, services.store, settings)
        async with services.pool.acquire() as conn:
            with pytest.raises(asyncpg.CheckViolationError, match="advance_needs_a_cycle"):
                await conn.execute(
                    "INSERT INTO plan_billing (plan_id, cycle, effective_date, invoice_timing)"
                    " VALUES ('shop', $1, '2026-01-01', 'start_of_cycle')",
                    cycle,
                )


async def test_a_run_names_periods_its_cycles_have(services: Services) -> None:
    await billed_plan(services)
    with pytest.raises(OcsError, match="plan"):
        await runs.create_run(services.pool, "2026-03", invoice_date=date(2026, 4, 1), plan_id="x")
    await customer(services, "r1", None, date(2026, 1, 1))
    with pytest.raises(OcsError, match="period"):
        await runs.create_run(
            services.pool, "2026-03-02..2026-04-02", invoice_date=date(2026, 4, 1)
        )
