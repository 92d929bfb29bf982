"""On-demand billing (call shops, hotels): calls only while a session is open, and closing
the session produces its invoice (real PostgreSQL and Redis, real calls)."""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs.balances.accounts import AccountSpec
from ocs.balances.ledger_writer import LedgerWriter
from ocs.balances.store import BalanceStore
from ocs.billing import drafts, posting
from ocs.billing.cycles import PlanBilling
from ocs.billing.dunning import reactivate_paid
from ocs.billing.periods import month_day
from ocs.billing.sessions import (
    close_session,
    open_session,
    session_invoice,
)
from ocs.billing.store import Subscription, plan_billing, set_plan_billing, subscribe
from ocs.billing.worker import BillingWorker, WorkerSettings
from ocs.charging.values import AuthorizeRequest
from ocs.errors import OcsError, Reason
from ocs.services import Services
from tests.billing_helpers import EUR, invoices
from tests.conftest import RunningApp, add_plan
from tests.helpers import send


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
    await set_plan_billing(
        services.pool, services.store, PlanBilling("shop", "on_demand", date(2026, 1, 1))
    )
    await services.accounts.create(AccountSpec("booth1", plan_id="shop", opening_balance=5 * EUR))
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


async def _statuses(services: Services, account_id: str) -> tuple[str, str, str]:
    """(PostgreSQL status, Redis status, Redis lock reason) of an account."""
    async with services.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT status FROM accounts WHERE id = $1", account_id)
    live = await services.store.get_account(account_id)
    assert live is not None
    return stored, live.status, live.lock


async def test_a_session_never_lifts_a_suspension_or_an_operators_lock(app: RunningApp) -> None:
    """A session lifts only its own lock: a suspended account, or one an operator locked,
    is refused a session (409 account_state) and keeps refusing calls; closing a session
    leaves a suspension made meanwhile, and dunning's reactivation then gives back the
    session lock, not calls with no session open."""
    services = app.services
    await add_plan(services, "shop")
    await set_plan_billing(
        services.pool, services.store, PlanBilling("shop", "on_demand", date(2026, 1, 1))
    )
    for account_id in ("booth1", "booth2"):
        await services.accounts.create(
            AccountSpec(account_id, plan_id="shop", opening_balance=5 * EUR)
        )
    status, body = await send(app, "PATCH", "/v1/accounts/booth1", {"status": "suspended"})
    assert status == 200, body
    status, body = await send(app, "PATCH", "/v1/accounts/booth2", {"status": "locked"})
    assert status == 200, body

    for account_id, held in (("booth1", "suspended"), ("booth2", "locked")):
        status, body = await app.post(f"/v1/accounts/{account_id}/billing-sessions", None)
        assert (status, body["error"]["reason"], body["error"]["field"]) == (
            409,
            "account_state",
            "account_id",
        ), body
        assert held in body["error"]["message"]
        assert await _statuses(services, account_id) == (held, held, "")
    assert await _refusal(services, "c1") is Reason.ACCOUNT_SUSPENDED
    status, document = await app.get("/openapi.json")
    assert (
        "409"
        in document["paths"]["/v1/accounts/{account_id}/billing-sessions"]["post"]["responses"]
    )

    # The operator lifts the suspension; a session opens, closes (locked again), opens.
    status, body = await send(app, "PATCH", "/v1/accounts/booth1", {"status": "active"})
    assert status == 200, body
    first = await open_session(services.pool, services.store, "booth1")
    closed = await close_session(services.pool, services.store, "booth1")
    assert closed.id == first.id and closed.invoice_id is not None
    assert await _statuses(services, "booth1") == ("locked", "locked", "session")
    await open_session(services.pool, services.store, "booth1")
    # Dunning suspends it mid-session, recording what it had then (active, no lock).
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO dunning_suspensions (account_id, invoice_id, previous_status,"
            " previous_lock, suspended_at) VALUES ('booth1', $1, 'active', '', now())",
            closed.invoice_id,
        )
    status, body = await send(app, "PATCH", "/v1/accounts/booth1", {"status": "suspended"})
    assert status == 200, body
    # Suspended while a session is open: closing it keeps the suspension.
    await close_session(services.pool, services.store, "booth1")
    assert await _statuses(services, "booth1") == ("suspended", "suspended", "")
    assert await _refusal(services, "c2") is Reason.ACCOUNT_SUSPENDED
    # Nothing overdue: dunning lifts its suspension, back to "no session open".
    assert await reactivate_paid(services.pool, services.store, ["booth1"], datetime.now(UTC)) == [
        "booth1"
    ]
    assert await _statuses(services, "booth1") == ("locked", "locked", "session")
    assert await _refusal(services, "c3") is Reason.NO_OPEN_SESSION


