"""Lock accounts on prorated charges: the plan's custom charges of the cycle are committed
funds, so the balance pays them before calls (hand-computed, EUR)."""

from datetime import UTC, date, datetime, timedelta

import pytest

from ocs.balances.plan_policy import PlanPolicy, set_plan_policy
from ocs.billing import commitments, posting, runs, void
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import Charge, create_charge, set_plan_billing
from ocs.charging.values import AuthorizeRequest
from ocs.errors import OcsError
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, customer, invoices
from tests.conftest import add_plan

MID_MARCH = datetime(2026, 3, 15, 12, tzinfo=UTC)


async def test_prorated_plan_charges_are_committed_and_lock_calls_when_unpaid(
    services: Services,
) -> None:
    await billed_plan(services)
    # The plan fee (10.00 a month in advance) is the plan's charge; another custom charge of
    # the plan, 3.10 a month in arrears, and a subscription's own charge, not committed.
    await set_plan_policy(
        services.pool, "retail", PlanPolicy(recurring_fee=10 * EUR, lock_prorated=True)
    )
    await create_charge(
        services.pool,
        Charge("support", "Support", "SUP", "EUR", 3_100_000, "recurring", cadence="monthly",
               plan_id="retail"),
    )  # fmt: skip
    await create_charge(
        services.pool,
        Charge("tv", "TV", "TV", "EUR", 7 * EUR, "recurring", cadence="monthly"),
    )
    await customer(services, "rich", "tv", date(2026, 3, 11), balance=30 * EUR)
    await customer(services, "poor", None, date(2026, 3, 11), balance=10 * EUR)

    done = await commitments.refresh(services.pool, services.store, at=MID_MARCH)

    # March's invoice (started March 11, 21 of 31 days): support 3.10 x 21/31 = 2.10;
    # the plan fee for March's own days 10.00 x 21/31 = 6.774.. -> 6.77, and April's
    # ahead 10.00. 2.10 + 6.77 + 10.00 = 18.87; TV is the subscription's, not the plan's.
    assert done == [
        commitments.Committed("poor", 18_870_000, False),
        commitments.Committed("rich", 18_870_000, True),
    ]
    rich = await services.accounts.show("rich")
    assert (rich.committed, rich.available) == (18_870_000, 30 * EUR - 18_870_000)
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT committed FROM accounts WHERE id = 'poor'") == 18_870_000
    # 10.00 cannot cover 18.87: nothing is available, its calls are refused.
    with pytest.raises(OcsError) as refused:
        await services.calls.authorize(AuthorizeRequest("poor", "441234567", call_id="p-1"))
    assert refused.value.reason.value == "zero_balance"
    # A top-up that covers the charges lets it call again.
    await services.accounts.topup("poor", 9 * EUR, "t-1")
    granted = await services.calls.authorize(AuthorizeRequest("poor", "441234567", call_id="p-2"))
    assert granted.max_duration > 0


async def test_a_plan_without_the_setting_commits_nothing(services: Services) -> None:
    await billed_plan(services)
    await set_plan_policy(services.pool, "retail", PlanPolicy(recurring_fee=10 * EUR))
    await customer(services, "free", None, date(2026, 3, 11), balance=5 * EUR)

    assert await commitments.refresh(services.pool, services.store, at=MID_MARCH) == []
    assert (await services.accounts.show("free")).committed == 0


async def test_posting_a_start_of_cycle_invoice_commits_the_next_ones_charges(
    services: Services,
) -> None:
    """On a start-of-cycle plan the invoice of the month holding now is posted inside
    it: once posted its fees are paid, and the next month's fee is what is committed.
    Dates are relative to today, since posting commits from the present."""
    today = datetime.now(UTC).date()
    this_month = today.replace(day=1)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    await add_plan(services, "retail")
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "fixed_date", last_month, cycle_day=1,
                    invoice_timing="start_of_cycle"),
    )  # fmt: skip
    await set_plan_policy(
        services.pool, "retail", PlanPolicy(recurring_fee=10 * EUR, lock_prorated=True)
    )
    await customer(services, "paid", None, last_month, balance=35 * EUR)
    run_id = await runs.create_run(services.pool, f"{this_month:%Y-%m}", invoice_date=this_month)
    await runs.execute_run(services.pool, run_id)
    # This month's invoice bills last month's fee (its first) and this month's: 20.00.
    [invoice] = await invoices(services)
    assert invoice["total"] == 20 * EUR

    await posting.post(services.pool, services.store, run_id=run_id)

    # 35.00 - 20.00 paid = 15.00; next month's 10.00 committed, 5.00 available.
    paid = await services.accounts.show("paid")
    assert (paid.balance, paid.committed, paid.available) == (15 * EUR, 10 * EUR, 5 * EUR)
    async with services.pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT committed, prorated_locked FROM accounts WHERE id = 'paid'"
        )
    assert (stored["committed"], stored["prorated_locked"]) == (10 * EUR, False)
    granted = await services.calls.authorize(AuthorizeRequest("paid", "441234567", call_id="q-1"))
    assert granted.max_duration > 0


async def test_a_voided_start_of_cycle_invoice_leaves_its_charges_uncommitted(
    services: Services,
) -> None:
    """A void invoice keeps its period: no run bills that month's fees again (re-billing
    them is the operator's, decision 0046). The commitment counted the voided month as
    the next invoice still to come, so its 20.00 stayed set aside from the customer's
    funds, money nobody will ask for; the next month's 10.00 is what stays committed."""
    today = datetime.now(UTC).date()
    this_month = today.replace(day=1)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    await add_plan(services, "retail")
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "fixed_date", last_month, cycle_day=1,
                    invoice_timing="start_of_cycle"),
    )  # fmt: skip
    await set_plan_policy(
        services.pool, "retail", PlanPolicy(recurring_fee=10 * EUR, lock_prorated=True)
    )
    await customer(services, "paid", None, last_month, balance=35 * EUR)
    run_id = await runs.create_run(services.pool, f"{this_month:%Y-%m}", invoice_date=this_month)
    await runs.execute_run(services.pool, run_id)
    await posting.post(services.pool, services.store, run_id=run_id)
    [invoice] = await invoices(services)
    assert (invoice["total"], invoice["state"]) == (20 * EUR, "posted")
    async with services.pool.acquire() as conn:
        invoice_id = await conn.fetchval("SELECT id FROM invoices WHERE account_id = 'paid'")

    voided = await void.void(services.pool, services.store, invoice_id)
    assert voided.total == -20 * EUR
    # What every later posting of the account does: commit its next invoice's charges.
    [refreshed] = await commitments.refresh(services.pool, services.store, account_ids=["paid"])

    # The 20.00 came back (35.00); only next month's 10.00 is set aside: 25.00 available.
    assert (refreshed.committed, refreshed.covered) == (10 * EUR, True)
    paid = await services.accounts.show("paid")
    assert (paid.balance, paid.committed, paid.available) == (35 * EUR, 10 * EUR, 25 * EUR)
    async with services.pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT committed, prorated_locked FROM accounts WHERE id = 'paid'"
        )
        states = await conn.fetch("SELECT kind, state FROM invoices ORDER BY id")
    assert (stored["committed"], stored["prorated_locked"]) == (10 * EUR, False)
    assert [(s["kind"], s["state"]) for s in states] == [
        ("invoice", "void"),
        ("credit_note", "posted"),
    ]
