"""Helpers several test files share: requests to the admin API, accounts, RADIUS over
FreeRADIUS's ``radclient`` (also to the ``rig`` fixture's server), and the ``ocs`` CLI
as a child process. Free ports are in tests/ports.py; topic helpers in
tests/billing_helpers.py, tests/deck_helpers.py, tests/embedded_helpers.py and
tests/outage_helpers.py.

Not a test module. Fixtures live in tests/conftest.py; these are plain functions a
test imports. Where the copies they replace differed, the difference is a
parameter here, so each test still checks what it checked.
"""

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ocs.balances.pin_guard import PinGuard
from ocs.charging.lifecycle import CallService
from ocs.config import RadiusClientConfig, Settings, with_overrides
from ocs.radius.clients import ClientTable, clients_from_settings
from ocs.radius.server import RadiusServer
from tests.conftest import RADIUS_SECRET, CutRig, RunningApp
from tests.nas_emulator import NAS_SECRET
from tests.radclient import RadiusReply, radclient

# RADIUS attributes as radclient takes them: (name, value) in order.
Pairs = list[tuple[str, str]]
# The replies an Access-Request must get when the server answers at all.
ANSWERED = ("Access-Accept", "Access-Reject")


# -- the admin API ----------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A request body sent as is (not JSON-encoded by the test), as JSON unless
    ``content_type`` says otherwise."""

    text: str | bytes
    content_type: str = "application/json"


async def send(app: RunningApp, method: str, path: str, payload: object = None) -> tuple[int, Any]:
    """Any request with the admin token: ``payload`` as JSON (``Raw``: as is; None: no
    body). The answer must be JSON: (status, body)."""
    if payload is None:
        response = await app.client.request(method, path)
    elif isinstance(payload, Raw):
        response = await app.client.request(
            method, path, data=payload.text, headers={"Content-Type": payload.content_type}
        )
    else:
        response = await app.client.request(method, path, json=payload)
    assert response.content_type == "application/json", await response.text()
    return response.status, await response.json()


async def new_account(
    app: RunningApp,
    account_id: str,
    balance: str | None = "1.00",
    plan: str = "retail",
    **fields: object,
) -> dict[str, Any]:
    """An account created as provisioning does, over the admin API, which must answer
    201: the new account. ``balance=None`` sends none (the API's default)."""
    payload: dict[str, object] = {"id": account_id, "plan": plan, **fields}
    if balance is not None:
        payload["balance"] = balance
    status, body = await app.post("/v1/accounts", payload)
    assert status == 201, body
    return body


# -- RADIUS through radclient -----------------------------------------------------


class RadiusPorts(Protocol):
    """Where a RADIUS server listens: ``RadiusServer`` and conftest's ``RunningRadius``."""

    @property
    def auth_port(self) -> int:
        """The UDP port of Access-Requests."""
        ...

    @property
    def acct_port(self) -> int:
        """The UDP port of Accounting-Requests."""
        ...


async def auth(
    nas: RadiusPorts, pairs: Pairs, port: int | None = None, *, expect: Collection[str] = ()
) -> RadiusReply:
    """An Access-Request to ``nas`` (or ``port``) as a NAS sends it; the reply, whose code
    must be one of ``expect`` when given (``ANSWERED``: any answer, no silence)."""
    reply = await radclient("auth", port or nas.auth_port, RADIUS_SECRET, pairs)
    if expect:
        assert reply.code in expect, reply.output
    return reply


async def acct(nas: RadiusPorts, status: str, pairs: Pairs, port: int | None = None) -> RadiusReply:
    """An Accounting-Request with ``Acct-Status-Type`` ``status``; it must be answered."""
    reply = await radclient(
        "acct", port or nas.acct_port, RADIUS_SECRET, [("Acct-Status-Type", status), *pairs]
    )
    assert reply.code == "Accounting-Response", reply.output
    return reply


def return_code(reply: RadiusReply) -> str | None:
    """The reply's ``h323-return-code`` (why a call was refused), if any."""
    return reply.first("h323-return-code")


async def radius(rig: CutRig, kind: str, pairs: Pairs) -> str | None:
    """A RADIUS request (``kind`` "auth" or "acct") to the ``rig`` fixture's server, signed
    with the emulated NAS's secret: the reply's code (None: no answer)."""
    port = rig.server.auth_port if kind == "auth" else rig.server.acct_port
    reply = await radclient(kind, port, NAS_SECRET, pairs)
    return reply.code


# -- the ocs CLI -------------------------------------------------------------------


def cli_env(settings: Settings | None = None) -> dict[str, str]:
    """The environment of a CLI run: the test's, less every OCS_* variable, but the pepper
    file of ``settings`` (decision 0054) and ``webhook_allow_private``, which have no
    flag."""
    # The CLI is configured by flags only here: no OCS_* variable of the caller leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    if settings is not None and settings.pepper_file is not None:
        env["OCS_PEPPER_FILE"] = str(settings.pepper_file)
    if settings is not None and settings.webhook_allow_private:
        # The tests' receivers listen on 127.0.0.1; a setting with no flag.
        env["OCS_WEBHOOK_ALLOW_PRIVATE"] = "true"
    return env


async def ocs_cli(settings: Settings, cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run ``python -m ocs ARGS`` from ``cwd`` against the session's Redis and PostgreSQL
    (given as flags, the log as text): (exit code, stdout, stderr)."""
    assert settings.redis_url and settings.database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocs",
        *args,
        "--redis-url",
        settings.redis_url,
        "--database-url",
        settings.database_url,
        "--log-format",
        "text",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(settings),
        cwd=cwd,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


# -- calling cards -----------------------------------------------------------------


@asynccontextmanager
async def card_nas(
    app: RunningApp, calls: CallService | None = None, **overrides: Any
) -> AsyncIterator[RadiusServer]:
    """A RADIUS server as ``ocs serve`` wires it: with the PIN guard, trusting 127.0.0.1."""
    services = app.services
    settings = with_overrides(
        services.settings,
        radius_host="127.0.0.1",
        radius_auth_port=0,
        radius_acct_port=0,
        radius_clients=(
            RadiusClientConfig(name="ivr-1", network="127.0.0.1/32", secret=RADIUS_SECRET),
        ),
        **overrides,
    )
    server = RadiusServer(
        calls or services.calls,
        settings,
        ClientTable(clients_from_settings(settings)),
        PinGuard(services.pipeline, settings) if overrides else services.pin_guard,
    )
    await server.start()
    try:
        yield server
    finally:
        server.close_listeners()
        await server.drain(5)
