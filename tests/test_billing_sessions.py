"""On-demand billing (call shops, hotels): calls only while a session is open, and closing
the session produces its invoice (real PostgreSQL and Redis, real calls)."""

from datetime import date

import pytest

from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.billing import posting
from ocs.billing.cycles import PlanBilling
from ocs.billing.sessions import close_session, lock_without_session, open_session
from ocs.billing.store import set_plan_billing
from ocs.charging.values import AuthorizeRequest
from ocs.errors import OcsError, Reason
from ocs.services import Services
from tests.billing_helpers import EUR, invoices
from tests.conftest import add_plan


async def _cdrs_written(services: Services, count: int) -> None:
    """Move the ledger streams into PostgreSQL until ``count`` CDRs are there."""
    writer = LedgerWriter(services.redis, services.pool)
    await writer.ensure_groups()
    for _ in range(100):
        await writer.read_new()
        async with services.pool.acquire() as conn:
            if await conn.fetchval("SELECT count(*) FROM cdrs") >= count:
                return
    raise AssertionError("the ledger writer did not write the CDRs")


async def _refusal(services: Services, call_id: str) -> Reason:
    with pytest.raises(OcsError) as refused:
        await services.calls.authorize(AuthorizeRequest("booth1", "441234567", call_id=call_id))
    return refused.value.reason


async def test_calls_only_in_an_open_session_and_closing_it_invoices_the_session(
    services: Services,
) -> None:
    await add_plan(services, "shop")
    await set_plan_billing(services.pool, PlanBilling("shop", "on_demand", date(2026, 1, 1)))
    await services.accounts.create(AccountSpec("booth1", plan_id="shop", opening_balance=5 * EUR))
    await lock_without_session(services.pool, services.store, "booth1")
    # No session: the real-time path refuses (the account lock, reason "session").
    assert await _refusal(services, "before") is Reason.NO_OPEN_SESSION

    session = await open_session(services.pool, services.store, "booth1")
    with pytest.raises(OcsError, match="open already"):
        await open_session(services.pool, services.store, "booth1")
    for call_id, seconds in (("c1", 90), ("c2", 30)):  # UK Fixed 0.010/min, 60/60
        await services.calls.authorize(AuthorizeRequest("booth1", "441234567", call_id=call_id))
        await services.calls.stop(call_id, seconds, "booth1")
    await _cdrs_written(services, 2)
    closed = await close_session(services.pool, services.store, "booth1")

    assert await _refusal(services, "after") is Reason.NO_OPEN_SESSION
    assert closed.id == session.id and closed.invoice_id is not None
    [invoice] = await invoices(services)
    [usage] = invoice["lines"]
    # 90 s -> 120 s billed (0.02), 30 s -> 60 s (0.01): 0.03, debited by the calls.
    assert (usage["calls"], usage["billed_seconds"], usage["amount"]) == (2, 180, 30_000)
    assert invoice["total"] == 30_000 and invoice["state"] == "draft"
    async with services.pool.acquire() as conn:
        start, end = await conn.fetchrow(
            "SELECT period_start, period_end FROM invoices WHERE id = $1", closed.invoice_id
        )
    assert (start, end) == (closed.opened_at, closed.closed_at)
    # Posting moves nothing more: the calls were paid as they happened.
    posted = await posting.post(services.pool, services.store, invoice_ids=[closed.invoice_id])
    assert posted.lines_moved == 0
    assert (await services.accounts.show("booth1")).balance == 5 * EUR - 30_000
    with pytest.raises(OcsError, match="no open session"):
        await close_session(services.pool, services.store, "booth1")
