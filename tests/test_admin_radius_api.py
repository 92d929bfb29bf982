"""Admin API for RADIUS: NAS clients reach running servers (also one added while a server
starts, after PostgreSQL dropped the connection they are followed on, or a reload failed);
call progress over HTTP."""

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pyrad import packet as rp

import ocs.radius.server as radius_server
from ocs import server as ocs_server
from ocs.config import RadiusClientConfig, Settings, with_overrides
from ocs.http.app import create_app
from ocs.radius.clients import ClientTable, add_client, load_client_table
from ocs.radius.dictionary import radius_dictionary
from ocs.radius.server import RadiusServer
from ocs.services import Services
from tests.conftest import RunningApp, add_plan, bearer, eventually, reset_state
from tests.radius_udp import sample


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if not self.reply.done():
            self.reply.set_result(data)


async def _ask(port: int, source: str, secret: bytes, user: str) -> bytes | None:
    """One Access-Request from ``source``; the raw reply, or None after a second."""
    request = rp.AuthPacket(code=rp.AccessRequest, secret=secret, dict=radius_dictionary())
    request["User-Name"] = user
    request.add_message_authenticator()
    loop = asyncio.get_running_loop()
    transport, receiver = await loop.create_datagram_endpoint(
        _Receiver, local_addr=(source, 0), remote_addr=("127.0.0.1", port)
    )
    try:
        transport.sendto(request.RequestPacket())
        async with asyncio.timeout(1.0):
            return await receiver.reply
    except TimeoutError:
        return None
    finally:
        transport.close()


async def test_a_nas_added_through_the_api_is_answered_without_restart(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "card7", "plan": "retail", "balance": "3.50"})
    settings = with_overrides(
        app.services.settings, radius_host="127.0.0.1", radius_auth_port=0, radius_acct_port=0
    )
    server = RadiusServer(app.services.calls, settings, ClientTable([]))
    await server.start()
    await server.watch_clients(app.services.pool)
    try:
        assert await _ask(server.auth_port, "127.0.0.2", b"gw-secret", "card7") is None
        status, body = await app.post(
            "/v1/nas-clients", {"name": "gw-2", "address": "127.0.0.2", "secret": "gw-secret"}
        )
        assert status == 201 and "secret" not in body
        assert body["address"] == "127.0.0.2/32"

        async def known() -> bool:
            return server.clients.lookup("127.0.0.2") is not None

        await eventually(known, what="the RADIUS client table to reload")
        raw = await _ask(server.auth_port, "127.0.0.2", b"gw-secret", "card7")
        assert raw is not None
        reply = rp.AuthPacket(packet=raw, secret=b"gw-secret", dict=radius_dictionary())
        assert reply.code == rp.AccessAccept
        assert reply["h323-credit-amount"] == ["h323-credit-amount=3.500000"]
        # Another source is still a stranger.
        assert await _ask(server.auth_port, "127.0.0.3", b"gw-secret", "card7") is None
        _, listed = await app.get("/v1/nas-clients")
        assert listed["clients"] == [
            {
                "name": "gw-2",
                "address": "127.0.0.2/32",
                "require_message_authenticator": True,
                "coa_port": None,
                "translation": None,
            }
        ]
    finally:
        server.close_listeners()
        await server.stop_watching()


