"""An operator's changes to an account that must take effect at once: a top-up of an
expired account is refused (its money could not be spent) and a later ``expires_at``
revives it; a removed, lowered or raised ``critical_balance`` lifts or puts its lock
(decision 0008, addendum 2026-12-07).

Rates: PER_SECOND_DECK prices Germany at 0.60 a minute, billed by the second.
"""

from datetime import UTC, datetime
from typing import Any

from tests.conftest import RunningApp, account, add_plan, eventually

PER_SECOND_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.600,0,1,1
"""
GERMANY = "4930123456"
LATER = "2099-01-01T00:00:00Z"


async def send(app: RunningApp, method: str, path: str, payload: object = None) -> tuple[int, Any]:
    """One request; its status and JSON body."""
    response = await app.client.request(method, path, json=payload)
    return response.status, await response.json()


async def new_account(app: RunningApp, account_id: str, **fields: object) -> dict[str, Any]:
    """An account on the retail plan, which must be created."""
    status, body = await app.post("/v1/accounts", {"id": account_id, "plan": "retail", **fields})
    assert status == 201, body
    return body


async def call(app: RunningApp, account_id: str, call_id: str | None = None) -> tuple[int, Any]:
    """A call to Germany: its status and body."""
    payload: dict[str, object] = {"account": account_id, "destination": GERMANY}
    if call_id is not None:
        payload["call_id"] = call_id
    return await app.post("/v1/calls", payload)


def reason(answer: tuple[int, Any]) -> tuple[int, str]:
    """A refusal's status and reason code."""
    status, body = answer
    return status, body["error"]["reason"]


def lock_of(view: dict[str, Any]) -> tuple[str, str, str | None]:
    """What an operator sees of an account's lock: balance, status and lock reason."""
    return view["balance"], view["status"], view["locked_by"]


async def ledger_of(app: RunningApp, account_id: str) -> list[tuple[str, int]]:
    """The account's ledger rows in PostgreSQL: (kind, amount), oldest first."""
    async with app.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT kind, amount FROM ledger WHERE account_id = $1 ORDER BY occurred_at, entry_id",
            account_id,
        )
    return [(r["kind"], r["amount"]) for r in rows]


# -- a top-up of an expired account ------------------------------------------------------


async def test_an_expired_accounts_topup_is_refused_until_a_later_expiry_revives_it(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=60)
    await new_account(app, "old", balance="1.00", expires_at="2020-01-01T00:00:00Z")

    topup = {"amount": "20.00", "topup_id": "t-1"}
    assert reason(await app.post("/v1/accounts/old/topups", topup)) == (403, "account_expired")
    assert (await account(app, "old"))["balance"] == "1.000000"  # nothing credited
    assert reason(await call(app, "old")) == (403, "account_expired")

    # A bad expiry is a 400 naming the field, and changes nothing.
    for bad in ("2020-01-01T00:00:00", "tomorrow", "1969-12-31T23:59:59Z", 5):
        status, body = await send(app, "PATCH", "/v1/accounts/old", {"expires_at": bad})
        assert (status, body["error"]["field"]) == (400, "expires_at"), (bad, body)
    assert (await account(app, "old"))["expires_at"] == 1_577_836_800

    status, body = await send(app, "PATCH", "/v1/accounts/old", {"expires_at": LATER})
    assert status == 200, body
    assert body["expires_at"] == int(datetime(2099, 1, 1, tzinfo=UTC).timestamp())
    async with app.services.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT expires_at FROM accounts WHERE id = 'old'")
    assert stored == datetime(2099, 1, 1, tzinfo=UTC)

    # The refused top-up was not kept: its id credits now, once.
    status, body = await app.post("/v1/accounts/old/topups", topup)
    assert (status, body["balance"], body["repeated"]) == (201, "21.000000", False)
    status, body = await app.post("/v1/accounts/old/topups", topup)
    assert (status, body["balance"], body["repeated"]) == (200, "21.000000", True)
    assert (await call(app, "old"))[0] == 201

    # null removes the expiry.
    status, body = await send(app, "PATCH", "/v1/accounts/old", {"expires_at": None})
    assert (status, body["expires_at"]) == (200, None)
    async with app.services.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT expires_at FROM accounts WHERE id = 'old'")
    assert stored is None

    async def ledger_written() -> bool:
        return len(await ledger_of(app, "old")) == 2

    await eventually(ledger_written, what="the opening balance and the one top-up")
    assert await ledger_of(app, "old") == [("opening", 1_000_000), ("topup", 20_000_000)]


