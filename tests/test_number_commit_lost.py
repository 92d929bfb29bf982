"""A number take or release whose COMMIT went through but whose answer was lost: the
number routes to the account PostgreSQL says holds it, and the operator is answered as
PostgreSQL says (decision 0030, addendum 2026-12-07).

The answer is lost for real: a TCP relay in front of PostgreSQL forwards the COMMIT,
waits for the server's answer (the COMMIT done), drops it and closes the connection.
Before, ocs took the lost answer for a failure and put the number's Redis reference back
as before the change: after a take, PostgreSQL said the account held (and was charged
for) the number while its inbound calls reached nobody; after a release, the number
freed in PostgreSQL still sent its calls to the account that gave it back.
"""

import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from ocs.services import Services
from tests.conftest import RunningApp, add_plan
from tests.helpers import Raw, new_account, send
from tests.outage_helpers import PgRelay

INBOUND_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment,direction
44,UK Fixed,0.010,0,60,60,outbound
4420,London DID,0.020,0,60,60,inbound
"""
NUMBER = "442079460001"


class CommitCutter(PgRelay):
    """The outage tests' relay in front of the test PostgreSQL, which while ``armed``
    forwards the next COMMIT, then drops PostgreSQL's answer to it and closes the
    connection at both ends: the COMMIT done, its answer lost. ``refuse_after_cut``: new
    connections are refused from then on (``refusing``, a server away)."""

    def __init__(self, database_url: str) -> None:
        """In front of the server ``database_url`` names; ``start`` listens."""
        super().__init__(database_url)
        self.armed = False
        self.refuse_after_cut = False
        self.cuts = 0

    def forward(self, link: Any, data: bytes, *, toward_server: bool) -> bool:
        """A COMMIT (a simple Query message) marks its link while armed; the marked link's
        next answer from PostgreSQL is dropped."""
        if toward_server:
            if self.armed and b"Q" in data and b"COMMIT" in data:
                self.armed = False
                link.marked = True
            return True
        if link.marked:
            self.cuts += 1
            self.refusing = self.refusing or self.refuse_after_cut
            return False
        return True


@pytest.fixture
async def cutter(services: Services) -> AsyncIterator[CommitCutter]:
    """A relay in front of the test database, closed after the test."""
    relay = CommitCutter(services.settings.database_url or "")
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


@pytest.fixture
async def relayed(
    app: RunningApp, cutter: CommitCutter, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[asyncpg.Pool]:
    """The app's requests reach PostgreSQL through the relay, on one connection (so that
    reading back after a cut needs a new one); the test's own reads keep the real pool,
    returned."""
    real = app.services.pool
    pool = await asyncpg.create_pool(cutter.url, min_size=1, max_size=1)
    monkeypatch.setattr(app.services, "pool", pool)
    try:
        yield real
    finally:
        monkeypatch.undo()
        await pool.close()


async def a_did_for(app: RunningApp, account_id: str) -> None:
    """The retail plan with an inbound tariff, a DID set of ``NUMBER`` serving it, and
    ``account_id`` on the plan."""
    await add_plan(app.services, deck=INBOUND_DECK)
    status, body = await send(app, "POST", "/v1/number-sets", {"id": "london", "kind": "did"})
    assert status == 201, body
    csv = Raw(f"number\n{NUMBER}\n", "text/csv")
    status, body = await send(app, "POST", "/v1/number-sets/london/numbers", csv)
    assert status == 200, body
    status, body = await send(app, "PUT", "/v1/number-sets/london/plans/retail", {"priority": 1})
    assert status == 200, body
    await new_account(app, account_id, balance="1.00")


async def holder_in_postgresql(pool: asyncpg.Pool) -> str | None:
    """The account PostgreSQL says holds ``NUMBER``."""
    async with pool.acquire() as conn:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "SELECT account_id FROM number_set_numbers WHERE number = $1", NUMBER
        )


async def inbound_call(app: RunningApp, call_id: str) -> tuple[int, Any]:
    """An inbound call to ``NUMBER`` naming no account: (status, body)."""
    call = {"destination": NUMBER, "direction": "inbound", "call_id": call_id}
    return await send(app, "POST", "/v1/calls", call)


async def test_a_take_and_a_release_whose_commit_answer_is_lost_stand_in_redis_too(
    app: RunningApp,
    cutter: CommitCutter,
    relayed: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The take committed: before, ocs answered 503 and withdrew the number's reference,
    so calls to the number PostgreSQL said (and billed as) callee's were refused for
    want of an account. The release committed: the reference came back, and calls to a
    free number were still callee's."""
    await a_did_for(app, "callee")

    cutter.armed = True
    with caplog.at_level(logging.WARNING, logger="ocs.billing.number_sets"):
        status, taken = await send(app, "POST", "/v1/accounts/callee/numbers", {})
    assert cutter.cuts == 1
    assert (status, taken["account"], taken["number"]) == (201, "callee", NUMBER), taken
    assert await holder_in_postgresql(relayed) == "callee"
    assert await app.services.store.did_account(NUMBER) == "callee"
    status, granted = await inbound_call(app, "in-1")
    assert (status, granted["account"], granted["zone"]) == (201, "callee", "London DID"), granted
    committed = [r for r in caplog.records if "COMMIT's answer was lost" in r.getMessage()]
    assert [(r.number, r.account, r.change) for r in committed] == [  # type: ignore[attr-defined]
        (NUMBER, "callee", "take")
    ]

    cutter.armed = True
    status, released = await send(app, "DELETE", f"/v1/accounts/callee/numbers/{NUMBER}")
    assert cutter.cuts == 2
    assert (status, released) == (200, {"account": "callee", "number": NUMBER}), released
    assert await holder_in_postgresql(relayed) is None
    assert await app.services.store.did_account(NUMBER) is None
    status, refused = await inbound_call(app, "in-2")
    # The number identifies no one: the switch must name the account.
    assert (status, refused["error"]["field"]) == (400, "account"), refused


async def test_a_lost_commit_answer_with_postgresql_away_is_503_outcome_unknown(
    app: RunningApp, cutter: CommitCutter, relayed: asyncpg.Pool
) -> None:
    """PostgreSQL cannot be read back: the operator is told the take may stand, and
    Redis keeps the reference the take set, which is what PostgreSQL holds here."""
    await a_did_for(app, "callee")

    cutter.armed = True
    cutter.refuse_after_cut = True
    status, body = await send(app, "POST", "/v1/accounts/callee/numbers", {"number": NUMBER})
    assert cutter.cuts == 1
    assert (status, body["error"]["reason"], body["error"]["field"]) == (
        503,
        "outcome_unknown",
        "number",
    ), body
    assert await holder_in_postgresql(relayed) == "callee"
    assert await app.services.store.did_account(NUMBER) == "callee"

    # PostgreSQL back: the account's numbers say the take stood.
    cutter.refusing = False
    status, held = await send(app, "GET", "/v1/accounts/callee/numbers")
    assert (status, [n["number"] for n in held["numbers"]]) == (200, [NUMBER]), held
