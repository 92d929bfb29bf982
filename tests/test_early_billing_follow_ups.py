"""After an early billing run: a plan with no account is refused a period not ended
(decision 0021, addendum 2026-12-07)."""

from datetime import UTC, date, datetime

import pytest

from ocs.billing import runs
from ocs.billing.cycles import PlanBilling
from ocs.billing.store import set_plan_billing
from ocs.errors import OcsError, Reason
from ocs.services import Services
from tests.billing_helpers import EUR, billed_plan, monthly


async def _runs(services: Services) -> list[tuple[str, int]]:
    """Every run stored: (period, accounts_total), oldest first."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT period, accounts_total FROM invoice_runs ORDER BY id")
    return [(r["period"], r["accounts_total"]) for r in rows]


async def _refused(
    services: Services, period: str, now: datetime, plan_id: str | None = None
) -> str:
    """The message of the refusal of a run of ``period`` at ``now``; it names period."""
    with pytest.raises(OcsError) as refused:
        await runs.create_run(services.pool, period, plan_id=plan_id, timing=runs.Timing(now=now))
    assert (refused.value.reason, refused.value.field) == (Reason.INVALID_FIELD, "period")
    return refused.value.message


async def test_a_plan_with_no_account_is_refused_a_month_that_has_not_ended(
    services: Services,
) -> None:
    # The retail plan (end of cycle, on the 1st) has no account yet. On March 10 a run
    # of March, not early, was stored done with nothing in it, and March counted as
    # taken: an account joining on March 15 was never billed for March.
    await billed_plan(services)
    await monthly(services, "rent", 10 * EUR)
    march_10 = datetime(2026, 3, 10, tzinfo=UTC)
    for plan_id in (None, "retail"):
        message = await _refused(services, "2026-03", march_10, plan_id)
        assert "'2026-03' has not ended" in message, message
        assert "2026-04-01T00:00:00+00:00" in message, message
    assert await _runs(services) == []
    # Once March has ended, it runs (and bills nobody).
    await runs.create_run(
        services.pool, "2026-03", timing=runs.Timing(now=datetime(2026, 4, 1, 0, 1, tzinfo=UTC))
    )
    assert await _runs(services) == [("2026-03", 0)]


async def test_a_subscription_date_plan_with_no_account_waits_for_every_period_of_the_month(
    services: Services,
) -> None:
    # Its accounts' periods start on their own anniversaries: March's last one may start
    # on March 31 and end on April 30. Refused on April 10 and on April 30, run on May 1.
    await billed_plan(services)
    await set_plan_billing(
        services.pool,
        services.store,
        PlanBilling("retail", "subscription_date", date(2026, 1, 1), time_zone="UTC"),
    )
    for now in (datetime(2026, 3, 10, tzinfo=UTC), datetime(2026, 4, 30, 23, tzinfo=UTC)):
        message = await _refused(services, "2026-03", now)
        assert "2026-05-01T00:00:00+00:00" in message, message
    assert await _runs(services) == []
    await runs.create_run(
        services.pool, "2026-03", timing=runs.Timing(now=datetime(2026, 5, 1, 0, 1, tzinfo=UTC))
    )
    assert await _runs(services) == [("2026-03", 0)]
