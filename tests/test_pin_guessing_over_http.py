"""Whom an IVR's wrong PINs over HTTP count against (decision 0042, addendum 2026-12-07).

A query without ``caller`` counts against the IVR only (its address), under the
NAS limit, as a RADIUS request without Calling-Station-Id does: not against its
address as if it were one caller, which let five typos lock every card holder of
the IVR out. Every query let in by an API token counts against that token too, so
that one token spread over many addresses (and inventing a caller id for each
guess) is stopped; an IPv6 address counts by its /64. Behind a reverse proxy named in
``http_trusted_proxies`` an IVR is known by the address the proxy forwarded for; a
client no trusted proxy passed on is known by its own, whatever header it writes.
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

from ocs import api_tokens
from ocs.balances.pin_guard import PinGuard, guess_source
from ocs.errors import OcsError, Reason
from ocs.http.app import create_app
from ocs.http.client_address import ClientAddresses
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
    client: TestClient,
    body: dict[str, str],
    *,
    token: str | None = None,
    source: str = "",
    forwarded_for: str | None = None,
) -> tuple[int, dict]:
    """POST /v1/pins/lookup, with ``token`` when given, from the address ``source``
    (any of 127.0.0.0/8) when given, with ``forwarded_for`` as its X-Forwarded-For
    header (as a proxy would send it) when given: (status, JSON body)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
    headers = bearer(token) if token else {}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(client.make_url("/v1/pins/lookup"), json=body, headers=headers) as response,
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


async def test_one_token_guessing_from_many_addresses_and_callers_is_stopped(
    app: RunningApp, guarded: Guarded
) -> None:
    await add_plan(app.services)
    pins = await card_pins(app, "spread")
    good = pins[0]
    pool = app.services.pool
    guesser = await api_tokens.create(pool, "ivr-guesser", "switch")
    honest = await api_tokens.create(pool, "ivr-honest", "switch")
    client = await guarded(
        switch_token_required=True,
        pin_guess_limit_caller=5,
        pin_guess_limit_nas=100,
        pin_guess_limit_token=6,
    )
    before = await blocked(client, "token")
    # Each guess from another address under another caller id: under every other limit.
    for n in range(6):
        status, body = await ask(
            client,
            {"pin": wrong_pin(pins), "caller": f"49301000{n:02d}"},
            token=guesser,
            source=f"127.0.0.{n + 2}",
        )
        assert (status, body["error"]["reason"]) == (404, "account_not_found"), body
    # The token is blocked, from a fresh address and caller, even with a right PIN...
    status, body = await ask(
        client, {"pin": good, "caller": "4930199999"}, token=guesser, source="127.0.0.20"
    )
    assert (status, body["error"]["reason"]) == (403, "pin_blocked"), body
    assert await blocked(client, "token") - before == 1
    # ...and in the deprecated form too.
    response = await client.get(f"/v1/pins/{good}", headers=bearer(guesser))
    assert response.status == 403, await response.text()
    # Another token, from an address the guesser used, still gets in.
    status, body = await ask(
        client, {"pin": good, "caller": "4930100000"}, token=honest, source="127.0.0.2"
    )
    assert (status, body["balance"]) == (200, "2.000000"), body


@pytest.mark.parametrize(
    ("remote", "source"),
    [
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 peer of a dual-stack listener
        ("192.0.2.7", "192.0.2.7"),
        ("192.0.2.8", "192.0.2.8"),  # IPv4 addresses are not grouped
        ("", None),
        (None, None),
    ],
)
def test_an_http_client_guesses_as_its_ipv6_64(remote: str | None, source: str | None) -> None:
    assert guess_source(remote) == source


async def test_addresses_of_one_ipv6_64_share_the_ivr_limit(services: Services) -> None:
    guard = PinGuard(services.pipeline, replace(services.settings, pin_guess_limit_nas=3))
    # Three wrong PINs, each from another address of one /64 (attempts left counted).
    for address in ("2001:db8:0:7::1", "2001:db8:0:7::2", "2001:db8:0:7:abcd:ef01:2345:6789"):
        await guard.attempt(None, guess_source(address))
    with pytest.raises(OcsError) as refused:
        await guard.attempt(None, guess_source("2001:db8:0:7::99"))
    assert refused.value.reason is Reason.PIN_BLOCKED
    # The next /64 is another site's.
    attempt = await guard.attempt(None, guess_source("2001:db8:0:8::1"))
    await attempt.take_back()


# The test client's address: the reverse proxy every IVR of these tests comes through.
PROXY = "127.0.0.1/32"


async def guessed_wrong(
    client: TestClient, pins: list[str], forwarded_for: list[str | None]
) -> None:
    """One wrong PIN for each entry of ``forwarded_for`` (its header, None: none), each
    answered 404 account_not_found."""
    for header in forwarded_for:
        status, body = await ask(client, {"pin": wrong_pin(pins)}, forwarded_for=header)
        assert (status, body["error"]["reason"]) == (404, "account_not_found"), body


