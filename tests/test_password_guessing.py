"""Wrong passwords are counted per account (decision 0045).

An account whose password a NAS checks (User-Name and User-Password) takes at most
``password_guess_limit`` wrong passwords within ``password_guess_window`` seconds of
the first; after that every password-checked request for it is refused with
``password_blocked`` (RADIUS code 10), the right password too, until the window ends.
A right password before the limit clears the count. Balance queries are judged and
counted by the same rule, and trusted channels (the HTTP API) are not affected.
"""

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from ocs.balances.accounts import AccountSpec
from ocs.charging.lifecycle import CallService
from ocs.config import with_overrides
from tests.conftest import RunningApp, add_plan
from tests.helpers import ANSWERED, Pairs, RadiusPorts, auth, card_nas, return_code
from tests.radclient import RadiusReply
from tests.radius_udp import sample

GERMANY = "4930901820"
PASSWORD = "4321"
LIMIT = 3
WINDOW = 60
START = float(datetime(2026, 3, 2, 10, 15, tzinfo=UTC).timestamp())
BLOCKED_LOG = "account blocked for wrong passwords"


def call(user: str, conf_id: str, password: str | None) -> Pairs:
    """An Access-Request for a call from ``user`` to Germany, as a SIP switch sends it."""
    pairs: Pairs = [
        ("NAS-IP-Address", "127.0.0.1"),
        ("User-Name", user),
        ("Called-Station-Id", GERMANY),
        ("Calling-Station-Id", "4930123456"),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
    ]
    if password is not None:
        pairs.append(("User-Password", password))
    return pairs


def balance_query(user: str, password: str) -> Pairs:
    """An IVR's balance query: no Called-Station-Id."""
    return [("User-Name", user), ("User-Password", password), ("Calling-Station-Id", "4930123456")]


def blocked_count() -> float:
    return sample("ocs_radius_rejects_total", return_code="10", reason="password_blocked")


def service(app: RunningApp, clock: Callable[[], float]) -> CallService:
    """The call service with the test's limit and window, on the test's clock."""
    settings = with_overrides(
        app.services.settings, password_guess_limit=LIMIT, password_guess_window=WINDOW
    )
    return CallService(
        app.services.catalog, app.services.store, settings, app.services.digests, clock=clock
    )


async def refused(nas: RadiusPorts, pairs: Pairs, code: int) -> RadiusReply:
    reply = await auth(nas, pairs, expect=ANSWERED)
    assert reply.code == "Access-Reject", reply.output
    assert return_code(reply) == f"h323-return-code={code}", reply.output
    assert reply.first("Reply-Message"), reply.output
    return reply