async def test_a_nas_the_config_file_has_is_refused_and_an_api_one_can_be_removed(
    app: RunningApp,
) -> None:
    """A network the configuration file has was answered 201 and stored, then ignored
    (the file's entry wins); and nothing removed a NAS added through the API."""
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "card7", "plan": "retail", "balance": "3.50"})
    configured = RadiusClientConfig("core", "127.0.0.0/30", "file-secret")
    settings = with_overrides(
        app.services.settings,
        radius_host="127.0.0.1",
        radius_auth_port=0,
        radius_acct_port=0,
        radius_clients=(configured,),
    )
    services = replace(app.services, settings=settings)
    client = TestClient(TestServer(create_app(services)), headers=bearer(app.admin_token))
    await client.start_server()
    server = RadiusServer(
        services.calls, settings, await load_client_table(services.pool, settings)
    )
    await server.start()
    await server.watch_clients(services.pool)
    try:
        for address in ("127.0.0.0/30", "127.0.0.1/30"):
            response = await client.post(
                "/v1/nas-clients", json={"name": "gw", "address": address, "secret": "mine"}
            )
            body = await response.json()
            assert (response.status, body["error"]["reason"], body["error"]["field"]) == (
                409,
                "set_in_config",
                "address",
            ), body
        assert (await (await client.get("/v1/nas-clients")).json())["clients"] == []

        # A NAS of its own (more specific than the file's network), then removed.
        response = await client.post(
            "/v1/nas-clients", json={"name": "gw-2", "address": "127.0.0.2", "secret": "gw"}
        )
        assert response.status == 201, await response.text()

        async def answered_as(secret: bytes) -> bool:
            return await _ask(server.auth_port, "127.0.0.2", secret, "card7") is not None

        await eventually(lambda: answered_as(b"gw"), what="the API's NAS client")
        response = await client.delete("/v1/nas-clients/gw-2")
        assert (response.status, await response.json()) == (200, {"name": "gw-2"})
        # Its address belongs to the file's network again.
        await eventually(lambda: answered_as(b"file-secret"), what="the NAS client removed")
        assert await _ask(server.auth_port, "127.0.0.2", b"gw", "card7") is None

        for name, status, reason in (
            ("gw-2", 404, "not_found"),
            ("core", 409, "set_in_config"),
        ):
            response = await client.delete(f"/v1/nas-clients/{name}")
            body = await response.json()
            assert (response.status, body["error"]["reason"], body["error"]["field"]) == (
                status,
                reason,
                "name",
            ), body
    finally:
        server.close_listeners()
        await server.stop_watching()
        await client.close()


async def test_a_nas_added_after_the_listen_connection_dropped_is_answered(
    app: RunningApp,
) -> None:
    """PostgreSQL ends the connection the client table is followed on (a restart, a
    failover, pg_terminate_backend): the server takes another, reloads the table and
    follows later changes; the reconnection is counted."""
    server = RadiusServer(app.services.calls, _settings(app), ClientTable([]))
    await server.start()
    await server.watch_clients(app.services.pool)
    try:
        listener = server.client_listener
        assert listener is not None and listener.connection is not None
        lost = listener.connection
        reconnects = sample("ocs_pg_listener_reconnects_total", listener="nas_clients")
        async with app.services.pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", lost.get_server_pid())

        async def replaced() -> bool:
            return listener.connection not in (None, lost)

        await eventually(replaced, what="a new LISTEN connection for the client table")
        assert sample("ocs_pg_listener_reconnects_total", listener="nas_clients") == (
            reconnects + 1
        )
        status, _ = await app.post(
            "/v1/nas-clients", {"name": "gw-4", "address": "127.0.0.4", "secret": "gw-secret"}
        )
        assert status == 201

        async def known() -> bool:
            return server.clients.lookup("127.0.0.4") is not None

        await eventually(known, what="the client table to reload")
    finally:
        await server.drain(5)
        await server.stop_watching()