async def refused_blocked(client: TestClient, pin: str, forwarded_for: str | None = None) -> None:
    """``pin`` (a right one) is refused 403 pin_blocked for this client."""
    status, body = await ask(client, {"pin": pin}, forwarded_for=forwarded_for)
    assert (status, body["error"]["reason"]) == (403, "pin_blocked"), body


async def card_answered(client: TestClient, pin: str, forwarded_for: str | None = None) -> None:
    """``pin`` is answered with its card's 2.00."""
    status, body = await ask(client, {"pin": pin}, forwarded_for=forwarded_for)
    assert (status, body["balance"]) == (200, "2.000000"), body


async def test_ivrs_behind_a_trusted_proxy_each_have_their_own_limit(
    app: RunningApp, guarded: Guarded
) -> None:
    await add_plan(app.services)
    pins = await card_pins(app, "proxied")
    good = pins[0]
    client = await guarded(http_trusted_proxies=(PROXY,), pin_guess_limit_nas=3)
    # IVR A guesses its limit away; what it wrote left of its address is not believed.
    await guessed_wrong(client, pins, [f"203.0.113.{n}, 198.51.100.7" for n in range(3)])
    await refused_blocked(client, good, "198.51.100.7")
    # IVR B, through the same proxy, still has all of its own.
    await guessed_wrong(client, pins, ["198.51.100.8"])
    await card_answered(client, good, "198.51.100.8")
    # So does the proxy's own address, asking with no header.
    await card_answered(client, good)


async def test_a_client_no_trusted_proxy_passed_on_cannot_escape_its_limit(
    app: RunningApp, guarded: Guarded
) -> None:
    await add_plan(app.services)
    pins = await card_pins(app, "spoof")
    good = pins[0]
    # The trusted proxy is another host: the test client talks to ocs directly.
    client = await guarded(http_trusted_proxies=("127.0.0.2/32",), pin_guess_limit_nas=3)
    await guessed_wrong(client, pins, [f"198.51.100.{n + 10}" for n in range(3)])
    await refused_blocked(client, good, "198.51.100.99")


@pytest.mark.parametrize(
    "header",
    [
        "not an address",
        "unknown",
        ",,, ,",
        "",
        "999.1.2.3",
        "198.51.100.1, garbage",
        "[2001:db8::1",
        "2001:db8::1]:80",
        "198.51.100.1;for=x",
        pytest.param("1" * 4000, id="4000-digits"),
    ],
)
async def test_a_malformed_forwarded_header_counts_against_the_proxy(
    app: RunningApp, guarded: Guarded, header: str
) -> None:
    await add_plan(app.services)
    pins = await card_pins(app, "malformed")
    good = pins[0]
    client = await guarded(http_trusted_proxies=(PROXY,), pin_guess_limit_nas=2)
    await guessed_wrong(client, pins, [header, header])
    # Answered, never a 500, and the proxy that passed it on answers for it.
    await refused_blocked(client, good)
    # A well-formed header through the same proxy is another client's.
    await card_answered(client, good, "198.51.100.30")


@pytest.mark.parametrize(
    ("remote", "header", "client"),
    [
        # The right-most address that is not a trusted proxy.
        ("10.0.0.5", ["192.0.2.1, 198.51.100.4"], "198.51.100.4"),
        ("10.0.0.5", ["198.51.100.4, 10.0.0.6"], "198.51.100.4"),
        ("10.0.0.5", ["192.0.2.1", "198.51.100.4, 10.0.0.6"], "198.51.100.4"),  # two lines
        ("10.0.0.5", ["10.0.0.7, 10.0.0.6"], "10.0.0.7"),  # all trusted: the left-most
        # With a port, an IPv6 zone, in brackets, an IPv4-mapped peer.
        ("10.0.0.5", ["198.51.100.4:5060"], "198.51.100.4"),
        ("10.0.0.5", ["[2001:db8::1]:5060"], "2001:db8::1"),
        ("10.0.0.5", ["2001:db8::1"], "2001:db8::1"),
        ("::ffff:10.0.0.5", ["198.51.100.4"], "198.51.100.4"),
        # Not an address: the walk stops at the trusted hop that passed it on.
        ("10.0.0.5", ["198.51.100.4, unknown"], "10.0.0.5"),
        ("10.0.0.5", ["unknown, 10.0.0.6"], "10.0.0.6"),
        ("10.0.0.5", [], "10.0.0.5"),
        # A peer not trusted: its header is never read.
        ("192.0.2.9", ["198.51.100.4"], "192.0.2.9"),
        ("not-an-address", ["198.51.100.4"], "not-an-address"),
        (None, ["198.51.100.4"], None),
    ],
)
def test_the_client_is_the_right_most_address_not_a_trusted_proxy(
    remote: str | None, header: list[str], client: str | None
) -> None:
    assert ClientAddresses(["10.0.0.0/24"]).of(remote, header) == client


def test_with_no_trusted_proxy_the_header_is_never_read() -> None:
    assert ClientAddresses([]).of("10.0.0.5", ["198.51.100.4"]) == "10.0.0.5"