async def test_closing_a_session_keeps_an_operators_lock_that_dunning_recorded(
    app: RunningApp,
) -> None:
    """An operator locks an account mid-session, dunning then suspends it (recording the
    operator's lock), and the session is closed: paying gives back the operator's lock.
    Before, the close rewrote what dunning had recorded as the session lock, so paying
    opened the account to the next session, and the operator's lock was gone."""
    services = app.services
    await add_plan(services, "kiosk")
    await set_plan_billing(
        services.pool, services.store, PlanBilling("kiosk", "on_demand", date(2026, 1, 1))
    )
    await services.accounts.create(AccountSpec("booth3", plan_id="kiosk", opening_balance=5 * EUR))
    await open_session(services.pool, services.store, "booth3")
    first = await close_session(services.pool, services.store, "booth3")
    await open_session(services.pool, services.store, "booth3")
    status, body = await send(app, "PATCH", "/v1/accounts/booth3", {"status": "locked"})
    assert status == 200, body
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO dunning_suspensions (account_id, invoice_id, previous_status,"
            " previous_lock, suspended_at) VALUES ('booth3', $1, 'locked', '', now())",
            first.invoice_id,
        )
    status, body = await send(app, "PATCH", "/v1/accounts/booth3", {"status": "suspended"})
    assert status == 200, body
    await close_session(services.pool, services.store, "booth3")
    assert await _statuses(services, "booth3") == ("suspended", "suspended", "")
    assert await reactivate_paid(services.pool, services.store, ["booth3"], datetime.now(UTC)) == [
        "booth3"
    ]
    # The operator's lock, not the session's: no session may open.
    assert await _statuses(services, "booth3") == ("locked", "locked", "")
    status, body = await app.post("/v1/accounts/booth3/billing-sessions", None)
    assert (status, body["error"]["reason"]) == (409, "account_state"), body


async def _call(services: Services, account_id: str, call_id: str, seconds: int) -> None:
    """A call of ``seconds`` to a UK fixed number (0.010/min, 60/60), authorized and ended."""
    await services.calls.authorize(AuthorizeRequest(account_id, "441234567", call_id=call_id))
    await services.calls.stop(call_id, seconds, account_id)


