"""A subscription-date account's periods, fixed by its invoices (decision 0019, addendum
2026-12-07): a subscription dated earlier, or a first subscription recorded after the
account was invoiced, no longer moves them; a void invoice fixes nothing.

Plan ``retail``: EUR, the subscription-date cycle (monthly from each account's own
anchor), end of cycle, UTC.
"""

from datetime import UTC, date, datetime

from ocs.balances.accounts import AccountSpec
from ocs.billing import posting
from ocs.billing.cycles import PlanBilling
from ocs.billing.drafts import preview
from ocs.billing.store import Subscription, set_plan_billing, subscribe
from ocs.billing.void import void
from ocs.services import Services
from tests.billing_helpers import EUR, cdr, customer, invoice_id, run
from tests.conftest import add_plan


async def anniversary_plan(services: Services) -> None:
    """The retail plan on the subscription-date cycle from Jan 1, 2026."""
    await add_plan(services, "retail")
    await set_plan_billing(
        services.pool, services.store, PlanBilling("retail", "subscription_date", date(2026, 1, 1))
    )


async def periods(services: Services, account: str) -> list[tuple[str, str, int]]:
    """The account's invoices (no credit note): (period, state, what its usage lines say
    the real-time path debited)."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT i.period_label, i.state, (SELECT COALESCE(sum(l.amount), 0)::bigint"
            "   FROM invoice_lines l WHERE l.invoice_id = i.id AND l.kind = 'usage') AS usage"
            " FROM invoices i WHERE i.account_id = $1 AND i.kind = 'invoice'"
            " ORDER BY i.period_start",
            account,
        )
    return [(r["period_label"], r["state"], r["usage"]) for r in rows]


async def test_a_subscription_dated_earlier_does_not_move_an_invoiced_accounts_periods(
    services: Services,
) -> None:
    """Subscribed Jan 15: January's invoice is Jan 15 - Feb 15, with a call of Feb 5
    (6.00). A second subscription to the plan dated Jan 1 is recorded: February's invoice
    is Feb 15 - Mar 15 (it was Feb 1 - Mar 1, billing the Feb 5 call again). a2's January
    invoice, the same, was voided: nothing fixes its anchor, which follows its
    subscriptions again (Feb 1 - Mar 1, with the call the void invoice held)."""
    await anniversary_plan(services)
    for account in ("a1", "a2"):
        await customer(services, account, None, date(2026, 1, 15))
        await cdr(
            services,
            f"{account}-c1",
            account,
            datetime(2026, 2, 5, 12, tzinfo=UTC),
            duration=600,
            charged=6 * EUR,
        )
    january = await run(services, "2026-01", invoice_date=date(2026, 2, 15))
    await posting.post(services.pool, services.store, run_id=january)
    await void(
        services.pool, services.store, await invoice_id(services, "a2", "2026-01-15..2026-02-15")
    )
    for account in ("a1", "a2"):
        await subscribe(services.pool, Subscription(account, "retail", date(2026, 1, 1)))
    await run(services, "2026-02", invoice_date=date(2026, 3, 15))

    assert await periods(services, "a1") == [
        ("2026-01-15..2026-02-15", "posted", 6 * EUR),
        ("2026-02-15..2026-03-15", "draft", 0),
    ]
    assert await periods(services, "a2") == [
        ("2026-01-15..2026-02-15", "void", 6 * EUR),
        ("2026-02", "draft", 6 * EUR),
    ]


async def test_a_first_subscription_after_the_first_invoice_does_not_move_the_periods(
    services: Services,
) -> None:
    """An account created on Jan 20 with no subscription is invoiced for Jan 20 - Feb 20
    (its call of Feb 10 on it). Its first subscription, dated Jan 1, is recorded then:
    February's invoice and a preview of it are Feb 20 - Mar 20, not Feb 1 - Mar 1."""
    await anniversary_plan(services)
    await services.accounts.create(AccountSpec("a3", plan_id="retail"))
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE accounts SET created_at = '2026-01-20T09:00Z' WHERE id = 'a3'")
    await cdr(
        services, "a3-c1", "a3", datetime(2026, 2, 10, 12, tzinfo=UTC), duration=60, charged=EUR
    )
    await run(services, "2026-01", invoice_date=date(2026, 2, 20))
    await subscribe(services.pool, Subscription("a3", "retail", date(2026, 1, 1)))
    period, _currency, _lines = await preview(
        services.pool, "a3", datetime(2026, 2, 25, tzinfo=UTC)
    )
    await run(services, "2026-02", invoice_date=date(2026, 3, 20))

    assert (period.first_day, period.end_day) == (date(2026, 2, 20), date(2026, 3, 20))
    assert await periods(services, "a3") == [
        ("2026-01-20..2026-02-20", "draft", EUR),
        ("2026-02-20..2026-03-20", "draft", 0),
    ]
