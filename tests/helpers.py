"""Helpers several test files share: requests to the admin API, accounts, RADIUS over
FreeRADIUS's ``radclient``, and free ports for child processes.

Not a test module. Fixtures live in tests/conftest.py; these are plain functions a
test imports. Where the copies they replace differed, the difference is a
parameter here, so each test still checks what it checked.
"""

import socket
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from tests.conftest import RADIUS_SECRET, RunningApp
from tests.radclient import RadiusReply, radclient

# RADIUS attributes as radclient takes them: (name, value) in order.
Pairs = list[tuple[str, str]]
# The replies an Access-Request must get when the server answers at all.
ANSWERED = ("Access-Accept", "Access-Reject")


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 nothing listens on right now (TCP, or UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