async def test_an_operator_lifting_a_suspension_gives_back_no_calls_outside_a_session(
    app: RunningApp,
) -> None:
    """An operator suspends an on-demand account during its session, the session closes
    while it is suspended, and ``PATCH status=active`` lifts the suspension: the account
    is back to "no session open" (locked, lock ``session``), its calls refused with
    no_open_session until a session opens, not active with calls that no session invoice
    would bill. Lifted while a session is still open, it is active: the session's calls
    go, and its invoice bills them."""
    services = app.services
    await add_plan(services, "shop")
    await set_plan_billing(
        services.pool, services.store, PlanBilling("shop", "on_demand", date(2026, 1, 1))
    )
    await services.accounts.create(AccountSpec("kiosk", plan_id="shop", opening_balance=5 * EUR))
    status, first = await app.post("/v1/accounts/kiosk/billing-sessions", None)
    assert status == 201, first
    await _call(services, "kiosk", "in-session", 90)  # 120 s billed: 0.02
    status, body = await send(app, "PATCH", "/v1/accounts/kiosk", {"status": "suspended"})
    assert status == 200, body
    status, closed = await app.post("/v1/accounts/kiosk/billing-sessions/close", None)
    assert status == 200, closed
    assert await _statuses(services, "kiosk") == ("suspended", "suspended", "")

    status, body = await send(app, "PATCH", "/v1/accounts/kiosk", {"status": "active"})
    assert status == 200, body
    assert (body["status"], body["locked_by"]) == ("locked", "session")
    assert await _statuses(services, "kiosk") == ("locked", "locked", "session")
    with pytest.raises(OcsError) as refused:
        await _call(services, "kiosk", "no-session", 60)
    assert refused.value.reason is Reason.NO_OPEN_SESSION
    assert (await services.accounts.show("kiosk")).balance == 5 * EUR - 20_000
    # The first session's invoice, recomputed now that its CDR is in PostgreSQL (a later
    # session's invoice would leave it as it is): its one call.
    await _cdrs_written(services, 1)
    await session_invoice(services.pool, first["id"])

    # Lifted while a session is open: active, and the session's call is billed by it.
    status, second = await app.post("/v1/accounts/kiosk/billing-sessions", None)
    assert status == 201, second
    for change in ("suspended", "active"):
        status, body = await send(app, "PATCH", "/v1/accounts/kiosk", {"status": change})
        assert status == 200, body
    assert (body["status"], body["locked_by"]) == ("active", None)
    await _call(services, "kiosk", "second-session", 30)  # 60 s billed: 0.01
    await _cdrs_written(services, 2)
    status, closed_again = await app.post("/v1/accounts/kiosk/billing-sessions/close", None)
    assert status == 200, closed_again
    assert await _statuses(services, "kiosk") == ("locked", "locked", "session")
    billed = [
        ([line["calls"] for line in row["lines"]], row["total"]) for row in await invoices(services)
    ]
    assert billed == [([1], 20_000), ([1], 10_000)]
    assert (await services.accounts.show("kiosk")).balance == 5 * EUR - 30_000


async def _booth_with_a_minimum(services: Services) -> None:
    """Account booth1 on an on-demand plan, its subscription holding a bundle with a
    minimum spend of 20.00 a month (its first day long past), locked with no session."""
    await add_plan(services, "shop")
    await set_plan_billing(
        services.pool, services.store, PlanBilling("shop", "on_demand", date(2026, 1, 1))
    )
    await services.accounts.create(AccountSpec("booth1", plan_id="shop", opening_balance=5 * EUR))
    sub = await subscribe(services.pool, Subscription("booth1", "shop", date(2026, 1, 1)))
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO bundles (id, name, currency) VALUES ('min', 'Shop minimum', 'EUR');"
            "INSERT INTO bundle_indicators (bundle_id, name, function, measure)"
            " VALUES ('min', 'spend', 'sum', 'amount');"
            "INSERT INTO bundle_rules (bundle_id, position, kind, description, indicator, amount)"
            " VALUES ('min', 1, 'commitment', 'minimum spend', 'spend', 20000000)"
        )
        await conn.execute(
            "INSERT INTO subscription_bundles (subscription_id, bundle_id) VALUES ($1, 'min')",
            sub,
        )


def _commitment(invoice: dict) -> tuple[int, int, str]:
    """(exact, rounded, description) of an invoice's one line, its commitment's."""
    [line] = invoice["lines"]
    assert line["kind"] == "bundle_commitment"
    return line["exact_amount"], line["amount"], line["description"]


# A 20.00 monthly minimum over 3 hours, by the days of the month from the session's first
# day: 20.00 x 10_800 s / (days x 86_400 s), exact (half away from zero) and rounded.
THREE_HOURS = {
    28: (89_286, 90_000),
    29: (86_207, 90_000),
    30: (83_333, 80_000),
    31: (80_645, 80_000),
}


