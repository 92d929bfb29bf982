"""Webhooks into the operator's own network (decision 0029, addendum of 2026-12-07).

Any host was taken: 127.0.0.1, ::1, the cloud's metadata service, localhost, RFC 1918
networks; and a failed attempt's error, shown to viewer tokens by ``GET /v1/events``,
told an open port from a closed one: a blind internal port scanner. With
``webhook_allow_private`` off (the default, and these tests' setting) such an address
is refused when the webhook is added (400 naming ``url``), and at each delivery after
the host's look-up: the attempt is dead at once with a clear reason, and the receiver
gets nothing. With the setting on, the same webhook is delivered.
"""

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ocs.config import Settings, with_overrides
from ocs.events.delivery import deliver_pending
from tests.billing_helpers import billed_plan, customer
from tests.conftest import RunningApp
from tests.helpers import ocs_cli
from tests.ports import free_port

REFUSAL = (
    "refused: the webhook's host is a loopback address, inside the network"
    " (webhook_allow_private is off)"
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings with ``webhook_allow_private`` at its default, off."""
    assert Settings().webhook_allow_private is False
    return with_overrides(settings, webhook_allow_private=False)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://[64:ff9b::7f00:1]/hook", "loopback"),
        ("http://[2002:a01:203::1]/hook", "private"),
        ("http://2130706433/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.1.2.3/hook", "private"),
        ("http://172.16.0.9/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://[fd00::1]/hook", "private"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0:8080/hook", "unspecified"),
        ("http://[::127.0.0.1]/hook", "loopback"),  # IPv4-compatible (review)
        ("http://[64:ff9b:1::a00:1]/hook", "private"),  # NAT64's local-use prefix
    ],
)
async def test_an_address_inside_the_network_is_refused_when_added(
    app: RunningApp, url: str, kind: str
) -> None:
    status, body = await app.post("/v1/webhooks", {"url": url})
    assert (status, body["error"]["field"]) == (400, "url"), body
    assert body["error"]["message"] == (
        f"url: a {kind} address, inside the network: refused unless webhook_allow_private is on"
    )
    assert "/hook" not in body["error"]["message"]
    assert (await app.get("/v1/webhooks"))[1]["webhooks"] == []


async def test_public_addresses_and_host_names_are_taken_and_the_cli_refuses_too(
    app: RunningApp, tmp_path: Path
) -> None:
    for url in ("https://8.8.8.8/hook", "https://hooks.example.com/ocs", "http://[2606:4700::1]/"):
        status, body = await app.post("/v1/webhooks", {"url": url})
        assert status == 201, body
    code, out, err = await ocs_cli(
        app.services.settings, tmp_path, "webhooks", "add", "http://127.0.0.1:8080/hook"
    )
    assert code == 2, (out, err)
    assert "webhook_allow_private" in err
    assert len((await app.get("/v1/webhooks"))[1]["webhooks"]) == 3


async def test_a_name_or_address_inside_is_refused_at_delivery_dead_at_once(
    app: RunningApp,
) -> None:
    services = app.services
    taken: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        taken.append(request.headers["webhook-id"])
        return web.Response(status=200)

    port = free_port()
    runner = web.AppRunner(web.Application())
    runner.app.router.add_post("/hook", handle)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await billed_plan(services)
    try:
        for account, host in (("1001", "localhost"), ("1002", "127.0.0.1")):
            await refused_then_delivered_when_allowed(app, f"http://{host}:{port}/hook", account)
            assert len(taken) == 1, host
            taken.clear()
            async with services.pool.acquire() as conn:
                await conn.execute("DELETE FROM webhooks")
    finally:
        await runner.cleanup()


async def refused_then_delivered_when_allowed(app: RunningApp, url: str, account: str) -> None:
    """A webhook pointing at ``url`` (stored as one added before the check, or with
    the setting on): its delivery dead at once, then delivered once allowed."""
    services = app.services
    status, made = await app.post(
        "/v1/webhooks", {"url": "https://hooks.example.com/ocs", "kinds": ["subscription.created"]}
    )
    assert status == 201, made
    async with services.pool.acquire() as conn:
        await conn.execute("UPDATE webhooks SET url = $1", url)
    # The change announces subscription.created: one delivery, to this webhook.
    await customer(services, account, None, date(2026, 3, 1))

    report = await deliver_pending(services.pool, strict(services.settings))
    assert (report.attempted, report.dead, report.retrying) == (1, 1, 0)
    status, listed = await app.get("/v1/events?state=dead")
    assert status == 200
    [event] = listed["events"]
    [delivery] = event["deliveries"]
    assert (delivery["attempts"], delivery["last_error"]) == (1, REFUSAL)
    # Nothing is retried by itself; allowed and replayed, it goes.
    assert (await deliver_pending(services.pool, strict(services.settings))).attempted == 0
    status, replayed = await app.post(f"/v1/events/{event['id']}/replay", {})
    assert status == 200, replayed
    allowed = with_overrides(strict(services.settings), webhook_allow_private=True)
    assert (await deliver_pending(services.pool, allowed)).delivered == 1


def strict(settings: Settings, **changes: Any) -> Settings:
    """Settings with many attempts and no backoff: a refused delivery that were retried
    would be retried within the same pass."""
    base = {"webhook_backoff": 0.0, "webhook_max_attempts": 5, "webhook_timeout": 2.0}
    return with_overrides(settings, **{**base, **changes})