async def test_a_topup_made_before_the_expiry_is_still_answered_as_a_repeat(
    app: RunningApp,
) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=60)
    await new_account(app, "soon", balance="1.00", expires_at=LATER)
    first = {"amount": "5.00", "topup_id": "t-before"}
    status, body = await app.post("/v1/accounts/soon/topups", first)
    assert (status, body["balance"]) == (201, "6.000000"), body

    status, body = await send(
        app, "PATCH", "/v1/accounts/soon", {"expires_at": "2020-01-01T00:00:00+02:00"}
    )
    assert status == 200, body
    # The retry of a top-up made while it was valid: answered as made, nothing more.
    status, body = await app.post("/v1/accounts/soon/topups", first)
    assert (status, body["balance"], body["repeated"]) == (200, "6.000000", True)
    # A new one is refused.
    refused = {"amount": "5.00", "topup_id": "t-after"}
    assert reason(await app.post("/v1/accounts/soon/topups", refused)) == (403, "account_expired")
    assert (await account(app, "soon"))["balance"] == "6.000000"


async def test_a_payments_credit_still_reaches_an_expired_account(app: RunningApp) -> None:
    # A payment's credit settles money already billed or paid: never refused for expiry.
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=60)
    await new_account(app, "paid", balance="1.00", expires_at="2020-01-01T00:00:00Z")
    result = await app.services.store.topup("paid", 2_000_000, "pay:1", 60)
    assert result is not None and result.balance == 3_000_000
    assert (await account(app, "paid"))["balance"] == "3.000000"


# -- a changed critical balance ----------------------------------------------------------


async def test_removing_the_critical_balance_lifts_the_lock_a_call_put(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=120)
    await new_account(app, "k1", balance="6.00")
    status, body = await send(app, "PATCH", "/v1/accounts/k1", {"critical_balance": "5.00"})
    assert (status, lock_of(body)) == (200, ("6.000000", "active", None))
    assert (await call(app, "k1", "x1"))[0] == 201
    status, body = await app.post("/v1/calls/x1/stop", {"duration": 120})  # 1.20
    assert status == 200, body
    assert lock_of(await account(app, "k1")) == ("4.800000", "locked", "critical")
    assert reason(await call(app, "k1")) == (403, "account_locked")

    status, body = await send(app, "PATCH", "/v1/accounts/k1", {"critical_balance": None})
    assert status == 200, body
    assert (body["critical_balance"], *lock_of(body)) == (None, "4.800000", "active", None)
    assert (await call(app, "k1"))[0] == 201


async def test_a_lowered_or_raised_critical_balance_is_judged_at_once(app: RunningApp) -> None:
    await add_plan(app.services, deck=PER_SECOND_DECK, max_call_duration=60, max_lines=2)
    await new_account(app, "c1", balance="3.00")

    async def patch(**change: object) -> dict[str, Any]:
        status, body = await send(app, "PATCH", "/v1/accounts/c1", change)
        assert status == 200, body
        return body

    # Raised above the balance: locked, as a charge below it would have locked it.
    assert lock_of(await patch(critical_balance="5.00")) == ("3.000000", "locked", "critical")
    assert reason(await call(app, "c1")) == (403, "account_locked")
    # Lowered, still above the balance: still locked.
    assert lock_of(await patch(critical_balance="4.00")) == ("3.000000", "locked", "critical")
    # Lowered to the balance: a balance at its critical balance calls (the charge's rule).
    assert lock_of(await patch(critical_balance="3.00")) == ("3.000000", "active", None)
    assert (await call(app, "c1"))[0] == 201
    assert lock_of(await patch(critical_balance="3.01")) == ("3.000000", "locked", "critical")
    assert lock_of(await patch(critical_balance="0.50")) == ("3.000000", "active", None)

    # An operator's lock is no critical-balance lock: no critical balance lifts it.
    assert lock_of(await patch(status="locked")) == ("3.000000", "locked", None)
    assert lock_of(await patch(critical_balance=None)) == ("3.000000", "locked", None)
    assert lock_of(await patch(critical_balance="9.00")) == ("3.000000", "locked", None)
    # A status set with it is the operator's decision, whatever the balance.
    both = await patch(status="active", critical_balance="9.00")
    assert lock_of(both) == ("3.000000", "active", None)
    # ... until a charge takes the balance further below it.
    assert (await call(app, "c1", "y1"))[0] == 201
    status, body = await app.post("/v1/calls/y1/stop", {"duration": 1})
    assert status == 200, body
    assert lock_of(await account(app, "c1")) == ("2.990000", "locked", "critical")