async def test_closing_a_session_bills_a_monthly_minimum_for_the_time_it_lasted(
    app: RunningApp,
) -> None:
    """A session closed over the API the day it opened answers 200 and has its invoice: a
    commitment is a monthly minimum, prorated by the session's real duration over the
    month from its first day (3 hours of a 30-day month: 20.00 x 3/720 = 0.083333 ->
    0.08). It was a 500 (a same-day session has 0 calendar days: 0/0), the session left
    closed with no invoice."""
    services = app.services
    await _booth_with_a_minimum(services)
    status, opened = await app.post("/v1/accounts/booth1/billing-sessions", None)
    assert status == 201, opened
    async with services.pool.acquire() as conn:  # opened 3 hours ago
        began = await conn.fetchval(
            "UPDATE billing_sessions SET opened_at = clock_timestamp() - interval '3 hours'"
            " WHERE id = $1 RETURNING opened_at",
            opened["id"],
        )
    status, closed = await app.post("/v1/accounts/booth1/billing-sessions/close", None)
    assert status == 200, closed
    assert closed["invoice_id"] is not None
    first = began.astimezone(UTC).date()
    after = month_day(first.year + first.month // 12, first.month % 12 + 1, first.day)
    days = (after - first).days
    [invoice] = await invoices(services)
    exact, rounded, text = _commitment(invoice)
    assert (exact, rounded) == THREE_HOURS[days]
    assert f"(3h00 of {days} days), used 0.00, shortfall charged" in text
    assert invoice["total"] == THREE_HOURS[days][1]
    assert await _statuses(services, "booth1") == ("locked", "locked", "session")


async def test_a_session_across_midnight_pays_its_hours_not_the_whole_minimum(
    services: Services,
) -> None:
    """Two closed sessions in November (month from Nov 10 or 12: 30 days, 720 hours):
    3 hours within a day, 20.00 x 3/720 = 0.083333 -> 0.08; 2 hours across midnight,
    20.00 x 2/720 = 0.055556 -> 0.06, not the whole 20.00 (1/1 calendar days)."""
    await _booth_with_a_minimum(services)
    ids = []
    async with services.pool.acquire() as conn:
        for opened, hours in (
            (datetime(2026, 11, 10, 23, tzinfo=UTC), 2),
            (datetime(2026, 11, 12, 10, tzinfo=UTC), 3),
        ):
            ids.append(
                await conn.fetchval(
                    "INSERT INTO billing_sessions (account_id, opened_at, closed_at)"
                    " VALUES ('booth1', $1, $2) RETURNING id",
                    opened,
                    opened + timedelta(hours=hours),
                )
            )
    await session_invoice(services.pool, ids[0], date(2026, 11, 11))
    [across] = await invoices(services)
    assert _commitment(across) == (
        55_556,
        60_000,
        "Shop minimum: minimum spend: minimum 0.055556 (2h00 of 30 days), used 0.00,"
        " shortfall charged",
    )
    await session_invoice(services.pool, ids[1], date(2026, 11, 12))
    _across, within = await invoices(services)
    assert _commitment(within)[:2] == (83_333, 80_000)
    async with services.pool.acquire() as conn:
        linked = await conn.fetch(
            "SELECT invoice_id FROM billing_sessions WHERE id = ANY($1::bigint[])", ids
        )
    assert all(row["invoice_id"] is not None for row in linked)


async def _http_call(app: RunningApp, account_id: str, call_id: str, seconds: int) -> str:
    """A call over the API to a UK fixed number (0.010/min, 60/60): "granted" (then
    ended after ``seconds``), or the reason it was refused."""
    status, body = await send(
        app,
        "POST",
        "/v1/calls",
        {"account": account_id, "destination": "441234567", "call_id": call_id},
    )
    if status != 201:
        assert status == 403, body
        return str(body["error"]["reason"])
    stopped, answer = await send(app, "POST", f"/v1/calls/{call_id}/stop", {"duration": seconds})
    assert stopped == 200, answer
    return "granted"


async def _balance(app: RunningApp, account_id: str) -> str:
    status, body = await app.get(f"/v1/accounts/{account_id}")
    assert status == 200, body
    return str(body["balance"])


async def test_an_account_created_on_an_on_demand_plan_calls_only_in_a_session(
    app: RunningApp,
) -> None:
    """An account created on a plan billed on demand was active: it called freely until
    its first session opened and closed, and no session invoice billed those calls. Now
    it starts locked (lock ``session``) and calls once a session opens; so does a card."""
    services = app.services
    await add_plan(services, "shop")
    status, body = await app.put(
        "/v1/plans/shop/billing", {"cycle": "on_demand", "effective_date": "2026-01-01"}
    )
    assert status == 200, body
    status, created = await app.post(
        "/v1/accounts", {"id": "booth", "plan": "shop", "balance": "5.00"}
    )
    assert status == 201, created
    assert (created["status"], created["locked_by"]) == ("locked", "session")
    assert await _statuses(services, "booth") == ("locked", "locked", "session")
    assert await _http_call(app, "booth", "before", 90) == "no_open_session"
    assert await _balance(app, "booth") == "5.000000"
    # The same request again is answered as the same request: the account exists.
    status, again = await app.post(
        "/v1/accounts", {"id": "booth", "plan": "shop", "balance": "5.00"}
    )
    assert (status, again["error"]["reason"]) == (409, "account_exists"), again

    status, session = await app.post("/v1/accounts/booth/billing-sessions", None)
    assert status == 201, session
    assert await _http_call(app, "booth", "in-session", 90) == "granted"  # 120 s: 0.02
    assert await _balance(app, "booth") == "4.980000"

    # An operator's lock asked for at creation stays the operator's: no session opens.
    status, held = await app.post(
        "/v1/accounts", {"id": "held", "plan": "shop", "balance": "5.00", "status": "locked"}
    )
    assert status == 201, held
    assert await _statuses(services, "held") == ("locked", "locked", "")
    status, body = await app.post("/v1/accounts/held/billing-sessions", None)
    assert (status, body["error"]["reason"]) == (409, "account_state"), body

    # A card on the plan waits for a session too.
    response = await app.client.post(
        "/v1/pin-batches",
        json={"plan": "shop", "batch": "shopcards", "count": 1, "length": 12, "value": "3.00"},
    )
    assert response.status == 201, await response.text()
    [card] = list(csv.DictReader(io.StringIO(await response.text())))
    assert await _statuses(services, card["account"]) == ("locked", "locked", "session")
    assert await _http_call(app, card["account"], "card-before", 30) == "no_open_session"
    status, body = await app.post(f"/v1/accounts/{card['account']}/billing-sessions", None)
    assert status == 201, body
    assert await _http_call(app, card["account"], "card-in-session", 30) == "granted"
    assert await _balance(app, card["account"]) == "2.990000"


async def test_a_creation_retried_after_its_answer_was_lost_keeps_the_session_lock(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session lock is part of what the creation request makes (its token): the same
    request sent again after Redis made the account and the answer was lost finishes that
    creation, locked, rather than being refused as another request."""
    services = app.services
    await add_plan(services, "shop")
    status, body = await app.put(
        "/v1/plans/shop/billing", {"cycle": "on_demand", "effective_date": "2026-01-01"}
    )
    assert status == 200, body
    real = BalanceStore.create_account

    async def made_then_lost(self: BalanceStore, *args: Any, **kwargs: Any) -> Any:
        await real(self, *args, **kwargs)
        raise RedisConnectionError("connection to Redis lost: reset by peer")

    monkeypatch.setattr(BalanceStore, "create_account", made_then_lost)
    request = {"id": "booth", "plan": "shop", "balance": "5.00"}
    status, body = await app.post("/v1/accounts", request)
    assert status == 503, body
    monkeypatch.undo()
    status, body = await app.post("/v1/accounts", request)
    assert status == 201, body
    assert (body["status"], body["locked_by"], body["balance"]) == ("locked", "session", "5.000000")
    assert await _statuses(services, "booth") == ("locked", "locked", "session")
    assert await _http_call(app, "booth", "lost", 30) == "no_open_session"


async def test_a_plan_switched_to_on_demand_locks_its_accounts_and_back_unlocks_them(
    app: RunningApp,
) -> None:
    """A plan whose cycle became on_demand left its accounts active: they called with no
    session open, on no session invoice. Now its accounts with no session open are locked
    (lock ``session``) when it does, and active again when its cycle becomes another; an
    operator's lock stays through both."""
    services = app.services
    await add_plan(services, "desk")
    monthly = {"cycle": "fixed_date", "effective_date": "2026-01-01", "cycle_day": 1}
    status, body = await app.put("/v1/plans/desk/billing", monthly)
    assert status == 200, body
    for account_id in ("d1", "d2", "fraud"):
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "desk", "balance": "5.00"}
        )
        assert (status, body["status"]) == (201, "active"), body
    status, body = await send(app, "PATCH", "/v1/accounts/fraud", {"status": "locked"})
    assert status == 200, body
    assert await _http_call(app, "d1", "monthly", 90) == "granted"  # 120 s: 0.02

    status, body = await app.put(
        "/v1/plans/desk/billing", {"cycle": "on_demand", "effective_date": "2026-01-01"}
    )
    assert status == 200, body
    for account_id in ("d1", "d2"):
        assert await _statuses(services, account_id) == ("locked", "locked", "session")
        assert await _http_call(app, account_id, f"{account_id}-none", 60) == "no_open_session"
    assert await _statuses(services, "fraud") == ("locked", "locked", "")
    assert (await _balance(app, "d1"), await _balance(app, "d2")) == ("4.980000", "5.000000")

    # Billed monthly again: no session to wait for (an open one keeps the plan on demand,
    # the next test), the session lock is lifted.
    status, body = await app.put("/v1/plans/desk/billing", monthly)
    assert status == 200, body
    for account_id in ("d1", "d2"):
        assert await _statuses(services, account_id) == ("active", "active", "")
    assert await _statuses(services, "fraud") == ("locked", "locked", "")
    assert await _http_call(app, "d1", "d1-monthly", 30) == "granted"  # 60 s: 0.01
    assert await _http_call(app, "fraud", "fraud-monthly", 30) == "account_locked"
    assert (await _balance(app, "d1"), await _balance(app, "fraud")) == ("4.970000", "5.000000")