async def test_a_failed_client_table_reload_is_tried_again(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload of the client table that fails (PostgreSQL away a moment) is tried again
    on a timer: the new NAS is not left unanswered until some other change comes."""
    server = RadiusServer(app.services.calls, _settings(app), ClientTable([]))
    server.client_retry_s = 0.05
    await server.start()
    await server.watch_clients(app.services.pool)
    real = radius_server.load_client_table
    tries = 0

    async def flaky(*args: Any, **kwargs: Any) -> ClientTable:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionResetError("connection was closed in the middle of operation")
        return await real(*args, **kwargs)

    monkeypatch.setattr(radius_server, "load_client_table", flaky)
    try:
        status, _ = await app.post(
            "/v1/nas-clients", {"name": "gw-5", "address": "127.0.0.5", "secret": "gw-secret"}
        )
        assert status == 201

        async def known() -> bool:
            return server.clients.lookup("127.0.0.5") is not None

        await eventually(known, what="the failed reload to be tried again")
        assert tries >= 2
    finally:
        await server.drain(5)
        await server.stop_watching()


async def test_a_nas_added_while_the_server_starts_is_answered(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator adds a NAS while `ocs serve` starts: after the server read the client
    table, before it began to LISTEN for changes. Its requests were dropped until some
    later change reloaded the table; now they are answered."""
    await reset_state(settings.redis_url or "", settings.database_url or "")
    serving = with_overrides(
        settings,
        radius_enabled=True,
        radius_host="127.0.0.1",
        radius_auth_port=0,
        radius_acct_port=0,
        shutdown_timeout=5.0,
    )
    read_at_start = ocs_server.load_client_table

    async def read_then_a_nas_added(pool: Any, settings: Settings) -> ClientTable:
        table = await read_at_start(pool, settings)
        # Committed (and notified) in the window between the read and the LISTEN.
        await add_client(pool, "gw-late", "127.0.0.5", "late-secret", True)
        return table

    monkeypatch.setattr(ocs_server, "load_client_table", read_then_a_nas_added)
    stopping = asyncio.Event()
    replies: list[bytes] = []

    async def on_ready(_: Services, where: ocs_server.Listening) -> None:
        assert where.radius_auth_port is not None
        port = where.radius_auth_port

        async def answered() -> bool:
            raw = await _ask(port, "127.0.0.5", b"late-secret", "nobody")
            if raw is not None:
                replies.append(raw)
            return raw is not None

        try:
            await eventually(answered, what="the NAS added during start-up to be answered")
        finally:
            stopping.set()

    await asyncio.wait_for(ocs_server.serve(serving, on_ready=on_ready, stopping=stopping), 60)
    reply = rp.AuthPacket(packet=replies[0], secret=b"late-secret", dict=radius_dictionary())
    # An answer (the account is unknown: rejected), where the NAS's requests were dropped.
    assert reply.code == rp.AccessReject


def _settings(app: RunningApp) -> Settings:
    """The app's settings with RADIUS on free ports of 127.0.0.1."""
    return with_overrides(
        app.services.settings, radius_host="127.0.0.1", radius_auth_port=0, radius_acct_port=0
    )


async def test_bad_nas_client_input_names_the_field(app: RunningApp) -> None:
    status, body = await app.post(
        "/v1/nas-clients", {"name": "x", "address": "999.1.1.1", "secret": "s"}
    )
    assert status == 400 and body["error"]["field"] == "address"
    status, body = await app.post("/v1/nas-clients", {"name": "x", "address": "10.0.0.0/8"})
    assert status == 400 and body["error"]["field"] == "secret"


async def test_start_and_update_over_http_then_stop(app: RunningApp) -> None:
    await add_plan(app.services)
    await app.post("/v1/accounts", {"id": "p1", "plan": "retail", "balance": "2.00"})
    await app.post("/v1/calls", {"account": "p1", "destination": "447700900123", "call_id": "prog"})
    status, started = await app.post("/v1/calls/prog/start", {})
    assert status == 200 and started["started_at"] > 0
    status, progress = await app.post("/v1/calls/prog/update", {"used": 40})
    assert status == 200 and progress["used"] == 40
    # Progress is only recorded (debit_on_interim is off by default).
    assert progress["debited"] == "0.000000"
    status, stopped = await app.post("/v1/calls/prog/stop", {"duration": 45})
    assert stopped["cost"] == "0.198000"
    status, body = await app.post("/v1/calls/prog/update", {"used": 50})
    assert status == 409 and body["error"]["reason"] == "call_already_stopped"


async def test_password_and_expiry_are_accepted_on_account_creation(app: RunningApp) -> None:
    await add_plan(app.services)
    status, body = await app.post(
        "/v1/accounts",
        {
            "id": "card9",
            "plan": "retail",
            "balance": "1.00",
            "password": "4321",
            "expires_at": "2020-01-01T00:00:00Z",
        },
    )
    assert status == 201, body
    status, body = await app.post("/v1/calls", {"account": "card9", "destination": "447700900123"})
    assert (status, body["error"]["reason"]) == (403, "account_expired")
    status, body = await app.post(
        "/v1/accounts", {"id": "card10", "plan": "retail", "expires_at": "2020-01-01T00:00:00"}
    )
    assert status == 400 and body["error"]["field"] == "expires_at"
