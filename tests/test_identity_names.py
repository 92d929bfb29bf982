"""An account id, a member's name and a caller id never name two accounts (decision
0053, addendum 2026-12-07).

A User-Name is taken as an account id before a member, and a caller id as a member
before a listed caller id. So a new account ``alice`` took the calls of another
account's member ``alice`` (RADIUS charged the new customer, the switch's
``member: alice`` got 404), and a caller id listed for one account was charged to
another whose member had that number. Each is now refused 409 ``account_exists``
naming its field, and two creations of one name at once leave one.

Rates (FLAT_DECK): Germany 0.01 a minute, 60/60; plans allow 600 s calls, so a grant
reserves 0.10.
"""

import asyncio

import asyncpg
import pytest

from ocs.balances import accounts as accounts_module
from ocs.balances.accounts import AccountSpec
from ocs.errors import OcsError
from tests.conftest import RunningApp, RunningRadius, account, add_plan, eventually
from tests.helpers import ANSWERED, Pairs, auth

FLAT_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.010,0,60,60
"""
GERMANY = "4930123456"
PHONE = "4930111222"  # a customer's line


def call(conf_id: str, caller: str, user: str | None = None) -> Pairs:
    """An Access-Request for a call to Germany from ``caller`` (no User-Name: pinless)."""
    pairs: Pairs = [
        ("NAS-IP-Address", "127.0.0.1"),
        ("Called-Station-Id", GERMANY),
        ("Calling-Station-Id", caller),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
    ]
    if user is not None:
        pairs.append(("User-Name", user))
    return pairs


async def plan(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=5)


async def create(app: RunningApp, account_id: str) -> None:
    status, body = await app.post(
        "/v1/accounts", {"id": account_id, "plan": "retail", "balance": "5.00"}
    )
    assert status == 201, body


def conflict(status: int, body: dict, field: str) -> None:
    """A 409 ``account_exists`` naming ``field``."""
    error = body.get("error", {})
    assert (status, error.get("reason"), error.get("field")) == (
        409,
        "account_exists",
        field,
    ), body


async def lines_in_use(app: RunningApp, account_id: str) -> int:
    return int((await account(app, account_id))["lines_in_use"])


async def test_an_account_id_that_is_a_member_is_refused(radius: RunningRadius) -> None:
    """The reviewer's case: acme's member alice, then an account alice."""
    app = radius.app
    await plan(app)
    await create(app, "acme")
    status, body = await app.post("/v1/accounts/acme/members", {"member": "alice"})
    assert status == 201, body
    status, body = await app.post(
        "/v1/accounts", {"id": "alice", "plan": "retail", "balance": "5.00"}
    )
    conflict(status, body, "id")
    status, body = await app.get("/v1/accounts/alice")
    assert status == 404, body
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts WHERE id = 'alice'") == 0
    # The member still names acme: over HTTP and as a RADIUS User-Name.
    status, grant = await app.post("/v1/calls", {"member": "alice", "destination": GERMANY})
    assert (status, grant.get("account")) == (201, "acme"), grant
    reply = await auth(radius, call("A-1", "15550001111", "alice"), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output
    assert await lines_in_use(app, "acme") == 2
    status, body = await app.get("/v1/accounts/acme/members")
    assert [m["member"] for m in body["members"]] == ["alice"], body


async def test_a_member_that_is_another_accounts_id_is_refused(radius: RunningRadius) -> None:
    app = radius.app
    await plan(app)
    await create(app, "acme")
    await create(app, "alice")
    status, body = await app.post("/v1/accounts/acme/members", {"member": "alice"})
    conflict(status, body, "member")
    status, body = await app.get("/v1/accounts/acme/members")
    assert (status, body["members"]) == (200, []), body
    # A member named like its own account's id names that same account: allowed.
    status, body = await app.post("/v1/accounts/alice/members", {"member": "alice"})
    assert status == 201, body
    reply = await auth(radius, call("B-1", "15550001111", "alice"), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output
    assert (await lines_in_use(app, "alice"), await lines_in_use(app, "acme")) == (1, 0)


async def test_a_caller_id_that_is_another_accounts_member_is_refused(
    radius: RunningRadius,
) -> None:
    app = radius.app
    await plan(app)
    await create(app, "acme")
    await create(app, "heir")
    status, body = await app.post("/v1/accounts/acme/members", {"member": PHONE})
    assert status == 201, body
    status, body = await app.post("/v1/accounts/heir/callers", {"caller": f"+{PHONE}"})
    conflict(status, body, "caller")
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM account_callers") == 0
    # Its own account's member may be listed as its caller id too: the same account.
    status, body = await app.post("/v1/accounts/acme/callers", {"caller": PHONE})
    assert status == 201, body
    reply = await auth(radius, call("C-1", PHONE), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output
    assert (await lines_in_use(app, "acme"), await lines_in_use(app, "heir")) == (1, 0)


async def test_a_member_that_is_another_accounts_caller_id_is_refused(
    radius: RunningRadius,
) -> None:
    app = radius.app
    await plan(app)
    await create(app, "acme")
    await create(app, "heir")
    status, body = await app.post("/v1/accounts/heir/callers", {"caller": PHONE})
    assert status == 201, body
    status, body = await app.post("/v1/accounts/acme/members", {"member": PHONE})
    conflict(status, body, "member")
    # Calls from the number stay the caller id's account's (a member would come first).
    reply = await auth(radius, call("D-1", PHONE), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output
    assert (await lines_in_use(app, "heir"), await lines_in_use(app, "acme")) == (1, 0)
    # Its own caller id may be its member too.
    status, body = await app.post("/v1/accounts/heir/members", {"member": PHONE})
    assert status == 201, body


async def waiting_on_a_lock(pool: asyncpg.Pool) -> bool:
    """Whether some transaction waits for an advisory lock."""
    async with pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
        )


async def test_an_account_and_a_member_of_one_name_made_at_once_leave_one(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The member ``alice`` is added while the account ``alice`` is being created (its
    checks made, its rows not committed): it waits for the creation and is refused,
    rather than both being made."""
    await plan(app)
    await create(app, "acme")
    services = app.services
    real = accounts_module.starting_state
    adding: list[asyncio.Task[None]] = []

    async def member_added_meanwhile(
        conn: asyncpg.Connection, plan_id: str, status: str
    ) -> tuple[str, str]:
        task = asyncio.create_task(services.accounts.add_member("acme", "alice"))
        adding.append(task)

        async def settled() -> bool:
            return task.done() or await waiting_on_a_lock(services.pool)

        await eventually(settled, what="the member's addition to finish or wait")
        return await real(conn, plan_id, status)

    monkeypatch.setattr(accounts_module, "starting_state", member_added_meanwhile)
    made = await services.accounts.create(AccountSpec("alice", "retail", opening_balance=5_000_000))
    assert made.account_id == "alice"
    with pytest.raises(OcsError) as refused:
        await adding[0]
    assert (refused.value.reason.value, refused.value.field) == ("account_exists", "member")
    assert await services.accounts.members("acme") == []
    assert await services.store.identities("alice", None) == ("retail", None, None)
