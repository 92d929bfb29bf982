"""Shared by the tests of committed charges kept current (decision 0020, addendum "the
committed amount is kept current"): a locking retail plan, a worker at a moment, and what
PostgreSQL holds of an account's commitment."""

from datetime import UTC, date, datetime

from ocs.balances.plan_policy import PlanPolicy, set_plan_policy
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import Charge, set_plan_billing
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.services import Services
from tests.billing_helpers import EUR
from tests.conftest import add_plan

MID_MARCH = datetime(2026, 3, 15, 12, tzinfo=UTC)
# One euro a minute to the UK, billed by whole minutes: what a call spends is plain.
DEAR_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
44,UK Fixed,1.000,0,60,60
"""
SUPPORT = Charge(
    "support", "Support", "SUP", "EUR", 3_100_000, "recurring", cadence="monthly", plan_id="retail"
)


async def locking_plan(services: Services, effective: date = date(2026, 3, 1)) -> None:
    """The retail plan, billed on the 1st at the end of cycle from ``effective``, its
    10.00 monthly fee (in advance) committed on its accounts."""
    await add_plan(services, "retail", deck=DEAR_DECK)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "fixed_date", effective, cycle_day=1),
    )
    await set_plan_policy(
        services.pool, "retail", PlanPolicy(recurring_fee=10 * EUR, lock_prorated=True)
    )


def worker_at(services: Services, moment: datetime) -> BillingWorker:
    """A billing worker whose clock says ``moment``, posting nothing by itself."""
    return BillingWorker(
        services.pool,
        WorkerSettings(auto_post=False, counter_cycles=False),
        store=services.store,
        clock=lambda: moment,
    )


async def stored(services: Services, account_id: str) -> tuple[int, bool]:
    """The account's (committed, prorated_locked) in PostgreSQL."""
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT committed, prorated_locked FROM accounts WHERE id = $1", account_id
        )
    return row["committed"], row["prorated_locked"]