async def test_a_plan_with_a_session_open_keeps_its_on_demand_cycle(app: RunningApp) -> None:
    """A plan moved off on_demand with a session open left the session open for good
    (closing needs the on-demand cycle): its calls on no invoice. The change is now
    refused (409 ``account_state`` naming ``cycle`` and the sessions open); the session
    goes on, closes, and its invoice bills its calls once."""
    services = app.services
    await add_plan(services, "shop")
    on_demand = {"cycle": "on_demand", "effective_date": "2026-01-01"}
    status, body = await app.put("/v1/plans/shop/billing", on_demand)
    assert status == 200, body
    for account_id in ("booth", "idle"):
        status, body = await app.post(
            "/v1/accounts", {"id": account_id, "plan": "shop", "balance": "5.00"}
        )
        assert status == 201, body
    status, opened = await app.post("/v1/accounts/booth/billing-sessions", None)
    assert status == 201, opened
    assert await _http_call(app, "booth", "before", 90) == "granted"  # 120 s: 0.02

    monthly = {"cycle": "fixed_date", "effective_date": "2026-01-01", "cycle_day": 1}
    status, body = await app.put("/v1/plans/shop/billing", monthly)
    assert (status, body["error"]["reason"], body["error"]["field"]) == (
        409,
        "account_state",
        "cycle",
    ), body
    assert "1 session open (booth)" in body["error"]["message"]
    kept = await plan_billing(services.pool, "shop")
    assert kept is not None and kept.cycle == "on_demand"
    # Nothing moved: the session calls on, the account with no session stays locked.
    assert await _statuses(services, "booth") == ("active", "active", "")
    assert await _statuses(services, "idle") == ("locked", "locked", "session")
    assert await _http_call(app, "booth", "after", 30) == "granted"  # 60 s: 0.01
    assert await _http_call(app, "idle", "idle", 30) == "no_open_session"

    await _cdrs_written(services, 2)
    status, closed = await app.post("/v1/accounts/booth/billing-sessions/close", None)
    assert status == 200, closed
    assert await _statuses(services, "booth") == ("locked", "locked", "session")
    [invoice] = await invoices(services)
    [usage] = invoice["lines"]
    assert (invoice["account"], usage["calls"], usage["amount"], invoice["total"]) == (
        "booth",
        2,
        30_000,
        30_000,
    )
    assert await _balance(app, "booth") == "4.970000"
    # Invoiced now, the plan keeps its cycle (migration 0045): no second invoice of them.
    status, body = await app.put("/v1/plans/shop/billing", monthly)
    assert (status, body["error"]["field"]) == (400, "cycle"), body
    assert len(await invoices(services)) == 1


