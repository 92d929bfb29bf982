"""The database keeps invoice lines tied to invoices (migration 0031): a line naming no
invoice is refused, and deleting a draft deletes its lines, as the foreign key did."""

from datetime import date

import asyncpg
import pytest

from ocs.billing import runs
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, monthly


async def _draft(services: Services) -> int:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "a1", "rent", date(2026, 1, 1))
    run_id = await runs.create_run(services.pool, "2026-03", invoice_date=date(2026, 4, 1))
    await runs.execute_run(services.pool, run_id)
    async with services.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT id FROM invoices WHERE account_id = 'a1'"))


async def test_a_line_of_no_invoice_is_refused(services: Services) -> None:
    invoice_id = await _draft(services)
    async with services.pool.acquire() as conn:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity,"
                " amount, exact_amount, moves_money)"
                " VALUES ($1, 99, 'one_time', 'x', 1, 1, 1, true),"
                " ($1 + 1000, 1, 'one_time', 'orphan', 1, 1, 1, true)",
                invoice_id,
            )
        # Moving a line to an invoice that does not exist is refused too.
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "UPDATE invoice_lines SET invoice_id = invoice_id + 1000 WHERE invoice_id = $1",
                invoice_id,
            )
        lines = await conn.fetchval(
            "SELECT count(*) FROM invoice_lines WHERE invoice_id = $1", invoice_id
        )
    assert lines == 1  # the draft's 10.00 rent line, nothing else


async def test_deleting_a_draft_deletes_its_lines(services: Services) -> None:
    invoice_id = await _draft(services)
    async with services.pool.acquire() as conn:
        await conn.execute("DELETE FROM invoices WHERE id = $1", invoice_id)
        left = await conn.fetchval("SELECT count(*) FROM invoice_lines")
    assert left == 0
