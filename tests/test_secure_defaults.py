"""Secure by default: a fresh ocs refuses the admin API and strangers' calls.

Field trials found the admin API open to anyone who reached port 8080 until a
first token existed: accounts, top-ups and a NAS client for 0.0.0.0/0 with a
secret of the caller's choosing. Now the admin API refuses every request
without a valid token, the first start makes (and shows once) a bootstrap admin
token, and the call lifecycle over HTTP is accepted, like a RADIUS NAS client,
only from a switch token or a source address in ``switch_networks``.
"""

import asyncio
import hashlib
import io
import logging
import re
import secrets
import socket
import stat
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from ocs import api_tokens, bootstrap_token
from ocs.balances.accounts import AccountSpec
from ocs.config import Settings, load_settings
from ocs.demo import DEMO_TOKEN_NAME, demo_admin_token, run_demo
from ocs.http.admin_auth import source_allowed
from ocs.http.app import create_app
from ocs.services import Services
from tests.conftest import add_plan, bearer, eventually, reset_state
from tests.serve_process import ServeProcess, free_port, serve_env

CALL = {"account": "a1", "destination": "447700900123"}


async def started(services: Services, **changes: Any) -> TestClient:
    """A client, sending no token of its own, of an app with these settings changed."""
    changed = replace(services, settings=replace(services.settings, **changes))
    client = TestClient(TestServer(create_app(changed), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def fresh(services: Services) -> AsyncIterator[TestClient]:
    """A fresh install: default settings, no token at all, a plan and account a1 (0.00)."""
    await add_plan(services, max_lines=5)
    await services.accounts.create(
        AccountSpec("a1", plan_id="retail", opening_balance=0, max_lines=5)
    )
    client = await started(services)
    try:
        yield client
    finally:
        await client.close()


async def answer(response: aiohttp.ClientResponse) -> tuple[int, dict[str, Any]]:
    """(status, JSON body); every refusal must be a JSON error."""
    assert response.content_type == "application/json", await response.text()
    return response.status, await response.json()


async def pg_counts(pool: asyncpg.Pool) -> dict[str, int]:
    """Rows of what a stranger must not be able to make."""
    counts = {}
    async with pool.acquire() as conn:
        for table in ("accounts", "ledger", "nas_clients", "api_tokens"):
            counts[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
    return counts


async def redis_state(redis: Redis) -> dict[bytes, Any]:
    """Every Redis key with its type and, for a hash, its content."""
    state: dict[bytes, Any] = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        state[key] = (kind, await redis.hgetall(key) if kind == b"hash" else None)
    return state


# --- the admin API ---------------------------------------------------------------------


async def test_with_no_token_at_all_the_admin_api_refuses_and_nothing_is_made(
    services: Services, fresh: TestClient
) -> None:
    before = (await pg_counts(services.pool), await redis_state(services.redis))
    attempts = [
        ("POST", "/v1/accounts", {"id": "evil", "plan": "retail", "balance": "1000.00"}),
        ("POST", "/v1/accounts/a1/topups", {"amount": "1000.00", "topup_id": "t-evil"}),
        ("POST", "/v1/nas-clients", {"name": "evil", "address": "0.0.0.0/0", "secret": "x" * 16}),
        ("GET", "/v1/accounts/a1", None),
        ("POST", "/v1/plans", {"id": "evil", "currency": "EUR"}),
    ]
    for method, path, payload in attempts:
        response = await fresh.request(method, path, json=payload)
        status, body = await answer(response)
        assert (status, body["error"]["reason"]) == (401, "unauthorized"), (path, body)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        # The refusal says how to get in.
        assert "bootstrap admin token" in body["error"]["message"]
    # A made-up token, or a header of another kind, fares no better.
    for header in ("Bearer ocs_" + "x" * 43, "Bearer " + "y" * 20, "Basic YTpi"):
        response = await fresh.post(
            "/v1/accounts/a1/topups", json={"amount": "1000.00"}, headers={"Authorization": header}
        )
        assert (await answer(response))[0] == 401
    assert (await pg_counts(services.pool), await redis_state(services.redis)) == before
    assert (await services.accounts.show("a1")).balance == 0
    # The probes stay open.
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert (await fresh.get(path)).status == 200, path


async def test_the_bootstrap_token_is_made_once_stored_as_a_digest_and_opens_the_api(
    services: Services, fresh: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await api_tokens.ensure_bootstrap_admin_token(services.pool, services.settings)
    assert token is not None and token.startswith("ocs_")
    # Once: a second start (or worker) has nothing to show.
    assert await api_tokens.ensure_bootstrap_admin_token(services.pool, services.settings) is None
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT name, role, digest FROM api_tokens")
    assert [(r["name"], r["role"]) for r in rows] == [("bootstrap", "admin")]
    assert bytes(rows[0]["digest"]) == hashlib.sha256(token.encode()).digest()
    assert token not in caplog.text

    response = await fresh.post(
        "/v1/accounts/a1/topups", json={"amount": "1000.00"}, headers=bearer(token)
    )
    status, body = await answer(response)
    assert (status, body["balance"]) == (201, "1000.000000"), body
    response = await fresh.post(
        "/v1/nas-clients",
        json={"name": "pbx", "address": "192.0.2.10", "secret": "s" * 16},
        headers=bearer(token),
    )
    assert response.status == 201


async def test_a_bootstrap_token_from_the_environment_is_used_and_never_shown(
    services: Services, fresh: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    chosen = "my-own-" + secrets.token_hex(12)  # any 16+ printable characters, no ocs_
    settings = load_settings(
        environ={
            "OCS_ADMIN_BOOTSTRAP_TOKEN": chosen,
            "OCS_REDIS_URL": services.settings.redis_url or "",
            "OCS_DATABASE_URL": services.settings.database_url or "",
        }
    )
    assert chosen not in repr(settings)
    # Nothing to show: the operator knows it already.
    assert await api_tokens.ensure_bootstrap_admin_token(services.pool, settings) is None
    assert await api_tokens.ensure_bootstrap_admin_token(services.pool, settings) is None
    assert [(t.name, t.role) for t in await api_tokens.listed(services.pool)] == [
        ("bootstrap", "admin")
    ]
    response = await fresh.get("/v1/accounts/a1", headers=bearer(chosen))
    assert (await answer(response))[0] == 200
    assert chosen not in caplog.text


def test_ocs_serve_writes_the_bootstrap_token_to_a_private_file_never_to_its_logs(
    settings: Settings, tmp_path: Path
) -> None:
    """stderr is the journal or `docker logs` under the shipped unit and compose file:
    the token printed there was kept with the logs. The file is the token's only copy."""
    asyncio.run(reset_state(settings.redis_url or "", settings.database_url or ""))
    server = ServeProcess(
        http_port=free_port(),
        auth_port=free_port(socket.SOCK_DGRAM),
        acct_port=free_port(socket.SOCK_DGRAM),
        env=serve_env(settings, {"OCS_ADMIN_TOKEN_REQUIRED": "true"}),
        data_dir=tmp_path / "var",
        log=tmp_path / "serve.log",
    )
    try:
        server.wait_ready()
        kept = tmp_path / "var" / "bootstrap-admin-token"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        token = kept.read_text().strip()
        assert token.startswith("ocs_")
        logged = (tmp_path / "serve.log").read_text()
        assert token not in logged
        assert f"bootstrap admin token written to {kept}" in logged
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/v1/nas-clients", headers=bearer(token)
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as reply:
            assert reply.status == 200
    finally:
        server.stop()


class Terminal(io.StringIO):
    """stderr when ocs runs in a terminal."""

    def isatty(self) -> bool:
        return True


async def test_a_terminal_also_sees_the_token_and_an_unwritable_file_stores_none(
    services: Services, tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    unwritable = replace(services.settings, data_dir=blocked / "var")
    quiet = Terminal()
    await bootstrap_token.hand_over(services.pool, unwritable, quiet)
    # No token that nobody can read: none stored, the next start makes one.
    assert (quiet.getvalue(), await api_tokens.listed(services.pool)) == ("", [])

    settings = replace(services.settings, data_dir=tmp_path / "var")
    terminal = Terminal()
    await bootstrap_token.hand_over(services.pool, settings, terminal)
    token = (tmp_path / "var" / "bootstrap-admin-token").read_text().strip()
    assert f"(only its digest is kept): {token}" in terminal.getvalue()
    assert await api_tokens.role_of(services.pool, token) == "admin"
    # Once: a second start has nothing to write or say.
    again = Terminal()
    await bootstrap_token.hand_over(services.pool, settings, again)
    assert again.getvalue() == ""
    assert (tmp_path / "var" / "bootstrap-admin-token").read_text().strip() == token


async def test_two_processes_bootstrapping_at_once_make_one_token(
    services: Services, settings: Settings
) -> None:
    url = settings.database_url or ""
    pools = [await asyncpg.create_pool(url, min_size=1, max_size=2) for _ in range(2)]
    try:
        for _ in range(5):
            async with services.pool.acquire() as conn:
                await conn.execute("TRUNCATE api_tokens")
            made = await asyncio.gather(
                *(api_tokens.ensure_bootstrap_admin_token(pool, settings) for pool in pools)
            )
            assert sum(token is not None for token in made) == 1, made
            assert len(await api_tokens.listed(services.pool)) == 1
    finally:
        for pool in pools:
            await pool.close()


async def test_ocs_demo_prints_the_token_once_and_its_commands_use_it(
    services: Services, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    demo_settings = replace(settings, radius_enabled=False, run_janitor=False)
    stopping = asyncio.Event()
    task = asyncio.create_task(run_demo(demo_settings, stopping))
    printed = ""

    async def instructions_printed() -> bool:
        nonlocal printed
        printed += capsys.readouterr().out
        assert not task.done(), task.exception() if task.done() else None
        return "/healthz" in printed

    try:
        await eventually(instructions_printed, within=60, what="the demo's instructions")
        shown = re.findall(r"Admin API token \(shown once[^:]*\): (ocs_\S+)", printed)
        assert len(shown) == 1, printed
        token = shown[0]
        lines = [line.strip() for line in printed.splitlines() if line.strip().startswith("curl")]
        admin_lines = [line for line in lines if "/v1/accounts/1001" in line]
        assert len(admin_lines) == 2 and all(
            f'-H "Authorization: Bearer {token}"' in line for line in admin_lines
        ), lines
        # The switch's commands need no token: the demo's curl runs on the loopback.
        assert all("Authorization" not in line for line in lines if "/v1/calls" in line)
        base = re.search(r"http://127\.0\.0\.1:\d+", printed)
        assert base is not None
        async with aiohttp.ClientSession() as session:
            url = f"{base.group(0)}/v1/accounts/1001"
            async with session.get(url, headers=bearer(token)) as response:
                assert (response.status, (await response.json())["balance"]) == (200, "10.000000")
            async with session.get(url) as response:
                assert response.status == 401
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=30)


async def test_a_later_demo_run_replaces_its_own_token_and_names_an_env_token(
    services: Services, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, shown = await demo_admin_token(services.pool, settings)
    assert shown and first.startswith("ocs_")
    # A second run: the first token is kept only as a digest; the demo makes its own.
    second, shown = await demo_admin_token(services.pool, settings)
    third, _ = await demo_admin_token(services.pool, settings)
    assert shown and len({first, second, third}) == 3
    assert await api_tokens.role_of(services.pool, first) == "admin"  # the bootstrap one
    assert await api_tokens.role_of(services.pool, second) is None  # replaced by the third
    assert await api_tokens.role_of(services.pool, third) == "admin"
    names = [t.name for t in await api_tokens.listed(services.pool)]
    assert names == ["bootstrap", DEMO_TOKEN_NAME]

    # With a token of their own in the environment, the commands name the variable.
    await reset_state(settings.redis_url or "", settings.database_url or "")
    chosen = "chosen-" + secrets.token_hex(12)
    monkeypatch.setenv("OCS_ADMIN_BOOTSTRAP_TOKEN", chosen)
    own = replace(settings, admin_bootstrap_token=chosen)
    assert await demo_admin_token(services.pool, own) == ("$OCS_ADMIN_BOOTSTRAP_TOKEN", False)
    assert await demo_admin_token(services.pool, own) == ("$OCS_ADMIN_BOOTSTRAP_TOKEN", False)
    assert await api_tokens.role_of(services.pool, chosen) == "admin"


# --- the call lifecycle and PIN queries -------------------------------------------------


async def test_calls_are_refused_from_outside_switch_networks_and_say_how_to_allow_them(
    services: Services,
) -> None:
    await add_plan(services, max_lines=5)
    await services.accounts.create(
        AccountSpec("a1", plan_id="retail", opening_balance=10_000_000, max_lines=5)
    )
    before = await redis_state(services.redis)
    # The test client is on 127.0.0.1; a switch network without it stands for elsewhere.
    client = await started(services, switch_networks=("10.0.0.0/8",))
    try:
        for headers in ({}, {"X-Forwarded-For": "10.1.2.3"}):  # a header proves nothing
            response = await client.post(
                "/v1/calls", json={**CALL, "call_id": "c-out"}, headers=headers
            )
            status, body = await answer(response)
            assert (status, body["error"]["reason"]) == (401, "unauthorized"), body
            message = body["error"]["message"]
            assert "127.0.0.1" in message and "switch_networks" in message
            assert "--role switch" in message
        for method, path, payload in (
            ("POST", "/v1/calls/c-out/stop", {"duration": 45}),
            ("GET", "/v1/pins/12345678", None),
            ("GET", "/v1/pins/12345678/time", None),
            ("POST", "/v1/pins/lookup", {"pin": "12345678"}),
            ("POST", "/v1/pins/time", {"pin": "12345678", "destination": "4420"}),
        ):
            response = await client.request(method, path, json=payload)
            assert (await answer(response))[0] == 401, path
        assert await redis_state(services.redis) == before  # nothing reserved
        assert (await services.accounts.show("a1")).lines_in_use == 0

        # A reader's token is the wrong key: 403, and the message still says how.
        viewer = await api_tokens.create(services.pool, "report", "viewer")
        response = await client.post("/v1/calls", json=CALL, headers=bearer(viewer))
        status, body = await answer(response)
        assert (status, body["error"]["reason"]) == (403, "forbidden")
        assert "switch_networks" in body["error"]["message"]
        # A switch's token (or an admin's) lets the call in from anywhere.
        switch = await api_tokens.create(services.pool, "kamailio-1", "switch")
        admin = await api_tokens.create(services.pool, "noc", "admin")
        for n, token in enumerate((switch, admin)):
            response = await client.post(
                "/v1/calls", json={**CALL, "call_id": f"c-tok-{n}"}, headers=bearer(token)
            )
            assert response.status == 201, await response.text()
            response = await client.post(
                f"/v1/calls/c-tok-{n}/stop", json={"duration": 45}, headers=bearer(token)
            )
            assert (await answer(response))[1]["cost"] == "0.198000"
        # The probes answer anyone.
        for path in ("/healthz", "/metrics", "/openapi.json"):
            assert (await client.get(path)).status == 200, path
    finally:
        await client.close()


async def test_calls_from_inside_switch_networks_or_with_switch_open_need_no_token(
    services: Services,
) -> None:
    await add_plan(services, max_lines=5)
    await services.accounts.create(
        AccountSpec("a1", plan_id="retail", opening_balance=10_000_000, max_lines=5)
    )
    cases = [
        ("loopback", {}),  # the default: 127.0.0.0/8 and ::1
        ("listed", {"switch_networks": ("10.0.0.0/8", "127.0.0.1/32")}),
        ("open", {"switch_networks": ("10.0.0.0/8",), "switch_open": True}),
    ]
    for name, changes in cases:
        client = await started(services, **changes)
        try:
            response = await client.post("/v1/calls", json={**CALL, "call_id": f"c-{name}"})
            assert response.status == 201, (name, await response.text())
            response = await client.post(f"/v1/calls/c-{name}/stop", json={"duration": 45})
            assert (await answer(response))[1]["cost"] == "0.198000", name
            # A PIN query gets as far as the lookup: no such card.
            response = await client.get("/v1/pins/12345678")
            assert response.status == 404, (name, await response.text())
            # (Its own caller: both forms' wrong PINs count against one limit.)
            response = await client.post(
                "/v1/pins/lookup", json={"pin": "12345678", "caller": f"ivr-{name}"}
            )
            assert response.status == 404, (name, await response.text())
            # None of this opens the admin API.
            assert (await client.get("/v1/accounts/a1")).status == 401, name
        finally:
            await client.close()
    # switch_token_required asks even the loopback for a token.
    client = await started(services, switch_token_required=True)
    try:
        response = await client.post("/v1/calls", json={**CALL, "call_id": "c-required"})
        status, body = await answer(response)
        assert (status, body["error"]["reason"]) == (401, "unauthorized")
        assert "switch_token_required" in body["error"]["message"]
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 peer on a dual-stack listener
        ("fe80::1%eth0", False),
        ("10.1.2.3", False),
        ("", False),
        (None, False),  # a Unix socket
        ("not-an-address", False),
    ],
)
def test_source_addresses_are_matched_like_nas_clients(remote: str | None, allowed: bool) -> None:
    import ipaddress

    networks = [ipaddress.ip_network(n) for n in Settings().switch_networks]
    assert source_allowed(remote, networks) is allowed
