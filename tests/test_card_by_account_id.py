"""A calling card opens by its PIN only, never by its account id (decision 0042).

A card's account id (``card-<batch>-<serial>``) is sequential and printed beside the
PIN, and a card seldom has a password: an IVR or NAS that passes free text as the
User-Name must not let a caller spend a card by naming it. FreeRADIUS's ``radclient``
is the IVR. The refusal is that of an unknown account (``account_not_found``, code 1),
so a guesser cannot tell a card that exists from one that does not; it reserves
nothing. The HTTP API has no such path: ``POST /v1/calls`` is a switch's (token or
trusted network) naming the account it vouches for, and an IVR there uses
``/v1/pins/{pin}``.

Rates used (tests/conftest.py RETAIL_DECK, EUR): Germany (49) 0.012 a minute,
1/1 seconds, no connect fee: 1.00 buys 5000 s.
"""

import csv
import io
from typing import Any

import pytest

from ocs.balances.card_ids import card_account_id, is_card_account
from tests.conftest import RunningApp, account, add_plan
from tests.helpers import ANSWERED, Pairs, auth, card_nas, return_code
from tests.radclient import RadiusReply
from tests.radius_udp import sample

GERMANY = "4930901820"
CALLER = "4930111222"
SETUP_TIME = "h323-setup-time=*10:15:00.000 UTC Mon Mar 2 2026"
# What an account's view shows of the money and lines a request may take.
HELD = ("balance", "reserved", "available", "lines_in_use")


def ivr_request(
    user: str, conf_id: str, destination: str | None = GERMANY, password: str | None = None
) -> Pairs:
    """An IVR's Access-Request: User-Name as the caller keyed it in; without a
    destination, a balance query."""
    pairs: Pairs = [("NAS-IP-Address", "127.0.0.1"), ("User-Name", user)]
    if password is not None:
        pairs.append(("User-Password", password))
    if destination is not None:
        pairs.append(("Called-Station-Id", destination))
    return [
        *pairs,
        ("Calling-Station-Id", CALLER),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
        ("h323-call-origin", "h323-call-origin=answer"),
        ("h323-setup-time", SETUP_TIME),
    ]


async def batch(app: RunningApp, batch_id: str, **fields: Any) -> list[dict[str, str]]:
    """A PIN batch generated over the API (lines for two calls a card): its CSV's rows."""
    await add_plan(app.services, max_lines=2)
    response = await app.client.post(
        "/v1/pin-batches",
        json={"plan": "retail", "batch": batch_id, "length": 12, "value": "1.00", **fields},
    )
    text = await response.text()
    assert response.status == 201, text
    return list(csv.DictReader(io.StringIO(text)))


def assert_unknown(reply: RadiusReply, account_id: str) -> None:
    """The reply is the refusal of an account that does not exist."""
    assert reply.code == "Access-Reject", reply.output
    assert return_code(reply) == "h323-return-code=1"
    assert reply.attributes["Reply-Message"] == [f"account '{account_id}' does not exist"]
    assert "h323-credit-amount" not in reply.attributes


async def held(app: RunningApp, account_id: str) -> dict[str, Any]:
    """The money and lines the account's view shows, and its live calls."""
    view = await account(app, account_id)
    live = await app.services.store.live_calls_of(account_id)
    return {**{k: view[k] for k in HELD}, "live": sorted(live)}


# -- the form of a card's id ------------------------------------------------------------


@pytest.mark.parametrize(
    ("account_id", "card"),
    [
        (card_account_id("b1", 1), True),
        ("card-b10k-0000042", True),
        ("card-a-b_c-1000000", True),
        # Ordinary accounts whose id merely starts like a card's keep their User-Name.
        ("card-2", False),
        ("card-pin", False),
        ("card-b-123", False),
        ("card--0000001", False),
        ("card-b-00000x1", False),
        ("Card-b-0000001", False),
        ("b-0000001", False),
    ],
)
def test_a_cards_id_is_known_by_its_form(account_id: str, card: bool) -> None:
    assert card_account_id("b1", 1) == "card-b1-0000001"
    assert is_card_account(account_id) is card


# -- over RADIUS ------------------------------------------------------------------------