async def test_a_session_whose_draft_failed_at_its_close_is_invoiced_once_by_the_worker(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing a session commits the close, then drafts its invoice: when the draft fails
    (here it raises once) the session stays closed with no invoice, which no API call
    drafts again. The billing worker drafts it once the close is a minute old (not while a
    close may still be drafting it), with the session's amount (3 hours of the 20.00
    minimum), one log line; a second pass drafts nothing more."""
    await _booth_with_a_minimum(services)
    opened = await open_session(services.pool, services.store, "booth1")
    async with services.pool.acquire() as conn:  # opened 3 hours ago
        began = await conn.fetchval(
            "UPDATE billing_sessions SET opened_at = clock_timestamp() - interval '3 hours'"
            " WHERE id = $1 RETURNING opened_at",
            opened.id,
        )
    real_write = drafts.write
    failures = [RuntimeError("connection lost mid-draft")]

    async def failing_write(*args: object, **kwargs: object) -> drafts.Written:
        if failures:
            raise failures.pop()
        return await real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(drafts, "write", failing_write)
    with pytest.raises(RuntimeError, match="mid-draft"):
        await close_session(services.pool, services.store, "booth1")
    assert await invoices(services) == []
    assert await _statuses(services, "booth1") == ("locked", "locked", "session")

    now = datetime.now(UTC)
    settings = WorkerSettings(run_delay=0)
    # Just closed: a close in progress may still be drafting it, the worker waits.
    await BillingWorker(services.pool, settings, clock=lambda: now).run_once()
    assert await invoices(services) == []

    later = BillingWorker(services.pool, settings, clock=lambda: now + timedelta(minutes=2))
    with caplog.at_level("INFO", logger="ocs.billing.worker"):
        await later.run_once()
        await later.run_once()
    first = began.astimezone(UTC).date()
    after = month_day(first.year + first.month // 12, first.month % 12 + 1, first.day)
    [invoice] = await invoices(services)
    assert _commitment(invoice)[:2] == THREE_HOURS[(after - first).days]
    assert invoice["state"] == "draft"
    async with services.pool.acquire() as conn:
        linked = await conn.fetchval(
            "SELECT invoice_id FROM billing_sessions WHERE id = $1", opened.id
        )
        stored = await conn.fetchval("SELECT id FROM invoices")
    assert linked == stored
    drafted = [r for r in caplog.records if r.getMessage().startswith("session invoice drafted")]
    assert [(r.session_id, r.invoice_id) for r in drafted] == [(opened.id, stored)]  # type: ignore[attr-defined]
