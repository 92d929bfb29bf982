"""Who a RADIUS Access-Request names: members by User-Name and by caller id, and
User-Names ocs cannot read (decision 0053).

A member named by User-Name opens its account under the account's password, as the
account's own id does. A member named like a PIN (digits, a phone number) opens it
only from its own line: typed at a card IVR's PIN prompt from another line it is a
wrong PIN, counted by the PIN guard, so knowing a customer's number charges nothing.
A member found by caller id (no User-Name) keeps its own line limit. A User-Name sent
empty or not as UTF-8 is refused, never taken as absent (which would open the caller
id's account with no password).

Rates (FLAT_DECK): Germany 0.01 a minute, 60/60; plans allow 600 s calls, so a grant
reserves 0.10.
"""

import ipaddress

import pytest
from pyrad import packet as rp
from redis.exceptions import ConnectionError as RedisConnectionError

from ocs.charging.values import CallRecord
from ocs.radius.access import answer_access_request
from ocs.radius.clients import NasClient
from ocs.radius.dictionary import radius_dictionary
from ocs.radius.lean.request import LeanCodec
from tests.conftest import RADIUS_SECRET, RunningApp, RunningRadius, account, add_plan
from tests.helpers import ANSWERED, Pairs, acct, auth, card_nas, return_code
from tests.radclient import RadiusReply
from tests.radius_udp import UdpClient, access_request, decode_reply, wire

FLAT_DECK = """prefix,zone,price_per_minute,connect_fee,first_block,increment
49,Germany,0.010,0,60,60
"""
GERMANY = "4930123456"
PHONE = "4930111222"  # the customer's line, and the name of its member
STRANGER = "15550009999"  # someone else's line, at the card IVR
PASSWORD = "s3cret-pw"


def call(conf_id: str, caller: str, user: str | None = None, password: str | None = None) -> Pairs:
    """An Access-Request for a call to Germany from ``caller``."""
    pairs: Pairs = [
        ("NAS-IP-Address", "127.0.0.1"),
        ("Called-Station-Id", GERMANY),
        ("Calling-Station-Id", caller),
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
    ]
    if user is not None:
        pairs.append(("User-Name", user))
    if password is not None:
        pairs.append(("User-Password", password))
    return pairs


async def customer(
    app: RunningApp,
    account_id: str,
    member: str,
    *,
    password: str | None = None,
    member_lines: int | None = None,
) -> None:
    """An account with 5.00 and up to five lines, and one member."""
    fields: dict[str, object] = {"id": account_id, "plan": "retail", "balance": "5.00"}
    if password is not None:
        fields["password"] = password
    status, body = await app.post("/v1/accounts", fields)
    assert status == 201, body
    payload: dict[str, object] = {"member": member}
    if member_lines is not None:
        payload["max_lines"] = member_lines
    status, body = await app.post(f"/v1/accounts/{account_id}/members", payload)
    assert status == 201, body


def refused_with(reply: RadiusReply, code: int) -> None:
    assert reply.code == "Access-Reject", reply.output
    assert return_code(reply) == f"h323-return-code={code}", reply.output


async def untouched(app: RunningApp, account_id: str) -> None:
    """Nothing was reserved on the account: no line, its 5.00 all free."""
    view = await account(app, account_id)
    assert (view["lines_in_use"], view["reserved"], view["balance"]) == (
        0,
        "0.000000",
        "5.000000",
    ), view


async def plan(app: RunningApp) -> None:
    await add_plan(app.services, deck=FLAT_DECK, max_call_duration=600, max_lines=5)


# -- a member named by User-Name ----------------------------------------------------


async def test_a_customers_number_typed_at_a_card_ivr_charges_nobody(app: RunningApp) -> None:
    """The reviewer's case: the number of a member, typed as a PIN from another line,
    opened its account with no password and no PIN counted."""
    await plan(app)
    await customer(app, "victim", PHONE, password=PASSWORD)
    await customer(app, "open", "4930777888")  # no password at all
    async with card_nas(app, pin_guess_limit_caller=3) as nas:
        for n, typed in enumerate((PHONE, "4930777888", PHONE)):
            reply = await auth(nas, call(f"M-{n}", STRANGER, typed), expect=ANSWERED)
            # Word for word what a wrong PIN gets: code 1, nothing said about the number.
            refused_with(reply, 1)
        # Counted as wrong PINs: the stranger's line is blocked now.
        reply = await auth(nas, call("M-9", STRANGER, PHONE), expect=ANSWERED)
        refused_with(reply, 10)
        # Even the account's password does not make the number a PIN from another line.
        reply = await auth(nas, call("M-10", "4930555000", PHONE, PASSWORD), expect=ANSWERED)
        refused_with(reply, 1)
    await untouched(app, "victim")
    await untouched(app, "open")


