"""The admin HTTP API needs a bearer token with a role, even before any token exists.

Switches and IVRs (the call lifecycle, PIN queries) from switch_networks (the
loopback by default) and the probes (/healthz, /metrics) need none. A viewer
reads, an operator also works on accounts, an admin does everything. Tokens are
stored as digests, shown once, revoked at once; ``admin_token_required = false``
(trials) leaves the API open until the first token exists.
"""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ocs import api_tokens
from ocs.config import Settings
from ocs.errors import OcsError
from ocs.http.app import create_app
from ocs.services import Services
from tests.conftest import (
    RETAIL_DECK,
    TEST_TOKEN_NAME,
    RunningApp,
    add_plan,
    bearer,
    caught_up,
)
from tests.helpers import ocs_cli


async def call(
    app: RunningApp, method: str, path: str, token: str | None = None, **kwargs: Any
) -> tuple[int, dict]:
    """A request with ``token`` only (none: no Authorization), not the app's own."""
    headers = bearer(token) if token is not None else {}
    status, body, answered = await app.anonymous(method, path, headers=headers, **kwargs)
    if status == 401:
        assert answered["WWW-Authenticate"].startswith("Bearer")
    return status, body


async def test_only_with_admin_token_required_off_is_the_api_open_before_any_token(
    services: Services, settings: Settings
) -> None:
    from dataclasses import replace

    trial = replace(services, settings=replace(settings, admin_token_required=False))
    client = TestClient(TestServer(create_app(trial)))
    await client.start_server()
    try:
        response = await client.post("/v1/plans", json={"id": "open", "currency": "EUR"})
        assert response.status == 201
        # A bad name or role is refused naming the field, and makes no token.
        for name, role, field in (("noc\n", "admin", "name"), ("", "admin", "name"),
                                  ("noc", "root", "role")):  # fmt: skip
            with pytest.raises(OcsError) as refused:
                await api_tokens.create(services.pool, name, role)
            assert refused.value.field == field
        assert await api_tokens.listed(services.pool) == []
        # The first token closes it.
        await api_tokens.create(services.pool, "first", "viewer")
        response = await client.post("/v1/plans", json={"id": "late", "currency": "EUR"})
        assert response.status == 401
    finally:
        await client.close()


