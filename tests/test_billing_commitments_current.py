"""The committed amount kept current (decision 0020, addendum "the committed amount is kept
current"): the billing worker commits each locking plan's next invoice at the cycle start
and after the plan's charges change, subscribing commits at once, and a plan billed by
hand releases what its accounts had committed (hand-computed, EUR)."""

from datetime import UTC, date, datetime, timedelta

import pytest

from ocs.billing import posting
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import create_charge, set_plan_billing
from ocs.charging.values import AuthorizeRequest
from ocs.errors import OcsError
from ocs.services import Services
from tests.billing_helpers import EUR, customer, run
from tests.commitments_helpers import MID_MARCH, SUPPORT, locking_plan, stored, worker_at
from tests.conftest import RunningApp


async def test_calls_spend_only_what_the_first_invoice_leaves_so_posting_leaves_no_debt(
    services: Services,
) -> None:
    """Started on March 11 with 25.00: March's invoice bills 18.87 (support 3.10 x 21/31 =
    2.10, the fee 10.00 x 21/31 = 6.77 and April's 10.00 ahead). Only the flat 10.00 fee
    was committed: calls spent 15.00, and posting left the balance at -8.87."""
    await locking_plan(services)
    await create_charge(services.pool, SUPPORT)
    await customer(services, "caller", None, date(2026, 3, 11), balance=25 * EUR)

    await worker_at(services, MID_MARCH).run_once()

    shown = await services.accounts.show("caller")
    assert (shown.committed, shown.available) == (18_870_000, 6_130_000)
    assert await stored(services, "caller") == (18_870_000, False)
    # 6.13 available at 1.00 a minute: six whole minutes, spent to the last.
    grant = await services.calls.authorize(AuthorizeRequest("caller", "441234567", call_id="c-1"))
    assert grant.max_duration == 360
    charged = await services.calls.stop("c-1", grant.max_duration, "caller")
    assert charged.charged == 6 * EUR
    with pytest.raises(OcsError) as refused:
        await services.calls.authorize(AuthorizeRequest("caller", "441234567", call_id="c-2"))
    # 0.13 left over the commitment: not a minute's worth.
    assert refused.value.reason.value == "insufficient_funds"

    run_id = await run(services, "2026-03", plan_id="retail")
    await posting.post(services.pool, services.store, run_id=run_id)

    # 25.00 - 6.00 spent - 18.87 billed: 0.13 left, no debt.
    assert (await services.accounts.show("caller")).balance == 130_000


async def test_a_plan_charge_added_later_is_committed_by_the_next_worker_pass(
    services: Services,
) -> None:
    await locking_plan(services)
    await customer(services, "later", None, date(2026, 3, 11), balance=30 * EUR)
    worker = worker_at(services, MID_MARCH)
    await worker.run_once()
    # The fee only: March's 21 days, 6.77, and April's 10.00.
    assert (await services.accounts.show("later")).committed == 16_770_000
    # Nothing changed since: the next pass refreshes no plan.
    assert await worker.refresh_commitments() == []

    await create_charge(services.pool, SUPPORT)
    await worker.run_once()

    # Support's 2.10 for March joins, with no invoice posted.
    later = await services.accounts.show("later")
    assert (later.committed, later.available) == (18_870_000, 30 * EUR - 18_870_000)
    assert await stored(services, "later") == (18_870_000, False)


async def test_a_plan_moved_to_manual_billing_releases_its_accounts_commitment(
    services: Services,
) -> None:
    await locking_plan(services)
    await customer(services, "short", None, date(2026, 3, 11), balance=10 * EUR)
    await worker_at(services, MID_MARCH).run_once()
    # 10.00 cannot cover 16.77: locked, its calls refused.
    assert await stored(services, "short") == (16_770_000, True)
    with pytest.raises(OcsError) as refused:
        await services.calls.authorize(AuthorizeRequest("short", "441234567", call_id="s-1"))
    assert refused.value.reason.value == "zero_balance"

    await set_plan_billing(
        services.pool, services.store, PlanBilling("retail", "manual", date(2026, 3, 1))
    )
    await worker_at(services, MID_MARCH).run_once()

    # A plan billed by hand has no next invoice to set funds aside for: all 10.00 is
    # available again, the account unlocked, and it calls (ten minutes at most).
    short = await services.accounts.show("short")
    assert (short.committed, short.available) == (0, 10 * EUR)
    assert await stored(services, "short") == (0, False)
    grant = await services.calls.authorize(AuthorizeRequest("short", "441234567", call_id="s-2"))
    assert grant.max_duration == 600


async def test_subscribing_an_account_commits_its_first_invoice_at_once(app: RunningApp) -> None:
    """Over the API: created on the plan (nothing to bill yet, nothing committed), then
    subscribed from the first of this month. Its first invoice bills this month's fee
    and next month's ahead (20.00) and this month's support (3.10): 23.10, not the flat
    10.00 fee committed at creation before."""
    services = app.services
    first = datetime.now(UTC).date().replace(day=1)
    await locking_plan(services, effective=(first - timedelta(days=1)).replace(day=1))
    await create_charge(services.pool, SUPPORT)
    status, created = await app.post(
        "/v1/accounts", {"id": "new1", "plan": "retail", "balance": "30.00"}
    )
    assert status == 201, created
    assert (created["committed"], created["available"]) == ("0.000000", "30.000000")

    status, body = await app.post(
        "/v1/subscriptions", {"account": "new1", "plan": "retail", "start_date": str(first)}
    )
    assert status == 201, body

    status, shown = await app.get("/v1/accounts/new1")
    assert status == 200, shown
    assert (shown["committed"], shown["available"]) == ("23.100000", "6.900000")
    assert await stored(services, "new1") == (23_100_000, False)