async def test_a_member_named_like_a_pin_opens_its_account_from_its_own_line(
    app: RunningApp,
) -> None:
    await plan(app)
    await customer(app, "victim", PHONE, password=PASSWORD)
    await customer(app, "open", "4930777888")
    async with card_nas(app) as nas:
        # The account's password applies, as it does to the account's id.
        reply = await auth(nas, call("O-1", PHONE, PHONE), expect=ANSWERED)
        refused_with(reply, 2)
        reply = await auth(nas, call("O-2", f"+{PHONE}", PHONE, PASSWORD), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
        reply = await auth(nas, call("O-3", "4930777888", "4930777888"), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
    for account_id, member in (("victim", PHONE), ("open", "4930777888")):
        view = await account(app, account_id)
        assert (view["lines_in_use"], view["reserved"]) == (1, "0.100000"), view
        live = await app.services.store.live_calls_of(account_id)
        assert [CallRecord.unpack(e.record).member for e in live.values()] == [member]


async def test_a_member_by_name_needs_its_accounts_password(radius: RunningRadius) -> None:
    """A SIP user sent as User-Name: the account's password, as for the account's id."""
    app = radius.app
    await plan(app)
    await customer(app, "pbx", "sip-alice", password=PASSWORD)
    await customer(app, "shop", "till-1")
    reply = await auth(radius, call("S-1", STRANGER, "sip-alice"), expect=ANSWERED)
    refused_with(reply, 2)
    reply = await auth(radius, call("S-2", STRANGER, "sip-alice", "wrong"), expect=ANSWERED)
    refused_with(reply, 2)
    await untouched(app, "pbx")
    reply = await auth(radius, call("S-3", STRANGER, "sip-alice", PASSWORD), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output
    # An account without a password: its member opens it as its id does.
    reply = await auth(radius, call("S-4", STRANGER, "till-1"), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output
    assert (await account(app, "shop"))["lines_in_use"] == 1
    # A balance query by a member is judged by the same password.
    query = [("User-Name", "sip-alice"), ("Calling-Station-Id", STRANGER)]
    reply = await auth(radius, query, expect=ANSWERED)
    refused_with(reply, 2)


async def test_a_cards_pin_that_is_also_a_members_number_opens_the_card(
    app: RunningApp,
) -> None:
    await plan(app)
    await customer(app, "victim", PHONE)
    response = await app.client.post(
        "/v1/pin-batches", json={"plan": "retail", "batch": "b", "count": 1, "value": "2.00"}
    )
    assert response.status == 201, await response.text()
    card = "card-b-0000001"
    await app.services.store.set_pin(app.services.digests.pin(PHONE), card)
    async with card_nas(app) as nas:
        reply = await auth(nas, call("P-1", STRANGER, PHONE), expect=ANSWERED)
        assert reply.code == "Access-Accept", reply.output
    await untouched(app, "victim")
    assert (await account(app, card))["lines_in_use"] == 1


async def test_a_switch_names_a_member_like_a_pin_from_any_line(app: RunningApp) -> None:
    """POST /v1/calls: the switch vouches for the member it names (decision 0011)."""
    await plan(app)
    await customer(app, "victim", PHONE, password=PASSWORD)
    status, grant = await app.post(
        "/v1/calls", {"member": PHONE, "destination": GERMANY, "caller": STRANGER}
    )
    assert (status, grant["account"]) == (201, "victim"), grant


# -- a member found by caller id ----------------------------------------------------


async def test_a_member_found_by_caller_id_keeps_its_own_line_limit(
    radius: RunningRadius,
) -> None:
    app = radius.app
    await plan(app)
    await customer(app, "trunk", PHONE, member_lines=1)
    first = await auth(radius, call("C-1", PHONE), expect=ANSWERED)
    assert first.code == "Access-Accept", first.output
    second = await auth(radius, call("C-2", f"+{PHONE}"), expect=ANSWERED)
    refused_with(second, 3)  # no free line: the member's one line is taken
    view = await account(app, "trunk")
    assert (view["lines_in_use"], view["reserved"]) == (1, "0.100000"), view
    live = await app.services.store.live_calls_of("trunk")
    assert [CallRecord.unpack(e.record).member for e in live.values()] == [PHONE]


# -- a User-Name ocs cannot read ----------------------------------------------------


async def pinless(app: RunningApp) -> None:
    """An account with a password whose caller id PHONE identifies it (pinless)."""
    await plan(app)
    status, body = await app.post(
        "/v1/accounts",
        {"id": "pinless", "plan": "retail", "balance": "5.00", "password": PASSWORD},
    )
    assert status == 201, body
    status, body = await app.post("/v1/accounts/pinless/callers", {"caller": PHONE})
    assert status in (200, 201), body


async def test_a_caller_id_moves_to_its_new_customer_and_a_live_call_goes_on(
    radius: RunningRadius,
) -> None:
    """A phone number given to a new customer: its caller id could be neither removed
    nor moved (409), so the new customer's calls kept going to the old account."""
    app = radius.app
    await pinless(app)
    reply = await auth(radius, call("MOVE-1", PHONE), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output
    live = [("Calling-Station-Id", PHONE), ("h323-conf-id", "h323-conf-id=MOVE-1")]
    await acct(radius, "Start", live)

    status, body = await app.delete(f"/v1/accounts/pinless/callers/+{PHONE}")
    assert (status, body) == (200, {"account": "pinless", "caller": PHONE}), body
    status, body = await app.post(
        "/v1/accounts", {"id": "heir", "plan": "retail", "balance": "5.00"}
    )
    assert status == 201, body
    status, body = await app.post("/v1/accounts/heir/callers", {"caller": PHONE})
    assert status == 201, body

    # The call that was live goes on, and is charged to the account it began on.
    await acct(radius, "Stop", [*live, ("Acct-Session-Time", "60")])
    view = await account(app, "pinless")
    assert (view["balance"], view["lines_in_use"]) == ("4.990000", 0), view
    # The next call from the number is the new customer's.
    reply = await auth(radius, call("MOVE-2", PHONE), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output
    assert (await account(app, "heir"))["lines_in_use"] == 1
    assert (await account(app, "pinless"))["lines_in_use"] == 0
    async with app.services.pool.acquire() as conn:
        owners = await conn.fetch("SELECT caller, account_id FROM account_callers")
    assert [tuple(r) for r in owners] == [(PHONE, "heir")]

    # What the account does not have is named.
    status, body = await app.delete(f"/v1/accounts/pinless/callers/{PHONE}")
    assert (status, body["error"]["reason"], body["error"]["field"]) == (404, "not_found", "caller")
    status, body = await app.delete("/v1/accounts/heir/callers/12ab")
    assert (status, body["error"]["field"]) == (400, "caller"), body


@pytest.mark.replaces_hot_path_function
async def test_a_caller_id_removal_failing_at_redis_leaves_it_the_accounts(
    app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    await pinless(app)
    store = app.services.store
    real = store.set_caller
    failed: list[str | None] = []

    async def lost_reply(caller: str, account_id: str | None) -> None:
        if not failed:
            failed.append(account_id)
            await real(caller, account_id)  # done, but its reply never came
            raise RedisConnectionError("connection lost")
        await real(caller, account_id)

    monkeypatch.setattr(store, "set_caller", lost_reply)
    status, body = await app.delete(f"/v1/accounts/pinless/callers/{PHONE}")
    assert (status, body["error"]["reason"]) == (503, "unavailable"), body
    assert failed == [None]
    assert await store.caller_account(PHONE) == "pinless"
    async with app.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT account_id FROM account_callers") == "pinless"
    # Tried again, it is done.
    status, _ = await app.delete(f"/v1/accounts/pinless/callers/{PHONE}")
    assert status == 200
    assert await store.caller_account(PHONE) is None


def unreadable(user: bytes) -> rp.AuthPacket:
    return access_request(
        RADIUS_SECRET,
        [
            ("User-Name", user),
            ("Called-Station-Id", GERMANY),
            ("Calling-Station-Id", PHONE),
            ("h323-conf-id", "h323-conf-id=U-1"),
        ],
    )


UNREADABLE = (b"\xff123456", b"\xc3", b"   ")


async def test_a_user_name_that_is_not_utf8_is_refused_over_the_wire(
    radius: RunningRadius, udp: UdpClient
) -> None:
    await pinless(radius.app)
    for user in UNREADABLE:
        request = unreadable(user)
        data = await udp.exchange(wire(request), radius.auth_port)
        assert data is not None, user
        reply = decode_reply(request, data)
        assert reply.code == rp.AccessReject, user
        assert reply["h323-return-code"] == ["h323-return-code=1"], user
    # With no User-Name at all, the caller id still opens the account.
    reply = await auth(radius, call("U-2", PHONE), expect=ANSWERED)
    assert reply.code == "Access-Accept", reply.output


async def test_both_codecs_refuse_an_empty_or_undecodable_user_name(app: RunningApp) -> None:
    await pinless(app)
    client = NasClient("nas", ipaddress.ip_network("127.0.0.1/32"), RADIUS_SECRET.encode(), False)
    codec = LeanCodec(radius_dictionary())
    services = app.services
    for user in (*UNREADABLE, b""):
        data = wire(unreadable(user))
        lean = codec.decode(data, RADIUS_SECRET.encode(), require_message_authenticator=True)
        assert lean is not None
        full = rp.AuthPacket(packet=data, secret=RADIUS_SECRET.encode(), dict=radius_dictionary())
        for request in (lean, full):
            answer = await answer_access_request(
                request, client, services.calls, services.settings, services.pin_guard
            )
            assert (answer.accept, answer.reason, answer.return_code) == (
                False,
                "invalid_field",
                1,
            ), (user, type(request))
    await untouched(app, "pinless")
