"""Admin API for RADIUS: NAS clients reach running servers; call progress over HTTP."""

import asyncio

from pyrad import packet as rp

from ocs.config import with_overrides
from ocs.radius.clients import ClientTable
from ocs.radius.dictionary import radius_dictionary
from ocs.radius.server import RadiusServer
from tests.conftest import RunningApp, add_plan, eventually


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
