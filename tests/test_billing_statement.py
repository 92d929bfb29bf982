"""The balance-forward statement on every invoice, from the PostgreSQL ledger.

Ledger rows and CDRs are written into PostgreSQL at chosen instants (billing
reads PostgreSQL only); posting's own money goes through Redis and the ledger
writer like any balance change. Amounts are hand-computed in micro-units.
"""

from datetime import UTC, date, datetime

import asyncpg
import pytest

from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.billing import posting
from ocs.billing.statement import Statement, statement
from ocs.billing.store import Subscription, add_charge, subscribe
from ocs.services import Services
from tests.billing_helpers import (
    EUR,
    billed_plan,
    cdr,
    customer,
    invoice_id,
    invoices,
    monthly,
    run,
)


def at(month: int, day: int, hour: int = 12) -> datetime:
    """An instant of 2026 (UTC)."""
    return datetime(2026, month, day, hour, tzinfo=UTC)


async def ledger_row(
    services: Services, entry: str, account: str, kind: str, amount: int, when: datetime,
    reference: str | None = None,
) -> None:  # fmt: skip
    """One ledger row as the ledger writer would have written it."""
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ledger (entry_id, account_id, kind, amount, balance_after, reference,"
            " occurred_at) VALUES ($1, $2, $3, $4, 0, $5, $6)",
            entry,
            account,
            kind,
            amount,
            reference,
            when,
        )


async def ledger_caught_up(services: Services, entries: int) -> None:
    """Move the ledger streams into PostgreSQL until ``entries`` invoice entries are there."""
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    for _ in range(100):
        await writer.read_new()
        async with services.pool.acquire() as conn:
            found = await conn.fetchval("SELECT count(*) FROM ledger WHERE reference LIKE 'inv:%'")
        if found >= entries:
            return
    raise AssertionError("the ledger writer did not write the invoice entries")


async def test_a_prepaid_statement_carries_its_closing_balance_into_the_next(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "p1", "rent", date(2026, 1, 1))
    await ledger_row(services, "0-1", "p1", "topup", 20 * EUR, at(2, 10))  # before March
    await ledger_row(services, "0-2", "p1", "topup", 15 * EUR, at(3, 5))
    await ledger_row(services, "0-3", "p1", "call", -228_000, at(3, 10))
    await cdr(services, "0-3", "p1", at(3, 10), charged=228_000, rated_cost=228_000)
    await ledger_row(
        services, "0-4", "p1", "fee", -2 * EUR, at(3, 20), "counter:de-100:cycle:2026-03"
    )
    await ledger_row(services, "0-5", "p1", "topup", 5 * EUR, at(4, 2))  # April

    run_id = await run(services, "2026-03")

    march = await statement(services.pool, await invoice_id(services, "p1", "2026-03"))
    # previous 20.00; payments 15.00; debited in real time 0.228 (call) + 2.00 (counter
    # fee) = 2.228; posting moves the rent, 10.00; new charges 12.228;
    # closing 20 + 15 - 12.228 = 22.772.
    assert march == Statement(
        at(3, 1, 0), at(4, 1, 0), True, 20 * EUR, 15 * EUR, 2_228_000, 10 * EUR,
        12_228_000, 22_772_000, 0,
    )  # fmt: skip
    [invoice] = await invoices(services)
    # The lines show the same: rent 10.00, calls 0.228 -> 0.23, the counter fee 2.00.
    assert [(line["kind"], line["amount"]) for line in invoice["lines"]] == [
        ("recurring", 10 * EUR),
        ("usage", 230_000),
        ("counter", 2 * EUR),
    ]
    assert invoice["total"] == 12_230_000

    await posting.post(services.pool, services.store, run_id=run_id)
    await ledger_caught_up(services, 1)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))

    april = await statement(services.pool, await invoice_id(services, "p1", "2026-04"))
    # March's rent moved after March ended, yet it is March's: April starts at March's
    # closing 22.772, takes the 5.00 top-up, and posting moves April's rent:
    # 22.772 + 5 - 10 = 17.772.
    assert (april.previous_balance, april.payments, april.debited) == (22_772_000, 5 * EUR, 0)
    assert (april.posting_charges, april.closing_balance, april.amount_due) == (
        10 * EUR,
        17_772_000,
        0,
    )