async def test_wrong_passwords_block_the_account_until_the_window_ends(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await add_plan(app.services)
    for user in ("guessed", "neighbour"):
        await app.services.accounts.create(
            AccountSpec(
                user, plan_id="retail", opening_balance=5_000_000, password=PASSWORD, max_lines=5
            )
        )
    now = [START]
    async with card_nas(app, service(app, lambda: now[0])) as nas:
        for n in range(LIMIT):
            await refused(nas, call("guessed", f"G-{n}", f"guess-{n}"), 2)
        blocks = [r for r in caplog.records if r.getMessage() == BLOCKED_LOG]
        assert [(r.account, r.wrong_passwords) for r in blocks] == [("guessed", LIMIT)]  # type: ignore[attr-defined]
        assert "guess-" not in caplog.text  # no password is ever logged

        # Blocked: the right password too, for calls and balance queries alike.
        before = blocked_count()
        await refused(nas, call("guessed", "G-RIGHT", PASSWORD), 10)
        await refused(nas, balance_query("guessed", PASSWORD), 10)
        await refused(nas, call("guessed", "G-WRONG", "0000"), 10)
        assert blocked_count() == before + 3
        assert caplog.text.count(BLOCKED_LOG) == 1  # once, as the state changed
        assert await app.services.store.live_calls_of("guessed") == {}

        # Only that account: another on the same NAS and caller id still calls.
        reply = await auth(nas, call("neighbour", "N-1", PASSWORD), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output

        # A trusted channel is not a password check: the HTTP API still authorizes.
        status, grant = await app.post("/v1/calls", {"account": "guessed", "destination": GERMANY})
        assert status == 201, grant

        # The window ends WINDOW seconds after the first wrong password.
        now[0] = START + WINDOW - 1
        await refused(nas, call("guessed", "G-EARLY", PASSWORD), 10)
        now[0] = START + WINDOW
        reply = await auth(nas, call("guessed", "G-AFTER", PASSWORD), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output


async def test_a_right_password_clears_the_count(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.services.accounts.create(
        AccountSpec("typo", plan_id="retail", opening_balance=5_000_000, password=PASSWORD)
    )
    now = [START]
    async with card_nas(app, service(app, lambda: now[0])) as nas:
        for n in range(LIMIT - 1):
            await refused(nas, call("typo", f"T-{n}", "1111"), 2)
        reply = await auth(nas, call("typo", "T-OK", PASSWORD), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        # Counted from zero again: LIMIT more wrong ones are each told "wrong password".
        for n in range(LIMIT):
            await refused(nas, call("typo", f"T-AGAIN-{n}", "1111"), 2)
        await refused(nas, call("typo", "T-BLOCKED", PASSWORD), 10)


async def test_balance_queries_and_missing_passwords_count_as_guesses(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.services.accounts.create(
        AccountSpec("ivr-user", plan_id="retail", opening_balance=5_000_000, password=PASSWORD)
    )
    now = [START]
    async with card_nas(app, service(app, lambda: now[0])) as nas:
        reply = await auth(nas, balance_query("ivr-user", PASSWORD), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert reply.attributes["h323-credit-amount"] == ["h323-credit-amount=5.000000"]
        await refused(nas, balance_query("ivr-user", "0001"), 2)
        await refused(nas, balance_query("ivr-user", "0002"), 2)
        await refused(nas, call("ivr-user", "I-NONE", None), 2)  # no User-Password at all
        await refused(nas, balance_query("ivr-user", PASSWORD), 10)
        await refused(nas, call("ivr-user", "I-RIGHT", PASSWORD), 10)


async def test_an_operator_lifts_a_block(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.services.accounts.create(
        AccountSpec("locked-out", plan_id="retail", opening_balance=5_000_000, password=PASSWORD)
    )
    async with card_nas(app, service(app, time.time)) as nas:
        for n in range(LIMIT):
            await refused(nas, call("locked-out", f"L-{n}", "9999"), 2)
        await refused(nas, call("locked-out", "L-BLOCKED", PASSWORD), 10)

        # The customer calls the help desk: the operator lifts the block at once.
        response = await app.client.delete("/v1/accounts/locked-out/password-block")
        assert response.status == 200
        assert await response.json() == {"account": "locked-out", "wrong_passwords_cleared": 3}
        reply = await auth(nas, call("locked-out", "L-AGAIN", PASSWORD), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output

        # Nothing left to lift: none counted.
        response = await app.client.delete("/v1/accounts/locked-out/password-block")
        assert await response.json() == {"account": "locked-out", "wrong_passwords_cleared": 0}

    response = await app.client.delete("/v1/accounts/nobody/password-block")
    body = await response.json()
    assert response.status == 404
    assert (body["error"]["reason"], body["error"]["field"]) == ("account_not_found", "account_id")


async def test_the_help_desk_gives_a_new_password(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await add_plan(app.services)
    await app.services.accounts.create(
        AccountSpec(
            "forgetful", plan_id="retail", opening_balance=5_000_000, password=PASSWORD, max_lines=5
        )
    )
    async with card_nas(app, service(app, time.time)) as nas:
        for n in range(LIMIT):
            await refused(nas, call("forgetful", f"F-{n}", f"forgot-{n}"), 2)
        await refused(nas, call("forgetful", "F-BLOCKED", PASSWORD), 10)

        # The customer forgot it: the help desk sets a new one, and the count starts again.
        response = await app.client.put(
            "/v1/accounts/forgetful/password", json={"password": "new-secret"}
        )
        assert response.status == 200
        assert await response.json() == {"account": "forgetful", "has_password": True}
        reply = await auth(nas, call("forgetful", "F-NEW", "new-secret"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        await refused(nas, call("forgetful", "F-OLD", PASSWORD), 2)  # the old one is gone
        stored = await app.services.pool.fetchval(
            "SELECT password_digest FROM accounts WHERE id = 'forgetful'"
        )
        assert stored == app.services.digests.password("forgetful", "new-secret")

        # Removed: calls need no password at all.
        response = await app.client.put("/v1/accounts/forgetful/password", json={"password": None})
        assert await response.json() == {"account": "forgetful", "has_password": False}
        reply = await auth(nas, call("forgetful", "F-NONE", None), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert (
            await app.services.pool.fetchval(
                "SELECT password_digest FROM accounts WHERE id = 'forgetful'"
            )
            is None
        )
    assert caplog.text.count("account password changed") == 2
    assert "new-secret" not in caplog.text

    for path, body, status, field in (
        ("/v1/accounts/nobody/password", {"password": "x"}, 404, "account_id"),
        ("/v1/accounts/forgetful/password", {"password": ""}, 400, "password"),
        ("/v1/accounts/forgetful/password", {"password": "x" * 129}, 400, "password"),
        ("/v1/accounts/forgetful/password", {}, 400, "password"),
    ):
        response = await app.client.put(path, json=body)
        error = (await response.json())["error"]
        assert (response.status, error["field"]) == (status, field), error
