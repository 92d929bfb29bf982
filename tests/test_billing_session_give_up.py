"""A closed on-demand session whose missing invoice cannot be drafted: the billing worker
stops trying it (at once on a refusal, after ``SESSION_TRIES`` failures otherwise), logs
it once, and counts it in ``ocs_billing_sessions_given_up`` until it has an invoice; it
no longer counts as a failure at every pass (decision 0020, addendum 2026-12-07). The
count is kept with the session (migration 0069): a restarted worker goes on counting, and
tries a session given up again only after ``ocs billing retry-sessions``.

Real PostgreSQL and Redis; the failing draft is ``drafts.write`` made to raise.
"""

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from ocs import metrics
from ocs.balances.accounts import AccountSpec
from ocs.billing import drafts
from ocs.billing.cycles import PlanBilling
from ocs.billing.sessions import close_session, draft_failed, open_session, retry_given_up
from ocs.billing.store import set_plan_billing
from ocs.billing.worker import SESSION_TRIES, BillingWorker, WorkerSettings
from ocs.services import Services
from tests.billing_helpers import EUR, invoices
from tests.conftest import add_plan


@pytest.fixture(autouse=True)
def _no_session_left_given_up() -> Iterator[None]:
    """The gauge is this process's: a test that leaves a session given up would make a
    later test's scrape of the process (the dashboard and alert check) see the alert."""
    yield
    metrics.BILLING_SESSIONS_GIVEN_UP.set(0)


def _failures() -> float:
    """``ocs_billing_failures_total{stage="sessions"}`` of this process."""
    return REGISTRY.get_sample_value("ocs_billing_failures_total", {"stage": "sessions"}) or 0.0


def _given_up() -> float | None:
    """``ocs_billing_sessions_given_up`` of this process."""
    return REGISTRY.get_sample_value("ocs_billing_sessions_given_up")


async def _closed_without_invoice(
    services: Services, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> list[Exception]:
    """booth1 on the on-demand plan "shop", its session closed while ``drafts.write``
    raises ``error``; the failures still to raise (empty it to let drafts through)."""
    await add_plan(services, "shop")
    await set_plan_billing(
        services.pool, services.store, PlanBilling("shop", "on_demand", date(2026, 1, 1))
    )
    await services.accounts.create(AccountSpec("booth1", plan_id="shop", opening_balance=5 * EUR))
    await open_session(services.pool, services.store, "booth1")
    real_write = drafts.write
    failing = [error]

    async def write(*args: object, **kwargs: object) -> drafts.Written:
        if failing:
            raise failing[0]
        return await real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(drafts, "write", write)
    with pytest.raises(type(error)):
        await close_session(services.pool, services.store, "booth1")
    return failing


def _worker(services: Services) -> BillingWorker:
    """A drafting-only worker whose clock is two minutes ahead: the close is old enough."""
    later = datetime.now(UTC) + timedelta(minutes=2)
    return BillingWorker(services.pool, WorkerSettings(run_delay=0), clock=lambda: later)


async def _counted(services: Services) -> list[tuple[int, bool]]:
    """Each session's failed drafts and whether it is given up, as PostgreSQL holds them."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT draft_failures, given_up_at IS NOT NULL AS given_up"
            " FROM billing_sessions ORDER BY id"
        )
    return [(r["draft_failures"], r["given_up"]) for r in rows]


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("session invoice")]


async def test_a_session_whose_draft_keeps_failing_is_given_up_after_a_few_tries(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL kept failing the draft: counted at every pass for ever, the billing
    # alert never resolved. Now 3 passes count, the later ones do not.
    failing = await _closed_without_invoice(services, monkeypatch, RuntimeError("lost"))
    worker = _worker(services)
    before = _failures()
    with caplog.at_level("INFO", logger="ocs.billing.worker"):
        for _ in range(SESSION_TRIES + 3):
            await worker.run_once()
    assert _failures() - before == SESSION_TRIES == 3
    assert _given_up() == 1
    assert _messages(caplog) == [
        "session invoice failed",
        "session invoice given up: an operator must fix its account or plan",
    ]
    assert await invoices(services) == []
    assert await _counted(services) == [(3, True)]
    # Once the cause is gone, a restarted worker still leaves it (the operator says when
    # it is fixed); after ``ocs billing retry-sessions`` it drafts it.
    failing.clear()
    await _worker(services).run_once()
    assert await invoices(services) == []
    assert _given_up() == 1
    assert len(await retry_given_up(services.pool)) == 1
    await _worker(services).run_once()
    [invoice] = await invoices(services)
    assert invoice["state"] == "draft"
    assert _given_up() == 0


async def test_a_restarted_worker_goes_on_counting_the_tries_of_a_session(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The tries were the worker process's: each restart (a deploy, a crash) tried the
    # session 3 times more and fired the failures alert again. Now two tries by one
    # worker and two by the next make 3 failures in all, the session given up at the third.
    await _closed_without_invoice(services, monkeypatch, RuntimeError("lost"))
    before = _failures()
    with caplog.at_level("INFO", logger="ocs.billing.worker"):
        first = _worker(services)
        for _ in range(2):
            await first.run_once()
        assert await _counted(services) == [(2, False)]
        restarted = _worker(services)
        for _ in range(2):
            await restarted.run_once()
    assert _failures() - before == SESSION_TRIES == 3
    assert await _counted(services) == [(3, True)]
    assert _given_up() == 1
    assert _messages(caplog) == [
        "session invoice failed",
        "session invoice given up: an operator must fix its account or plan",
    ]
    # A third worker, started afresh, tries it no more and still shows it given up.
    await _worker(services).run_once()
    assert _failures() - before == 3
    assert _given_up() == 1


async def test_a_session_whose_account_left_its_on_demand_plan_is_given_up_at_once(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The draft failed at the close, then the plan was billed monthly: every later draft
    # is refused ("plan shop is not billed on demand"), so the worker tries no more.
    failing = await _closed_without_invoice(services, monkeypatch, RuntimeError("lost"))
    failing.clear()
    await set_plan_billing(
        services.pool, services.store, PlanBilling("shop", "manual", date(2026, 1, 1))
    )
    worker = _worker(services)
    before = _failures()
    with caplog.at_level("INFO", logger="ocs.billing.worker"):
        for _ in range(3):
            await worker.run_once()
    assert _failures() - before == 1
    assert _given_up() == 1
    assert _messages(caplog) == [
        "session invoice given up: an operator must fix its account or plan"
    ]
    [record] = [r for r in caplog.records if r.getMessage().startswith("session invoice")]
    assert "not billed on demand" in record.error  # type: ignore[attr-defined]
    assert await invoices(services) == []


async def test_a_late_failure_from_another_worker_leaves_a_given_up_session_given_up(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers tried the session at once: one's draft was refused (given up at its
    # first failure), the other's failed for a passing reason a moment later. That second
    # count, below the limit, wrote the give-up away, and the session was tried again.
    await _closed_without_invoice(services, monkeypatch, RuntimeError("lost"))
    [session_id] = [r["id"] for r in await services.pool.fetch("SELECT id FROM billing_sessions")]
    async with services.pool.acquire() as conn:
        await conn.execute(
            "UPDATE billing_sessions SET draft_failures = 0 WHERE id = $1", session_id
        )
    assert await draft_failed(services.pool, session_id, tries=SESSION_TRIES, refused=True) == 1
    assert await _counted(services) == [(1, True)]
    assert await draft_failed(services.pool, session_id, tries=SESSION_TRIES, refused=False) == 2
    assert await _counted(services) == [(2, True)]