async def test_a_postpaid_account_owes_what_its_balance_is_below_zero_after_posting(
    services: Services,
) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec("pp", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("pp", "retail", date(2026, 1, 1)))
    await add_charge(services.pool, sub, "rent")
    await ledger_row(services, "0-1", "pp", "call", -30 * EUR, at(3, 9))
    await ledger_row(services, "0-2", "pp", "topup", 4 * EUR, at(3, 31, 23))

    await run(services, "2026-03")

    found = await statement(services.pool, await invoice_id(services, "pp", "2026-03"))
    # 0 + 4.00 - (30.00 debited + 10.00 posted) = -36.00: 36.00 due.
    assert not found.prepaid
    assert (found.new_charges, found.closing_balance, found.amount_due) == (
        40 * EUR,
        -36 * EUR,
        36 * EUR,
    )


async def test_usage_cutoff_and_window_edges_are_half_open(services: Services) -> None:
    await billed_plan(services)
    await customer(services, "e1", None, date(2026, 1, 1))
    await ledger_row(services, "0-1", "e1", "topup", 1 * EUR, at(3, 1, 0))  # first instant: in
    await ledger_row(services, "0-2", "e1", "topup", 2 * EUR, at(4, 1, 0))  # end: out
    await ledger_row(services, "0-3", "e1", "topup", 4 * EUR, at(3, 20))  # after the cut-off

    await run(services, "2026-03", usage_cutoff=at(3, 15))

    found = await statement(services.pool, await invoice_id(services, "e1", "2026-03"))
    assert (found.window_start, found.window_end) == (at(3, 1, 0), at(3, 15))
    assert (found.previous_balance, found.payments, found.closing_balance) == (0, EUR, EUR)


async def test_a_posted_statement_is_final(services: Services) -> None:
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await customer(services, "f1", "rent", date(2026, 1, 1), balance=20 * EUR)
    run_id = await run(services, "2026-03")
    await posting.post(services.pool, services.store, run_id=run_id)
    invoice = await invoice_id(services, "f1", "2026-03")

    async with services.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="statement"):
            await conn.execute(
                "UPDATE invoices SET previous_balance = 0, payments = 1,"
                " closing_balance = closing_balance + 1 WHERE id = $1",
                invoice,
            )
        # And a statement that does not add up is refused even on a draft.
        with pytest.raises(asyncpg.CheckViolationError, match="statement_adds_up"):
            await conn.execute(
                "INSERT INTO invoices (account_id, plan_id, period_start, period_end,"
                " period_label, currency, invoice_date, payments)"
                " VALUES ('f1', 'retail', $1, $2, 'x', 'EUR', '2026-05-01', 5)",
                at(5, 1, 0),
                at(6, 1, 0),
            )


async def test_periods_drafted_before_the_one_before_them_was_posted_follow_it_when_posted(
    services: Services,
) -> None:
    # A worker catching up drafts every due period, then posts them: each statement is
    # completed at posting from the invoices posted before it, not frozen as drafted.
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    await services.accounts.create(AccountSpec("pp", plan_id="retail", credit_limit=100 * EUR))
    sub = await subscribe(services.pool, Subscription("pp", "retail", date(2026, 1, 1)))
    await add_charge(services.pool, sub, "rent")
    await ledger_row(services, "0-1", "pp", "topup", 10 * EUR, at(1, 2))

    jan = await run(services, "2026-01", invoice_date=date(2026, 2, 1))
    feb = await run(services, "2026-02", invoice_date=date(2026, 3, 1))
    mar = await run(services, "2026-03", invoice_date=date(2026, 4, 1))
    # January and February posted together, March after them; the ledger writer has
    # brought none of their money to PostgreSQL yet.
    await posting.post(services.pool, services.store, invoice_ids=[
        await invoice_id(services, "pp", "2026-01"), await invoice_id(services, "pp", "2026-02")
    ])  # fmt: skip
    await posting.post(services.pool, services.store, run_id=mar)
    assert (jan, feb) != (0, 0)

    found = [
        await statement(services.pool, await invoice_id(services, "pp", label))
        for label in ("2026-01", "2026-02", "2026-03")
    ]
    # January: the 10.00 top-up pays its rent, closing 0. February starts there and owes
    # its rent, 10.00; March starts at -10.00 and owes 20.00.
    assert [(s.previous_balance, s.payments, s.new_charges) for s in found] == [
        (0, 10 * EUR, 10 * EUR),
        (0, 0, 10 * EUR),
        (-10 * EUR, 0, 10 * EUR),
    ]
    assert [(s.closing_balance, s.amount_due) for s in found] == [
        (0, 0),
        (-10 * EUR, 10 * EUR),
        (-20 * EUR, 20 * EUR),
    ]

    # Once the ledger writer brings the postings' entries, they are not counted twice.
    await ledger_caught_up(services, 3)
    await run(services, "2026-04", invoice_date=date(2026, 5, 1))
    april = await statement(services.pool, await invoice_id(services, "pp", "2026-04"))
    assert (april.previous_balance, april.closing_balance) == (-20 * EUR, -30 * EUR)
