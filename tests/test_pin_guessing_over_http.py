"""Whom an IVR's wrong PINs over HTTP count against (decision 0042, addendum 2026-12-07).

A query without ``caller`` counts against the IVR only (its address), under the
NAS limit, as a RADIUS request without Calling-Station-Id does: not against its
address as if it were one caller, which let five typos lock every card holder of
the IVR out.
"""

import csv
import io
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ocs.balances.pin_guard import PinGuard
from ocs.http.app import create_app
from ocs.services import Services
from tests.conftest import RunningApp, add_plan, bearer

PIN_LENGTH = 12

# Starts a client of an app with some settings changed.
Guarded = Callable[..., Awaitable[TestClient]]


async def card_pins(app: RunningApp, batch: str) -> list[str]:
    """A batch of 3 cards worth 2.00 each: their PINs."""
    response = await app.client.post(
        "/v1/pin-batches",
        json={"plan": "retail", "batch": batch, "count": 3, "length": PIN_LENGTH, "value": "2.00"},
    )
    text = await response.text()
    assert response.status == 201, text
    return [row["pin"] for row in csv.DictReader(io.StringIO(text))]


def wrong_pin(pins: list[str]) -> str:
    """A PIN no card of ``pins`` has."""
    while True:
        guess = f"{secrets.randbelow(10**PIN_LENGTH):0{PIN_LENGTH}d}"
        if guess not in pins:
            return guess


async def blocked(client: TestClient, scope: str) -> float:
    """``ocs_pin_guesses_blocked_total`` of ``scope`` as /metrics tells it."""
    response = await client.get("/metrics")
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            if sample.name == "ocs_pin_guesses_blocked_total" and sample.labels == {"scope": scope}:
                return float(sample.value)
    return 0.0


@pytest.fixture
async def guarded(services: Services) -> AsyncIterator[Guarded]:
    """Start an app (and its PIN guard) with settings changed; its client sends no token."""
    clients: list[TestClient] = []

    async def start(**changes: Any) -> TestClient:
        settings = replace(services.settings, **changes)
        changed = replace(
            services, settings=settings, pin_guard=PinGuard(services.pipeline, settings)
        )
        client = TestClient(TestServer(create_app(changed), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.close()


async def ask(
    client: TestClient, body: dict[str, str], *, token: str | None = None, source: str = ""
) -> tuple[int, dict]:
    """POST /v1/pins/lookup, with ``token`` when given, from the address ``source``
    (any of 127.0.0.0/8) when given: (status, JSON body)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            client.make_url("/v1/pins/lookup"),
            json=body,
            headers=bearer(token) if token else None,
        ) as response,
    ):
        return response.status, await response.json()


async def test_typos_without_a_caller_lock_out_no_card_holder_of_the_ivr(
    app: RunningApp, guarded: Guarded
) -> None:
    await add_plan(app.services)
    pins = await card_pins(app, "typo")
    good = pins[0]
    client = await guarded(pin_guess_limit_caller=5, pin_guess_limit_nas=12)
    # One more typo than a caller may make, none naming its caller: they are the IVR's.
    for _ in range(6):
        status, body = await ask(client, {"pin": wrong_pin(pins)})
        assert (status, body["error"]["reason"]) == (404, "account_not_found"), body
    # The next card holder of the IVR still gets in, in every form.
    status, body = await ask(client, {"pin": good})
    assert (status, body["balance"]) == (200, "2.000000"), body
    response = await client.get(f"/v1/pins/{good}")
    assert response.status == 200, await response.text()
    response = await client.post("/v1/pins/time", json={"pin": good, "destination": "4930901820"})
    assert response.status == 200, await response.text()
    # A caller that names itself is still held to its own limit.
    for _ in range(5):
        status, body = await ask(client, {"pin": wrong_pin(pins), "caller": "4930555000"})
        assert status == 404, body
    status, body = await ask(client, {"pin": good, "caller": "4930555000"})
    assert (status, body["error"]["reason"]) == (403, "pin_blocked"), body
    # The IVR's limit counts every wrong PIN, with a caller or not: 6 + 5 + 1 = 12.
    status, body = await ask(client, {"pin": wrong_pin(pins)})
    assert status == 404, body
    before = await blocked(client, "nas")
    status, body = await ask(client, {"pin": good})
    assert (status, body["error"]["reason"]) == (403, "pin_blocked"), body
    assert await blocked(client, "nas") - before == 1