async def test_roles_decide_what_a_token_may_do_and_switches_need_none(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pool = app.services.pool
    admin = await api_tokens.create(pool, "noc-admin", "admin")
    operator = await api_tokens.create(pool, "care", "operator")
    viewer = await api_tokens.create(pool, "report", "viewer")

    # No token, a wrong one, another scheme: 401, and nothing changes.
    plan = {"id": "retail", "currency": "EUR", "max_lines": 2}
    for token, header in ((None, None), ("ocs_" + "x" * 43, None), (None, "Basic YTpi")):
        headers = {"Authorization": header} if header else {}
        if token is not None:
            headers = bearer(token)
        status, body, _ = await app.anonymous("POST", "/v1/plans", json=plan, headers=headers)
        assert (status, body["error"]["reason"]) == (401, "unauthorized"), body
    status, body = await call(app, "GET", "/v1/plans", viewer)
    assert (status, body["plans"]) == (200, [])

    # Only an admin changes the catalog.
    for token in (viewer, operator):
        status, body = await call(app, "POST", "/v1/plans", token, json=plan)
        assert (status, body["error"]["reason"]) == (403, "forbidden"), body
    assert (await call(app, "POST", "/v1/plans", admin, json=plan))[0] == 201
    status, _ = await call(
        app, "POST", "/v1/plans/retail/tariffs", operator, data=RETAIL_DECK.encode()
    )
    assert status == 403
    assert (await call(app, "POST", "/v1/plans/retail/tariffs", admin, data=RETAIL_DECK))[0] == 200
    # The server rates by the deck once its catalog has reloaded it (PostgreSQL NOTIFY),
    # not when the import answers: a call sent before that was refused no tariff.
    await caught_up(app.services)

    # An operator works on accounts; a viewer only reads them.
    account = {"id": "a1", "plan": "retail", "balance": "2.00"}
    assert (await call(app, "POST", "/v1/accounts", viewer, json=account))[0] == 403
    assert (await call(app, "POST", "/v1/accounts", operator, json=account))[0] == 201
    topup = {"amount": "1.00", "topup_id": "t1"}
    assert (await call(app, "POST", "/v1/accounts/a1/topups", operator, json=topup))[0] == 201
    status, shown = await call(app, "GET", "/v1/accounts/a1", viewer)
    assert (status, shown["balance"]) == (200, "3.000000")

    # The switch on the loopback (switch_networks) authorizes and stops calls with no
    # token; the probes answer anyone.
    status, grant = await call(
        app, "POST", "/v1/calls", json={"account": "a1", "destination": "447700900123"}
    )
    assert status == 201, grant
    status, charge = await call(
        app, "POST", f"/v1/calls/{grant['call_id']}/stop", json={"duration": 45}
    )
    assert (status, charge["cost"]) == (200, "0.198000")
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert (await app.anonymous("GET", path))[0] == 200, path

    # Revoked: refused at once.
    assert await api_tokens.revoke(pool, "care")
    assert (await call(app, "POST", "/v1/accounts/a1/topups", operator, json=topup))[0] == 401
    # Neither the store nor the log holds a token.
    async with pool.acquire() as conn:
        stored = await conn.fetch("SELECT name, role, digest FROM api_tokens")
    assert all(len(r["digest"]) == 32 for r in stored)
    for token in (admin, operator, viewer):
        assert token not in caplog.text
        assert all(token.encode() not in bytes(r["digest"]) for r in stored)


async def test_by_default_the_api_is_closed_before_any_token(
    services: Services, settings: Settings
) -> None:
    assert settings.admin_token_required  # the product's default, as the tests run it
    client = TestClient(TestServer(create_app(services)))
    await client.start_server()
    try:
        response = await client.get("/v1/plans")
        assert response.status == 401
        assert (await client.get("/healthz")).status == 200
        token = await api_tokens.create(services.pool, "first", "viewer")
        response = await client.get("/v1/plans", headers=bearer(token))
        assert response.status == 200
    finally:
        await client.close()


async def test_the_cli_makes_lists_and_revokes_tokens(
    app: RunningApp, settings: Settings, tmp_path: Path
) -> None:
    await add_plan(app.services)
    code, out, err = await ocs_cli(settings, tmp_path, "tokens", "create", "--name", "noc",
                                   "--role", "admin")  # fmt: skip
    assert code == 0, err
    made = json.loads(out)
    assert (made["name"], made["role"]) == ("noc", "admin")
    assert made["token"].startswith("ocs_") and made["token"] not in err
    status, body = await call(app, "GET", "/v1/plans", made["token"])
    assert status == 200 and [p["id"] for p in body["plans"]] == ["retail"]
    assert (await call(app, "GET", "/v1/plans"))[0] == 401  # a token exists now

    code, out, err = await ocs_cli(settings, tmp_path, "tokens", "create", "--name", "noc",
                                   "--role", "viewer")  # fmt: skip
    # Refused (the exit code's meaning is ocs.cli's: a usage error, 2, for a name in use).
    assert code != 0 and out == "" and "exists" in err, (code, err)
    code, out, _ = await ocs_cli(settings, tmp_path, "tokens", "list")
    listed = json.loads(out)["tokens"]
    assert [(t["name"], t["role"]) for t in listed] == [
        ("noc", "admin"),
        (TEST_TOKEN_NAME, "admin"),
    ]
    assert made["token"] not in out
    code, out, _ = await ocs_cli(settings, tmp_path, "tokens", "revoke", "noc")
    assert (code, json.loads(out)) == (0, {"name": "noc", "revoked": True})
    assert (await call(app, "GET", "/v1/plans", made["token"]))[0] == 401
    assert (await call(app, "GET", "/v1/plans"))[0] == 401  # closed still: secure default
    code, _, _ = await ocs_cli(settings, tmp_path, "tokens", "revoke", "noc")
    assert code == 1


async def test_switch_tokens_when_required_guard_the_call_lifecycle_and_nothing_else(
    services: Services, settings: Settings
) -> None:
    from dataclasses import replace

    await add_plan(services)
    guarded = replace(services, settings=replace(settings, switch_token_required=True))
    client = TestClient(TestServer(create_app(guarded)))
    await client.start_server()
    try:
        switch = await api_tokens.create(services.pool, "kamailio-1", "switch")
        admin = await api_tokens.create(services.pool, "noc", "admin")
        viewer = await api_tokens.create(services.pool, "report", "viewer")
        account = {"id": "s1", "plan": "retail", "balance": "1.00"}
        response = await client.post("/v1/accounts", json=account, headers=bearer(admin))
        assert response.status == 201
        call = {"account": "s1", "destination": "447700900123", "call_id": "sw-1"}
        # No token, or a reader's: refused; the switch's and the admin's: served.
        response = await client.post("/v1/calls", json=call)
        assert response.status == 401
        response = await client.post("/v1/calls", json=call, headers=bearer(viewer))
        assert (response.status, (await response.json())["error"]["reason"]) == (403, "forbidden")
        response = await client.post("/v1/calls", json=call, headers=bearer(switch))
        assert response.status == 201, await response.text()
        response = await client.post(
            "/v1/calls/sw-1/stop", json={"duration": 45}, headers=bearer(admin)
        )
        assert (await response.json())["cost"] == "0.198000"
        # A switch token opens nothing of the admin API; the probes need no token.
        response = await client.get("/v1/accounts/s1", headers=bearer(switch))
        assert response.status == 403
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()