async def test_a_cards_account_id_is_refused_as_unknown_and_its_pin_still_opens_it(
    app: RunningApp,
) -> None:
    rows = await batch(app, "byid", count=2)
    card_id, pin = rows[0]["account"], rows[0]["pin"]
    assert card_id == "card-byid-0000001" and rows[0]["password"] == ""
    before = await held(app, card_id)
    assert before == {
        "balance": "1.000000",
        "reserved": "0.000000",
        "available": "1.000000",
        "lines_in_use": 0,
        "live": [],
    }
    refused = sample(
        "ocs_decisions_total", protocol="radius", result="refused", reason="account_not_found"
    )
    pin_failures = sample("ocs_pin_failures_total", channel="radius")

    async with card_nas(app) as nas:
        # Named by its account id (nothing cached yet): refused as an unknown account is,
        # word for word, and nothing is held.
        reply = await auth(nas, ivr_request(card_id, "BYID-1"), expect=ANSWERED)
        assert_unknown(reply, card_id)
        assert await held(app, card_id) == before
        assert await app.services.calls.record_of("BYID-1") is None
        unknown = card_account_id("byid", 99)
        assert_unknown(await auth(nas, ivr_request(unknown, "BYID-2"), expect=ANSWERED), unknown)

        # Its PIN opens it, as before.
        reply = await auth(nas, ivr_request(pin, "BYPIN-1"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert reply.attributes["h323-credit-time"] == ["h323-credit-time=5000"]
        assert return_code(reply) == "h323-return-code=0"
        opened = await held(app, card_id)
        assert opened["lines_in_use"] == 1 and opened["live"] == ["BYPIN-1"]

        # Named by its id again, now that this process knows the card as an account (the
        # PIN's call cached its plan): still refused, and still nothing more held.
        reply = await auth(nas, ivr_request(card_id, "BYID-3"), expect=ANSWERED)
        assert_unknown(reply, card_id)
        assert await held(app, card_id) == opened

    assert (
        sample(
            "ocs_decisions_total", protocol="radius", result="refused", reason="account_not_found"
        )
        == refused + 3
    )
    # An account id is no PIN: it is not counted as a wrong one.
    assert sample("ocs_pin_failures_total", channel="radius") == pin_failures


async def test_a_cards_account_id_gets_no_balance_answer(app: RunningApp) -> None:
    # A balance query (no Called-Station-Id) by the card's id would tell a guesser which
    # serials hold money, and how much.
    rows = await batch(app, "balq", count=1)
    card_id, pin = rows[0]["account"], rows[0]["pin"]
    async with card_nas(app) as nas:
        reply = await auth(nas, ivr_request(card_id, "BALQ-1", destination=None), expect=ANSWERED)
        assert_unknown(reply, card_id)
        reply = await auth(nas, ivr_request(pin, "BALQ-2", destination=None), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert reply.attributes["h323-credit-amount"] == ["h323-credit-amount=1.000000"]
    assert (await held(app, card_id))["lines_in_use"] == 0


async def test_a_cards_account_id_with_its_password_is_refused_its_pin_with_it_opens_it(
    app: RunningApp,
) -> None:
    # The password is the second factor after the PIN, not a replacement for it.
    rows = await batch(app, "pwd", count=1, password_length=6)
    card_id, pin, password = rows[0]["account"], rows[0]["pin"], rows[0]["password"]
    assert len(password) == 6
    before = await held(app, card_id)
    async with card_nas(app) as nas:
        reply = await auth(nas, ivr_request(card_id, "PWD-1", password=password), expect=ANSWERED)
        assert_unknown(reply, card_id)
        assert await held(app, card_id) == before
        reply = await auth(nas, ivr_request(pin, "PWD-2", password=password), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        assert reply.attributes["h323-credit-time"] == ["h323-credit-time=5000"]
    assert (await held(app, card_id))["live"] == ["PWD-2"]


# -- account creation -------------------------------------------------------------------


async def test_an_account_cannot_take_a_cards_form_of_id(app: RunningApp) -> None:
    """Such an account could never be named by User-Name, and would clash with a batch's
    card: refused, naming the field; an id that only starts like a card's is taken."""
    await add_plan(app.services)
    refused = await app.client.post(
        "/v1/accounts", json={"id": "card-b1-0000001", "plan": "retail", "balance": "1.00"}
    )
    body = await refused.json()
    assert refused.status == 400, body
    assert body["error"]["field"] == "id", body
    assert (await app.get("/v1/accounts/card-b1-0000001"))[0] == 404
    taken = await app.client.post(
        "/v1/accounts", json={"id": "card-b1", "plan": "retail", "balance": "1.00"}
    )
    assert taken.status == 201, await taken.text()


async def test_a_member_cannot_take_a_cards_form_of_id(app: RunningApp) -> None:
    """A member of that form would answer for the card's id as a User-Name: refused when
    added, and a switch naming one as a call's member is told the member is unknown."""
    await add_plan(app.services)
    status, body = await app.post("/v1/accounts", {"id": "pbx", "plan": "retail"})
    assert status == 201, body
    status, body = await app.post("/v1/accounts/pbx/members", {"member": "card-b1-0000001"})
    assert (status, body["error"]["field"]) == (400, "member"), body
    for payload, reason in (
        ({"member": "card-b1-0000001"}, "account_not_found"),
        ({"account": "pbx", "member": "card-b1-0000001"}, "not_found"),
    ):
        status, body = await app.post("/v1/calls", {**payload, "destination": GERMANY})
        assert (status, body["error"]["reason"], body["error"]["field"]) == (
            404,
            reason,
            "member",
        ), body
