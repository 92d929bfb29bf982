"""The RADIUS server as a switch or calling-card IVR sees it.

FreeRADIUS's real ``radclient`` is the client wherever a NAS's view is the
point: Access-Request with Cisco VSAs, accounting, reject codes. Where a test
needs exact bytes (the same datagram three times, a forged
Message-Authenticator, the raw reply to verify), it sends pyrad-built packets
from its own UDP socket (tests/radius_udp.py). "No answer" is observed through
the drop counters, which the server increments as the datagram arrives, so no
test sleeps to prove a silence.

Rates used (tests/conftest.py RETAIL_DECK, EUR): Germany (49) 0.012 a minute,
1/1 seconds, no connect fee; UK Mobile (447) 0.060 a minute, 30/6, connect
fee 0.150.
"""

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyrad import packet as rp

import ocs.radius.server as radius_server
from ocs.balances.accounts import AccountSpec
from ocs.balances.wire import SlotMigrating
from ocs.charging.janitor import Janitor
from ocs.charging.lifecycle import CallService
from ocs.config import RadiusClientConfig, with_overrides
from ocs.errors import OcsError, Reason
from ocs.radius.clients import ClientTable, NasClient, clients_from_settings
from ocs.radius.server import RadiusServer
from ocs.rating.translation import validate_rules
from tests.conftest import RADIUS_SECRET, RunningRadius, account, eventually
from tests.helpers import Pairs, acct, auth, new_account, return_code
from tests.radclient import RadiusReply, radclient
from tests.radius_udp import (
    UdpClient,
    access_request,
    accounting_request,
    decode_reply,
    sample,
    verified,
    wire,
)

GERMANY = "4930901820"
UK_MOBILE = "447700900123"
NO_TARIFF = "33142278000"  # France: not in the retail deck
SETUP_TIME = "h323-setup-time=*10:15:00.000 UTC Mon Mar 2 2026"

# -- helpers ----------------------------------------------------------------------


def cisco_call(conf_id: str) -> Pairs:
    """The call-identifying VSAs a Cisco gateway puts in every request of a call."""
    return [
        ("h323-conf-id", f"h323-conf-id={conf_id}"),
        ("h323-call-origin", "h323-call-origin=answer"),
        ("h323-setup-time", SETUP_TIME),
        ("Cisco-AVPair", f"call-id={conf_id}@gw.example"),
    ]


def call_request(
    user: str | None, destination: str | None, conf_id: str, caller: str = "4930123456"
) -> Pairs:
    pairs: Pairs = [("NAS-IP-Address", "127.0.0.1")]
    if user is not None:
        pairs.append(("User-Name", user))
    if destination is not None:
        pairs.append(("Called-Station-Id", destination))
    pairs.append(("Calling-Station-Id", caller))
    return pairs + cisco_call(conf_id)


async def accepted(nas: RunningRadius, pairs: Pairs, port: int | None = None) -> RadiusReply:
    reply = await auth(nas, pairs, port)
    assert reply.code == "Access-Accept", reply.output
    return reply


async def rows(nas: RunningRadius, sql: str, *args: object) -> list[dict[str, Any]]:
    async with nas.app.services.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


async def cdr_of(nas: RunningRadius, call_id: str) -> dict[str, Any]:
    """The CDR of a call once the ledger writer has put it in PostgreSQL."""
    found: list[dict[str, Any]] = []

    async def written() -> bool:
        found[:] = await rows(nas, "SELECT * FROM cdrs WHERE call_id = $1", call_id)
        return bool(found)

    await eventually(written, what=f"the CDR of {call_id} in PostgreSQL")
    assert len(found) == 1, found
    return found[0]


async def ledger_balance(nas: RunningRadius, account_id: str, expected: int) -> None:
    """PostgreSQL's ledger sums to ``expected`` (micro-units) for the account."""
    last: list[object] = []

    async def sums() -> bool:
        total = await rows(
            nas,
            "SELECT COALESCE(SUM(amount), 0) AS s FROM ledger WHERE account_id = $1",
            account_id,
        )
        last[:] = [total[0]["s"]]
        return total[0]["s"] == expected

    try:
        await eventually(sums, what=f"the ledger of {account_id} to sum to {expected}")
    except AssertionError:
        raise AssertionError(
            f"ledger of {account_id} sums to {last}, expected {expected}"
        ) from None


@dataclass
class ExtraServer:
    """A second RADIUS server over the same Redis and PostgreSQL, configured apart."""

    server: RadiusServer
    calls: CallService

    @property
    def auth_port(self) -> int:
        return self.server.auth_port

    @property
    def acct_port(self) -> int:
        return self.server.acct_port


@asynccontextmanager
async def extra_server(
    nas: RunningRadius,
    *,
    clients: ClientTable | None = None,
    nas_name: str = "test-nas",
    require_message_authenticator: bool | None = None,
    clock: Callable[[], float] = time.time,
    **overrides: Any,
) -> AsyncIterator[ExtraServer]:
    services = nas.app.services
    settings = with_overrides(
        services.settings,
        radius_host="127.0.0.1",
        radius_auth_port=0,
        radius_acct_port=0,
        radius_clients=(
            RadiusClientConfig(
                name=nas_name,
                network="127.0.0.1/32",
                secret=RADIUS_SECRET,
                require_message_authenticator=require_message_authenticator,
            ),
        ),
        **overrides,
    )
    calls = CallService(services.catalog, services.store, settings, services.digests, clock=clock)
    table = ClientTable(clients_from_settings(settings)) if clients is None else clients
    server = RadiusServer(calls, settings, table)
    await server.start()
    try:
        yield ExtraServer(server, calls)
    finally:
        server.close_listeners()
        await server.drain(5)


async def dropped(reason: str, before: float, count: int = 1) -> None:
    """Wait until ``count`` more packets were dropped for ``reason``."""

    async def counted() -> bool:
        return sample("ocs_radius_dropped_total", reason=reason) >= before + count

    await eventually(counted, within=5, what=f"{count} drop(s) counted as {reason}")


@pytest.mark.replaces_hot_path_function
async def test_packets_failing_alike_are_logged_once_a_while_and_all_counted(
    nas: RunningRadius,
    udp: UdpClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A plan not yet in this process's catalog fails every call of its accounts alike:
    # unanswered (the NAS fails over), one ERROR line, not one per packet.
    async def not_in_catalog_yet(*args: object, **kwargs: object) -> None:
        raise OcsError(Reason.UNAVAILABLE, "plan gold is not in this process's catalog yet")

    monkeypatch.setattr(radius_server, "answer_access_request", not_in_catalog_yet)
    before = sample("ocs_radius_dropped_total", reason="backend_unavailable")
    counted = sample("ocs_request_errors_total", protocol="radius", reason="unavailable")
    caplog.set_level(logging.INFO, logger="ocs.radius")
    for n in range(40):
        request = access_request(RADIUS_SECRET, call_request("2001", GERMANY, f"CONF-NY{n}"))
        udp.send(wire(request), nas.auth_port)
    await dropped("backend_unavailable", before, 40)
    lines = [
        r
        for r in caplog.records
        if r.getMessage() == "radius request not answered: backend unavailable"
    ]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert lines[0].reason == "unavailable"  # type: ignore[attr-defined]
    assert lines[0].held_back == 0  # type: ignore[attr-defined]
    assert sample("ocs_request_errors_total", protocol="radius", reason="unavailable") == (
        counted + 40
    )
    assert udp.unread_count() == 0


@pytest.mark.replaces_hot_path_function
async def test_packets_failed_by_a_migrating_slot_are_logged_once_a_while_and_counted(
    nas: RunningRadius,
    udp: UdpClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A Redis Cluster slot still migrating at the batch's deadline is no outage: the
    # tracker writes no line for it, so the packets it fails have their own (before:
    # none at all, and no count).
    async def slot_migrating(*args: object, **kwargs: object) -> None:
        raise SlotMigrating("slot still migrating: TRYAGAIN Multiple keys request during rehashing")

    monkeypatch.setattr(radius_server, "answer_access_request", slot_migrating)
    before = sample("ocs_radius_dropped_total", reason="backend_unavailable")
    counted = sample("ocs_request_errors_total", protocol="radius", reason="SlotMigrating")
    caplog.set_level(logging.INFO)
    for n in range(5):
        request = access_request(RADIUS_SECRET, call_request("2001", GERMANY, f"CONF-SM{n}"))
        udp.send(wire(request), nas.auth_port)
    await dropped("backend_unavailable", before, 5)
    lines = [r for r in caplog.records if r.name == "ocs.radius"]
    assert [r.getMessage() for r in lines] == ["radius request not answered: backend unavailable"]
    assert lines[0].reason == "SlotMigrating"  # type: ignore[attr-defined]
    assert sample("ocs_request_errors_total", protocol="radius", reason="SlotMigrating") == (
        counted + 5
    )
    assert nas.app.services.health.is_up("redis")


# -- Access-Request -> Access-Accept ---------------------------------------------------


async def test_access_accept_carries_the_credit_of_a_known_tariff_and_balance(
    nas: RunningRadius,
) -> None:
    await new_account(nas.app, "2001", balance="1.00")
    reply = await accepted(nas, call_request("2001", GERMANY, "CONF-PREPAID"))
    # 1.00 EUR at 0.012 EUR a minute, billed by the second: 5000 seconds.
    assert reply.attributes["Session-Timeout"] == ["5000"]
    assert reply.attributes["h323-credit-time"] == ["h323-credit-time=5000"]
    assert reply.attributes["h323-credit-amount"] == ["h323-credit-amount=1.000000"]
    assert reply.attributes["h323-return-code"] == ["h323-return-code=0"]
    assert reply.attributes["h323-billing-model"] == ["h323-billing-model=1"]
    assert reply.attributes["h323-currency"] == ["h323-currency=EUR"]
    assert reply.first("Message-Authenticator") not in (None, "0x00")
    view = await account(nas.app, "2001")
    assert view["lines_in_use"] == 1 and view["reserved"] == "1.000000"


async def test_access_accept_for_a_credit_limit_account_is_postpaid(nas: RunningRadius) -> None:
    await new_account(nas.app, "2002", balance="0", credit_limit="2.00")
    reply = await accepted(nas, call_request("2002", GERMANY, "CONF-POSTPAID"))
    assert reply.attributes["Session-Timeout"] == ["10000"]
    assert reply.attributes["h323-credit-time"] == ["h323-credit-time=10000"]
    assert reply.attributes["h323-credit-amount"] == ["h323-credit-amount=2.000000"]
    assert reply.attributes["h323-billing-model"] == ["h323-billing-model=0"]
    assert reply.attributes["h323-currency"] == ["h323-currency=EUR"]


async def test_every_reply_carries_a_valid_message_authenticator(
    nas: RunningRadius, udp: UdpClient
) -> None:
    await new_account(nas.app, "2003")
    cases = [
        (nas.auth_port, access_request(RADIUS_SECRET, call_request("2003", GERMANY, "MA-1"))),
        (nas.auth_port, access_request(RADIUS_SECRET, call_request("nobody", GERMANY, "MA-2"))),
        (
            nas.acct_port,
            accounting_request(
                RADIUS_SECRET,
                [("Acct-Status-Type", "Start"), ("User-Name", "2003"), *cisco_call("MA-1")],
            ),
        ),
    ]
    replies = []
    for port, request in cases:
        data = await udp.exchange(wire(request), port)
        assert data is not None, f"no reply to {request.code}"
        assert verified(request, data), f"reply {data[0]} to {request.code} fails verification"
        replies.append(data)
    assert [r[0] for r in replies] == [2, 3, 5]  # Accept, Reject, Accounting-Response
    accept = decode_reply(cases[0][1], replies[0])
    assert accept["Session-Timeout"] == [5000]
    # Verified against another secret, the same replies fail: the check has teeth.
    for (_, request), data in zip(cases, replies, strict=True):
        request.secret = b"not-the-secret"
        assert not verified(request, data)


async def test_access_request_sent_again_for_a_live_call_gets_the_same_answer(
    nas: RunningRadius,
) -> None:
    # A gateway that gave up waiting sends the call's Access-Request again as a new
    # request (new identifier): the call is the same, so must be the answer.
    await new_account(nas.app, "2005", balance="0", credit_limit="5.00", max_lines=2)
    call = call_request("2005", GERMANY, "AGAIN-1")
    first = await accepted(nas, call)
    again = await accepted(nas, call)
    assert (await account(nas.app, "2005"))["lines_in_use"] == 1
    assert first.attributes["Session-Timeout"] == ["14400"]
    assert first.attributes["h323-billing-model"] == ["h323-billing-model=0"]
    names = (
        "Session-Timeout",
        "h323-credit-time",
        "h323-credit-amount",
        "h323-billing-model",
        "h323-currency",
        "h323-return-code",
    )
    assert {n: again.attributes.get(n) for n in names} == {
        n: first.attributes.get(n) for n in names
    }


async def test_replies_echo_proxy_state(nas: RunningRadius, udp: UdpClient) -> None:
    # A proxy in front of ocs (RFC 2865 section 5.33) finds its state in the reply.
    await new_account(nas.app, "2006")
    request = access_request(
        RADIUS_SECRET, [*call_request("2006", GERMANY, "PROXY-1"), ("Proxy-State", "hop-1")]
    )
    data = await udp.exchange(wire(request), nas.auth_port)
    assert data is not None and verified(request, data)
    assert decode_reply(request, data)["Proxy-State"] == [b"hop-1"]


async def test_a_called_number_that_is_not_text_is_a_refused_call_not_a_balance_query(
    nas: RunningRadius, udp: UdpClient
) -> None:
    # Sent, but not UTF-8: had it read as "no Called-Station-Id", the answer was a balance
    # query's Access-Accept, with no time limit and nothing held, for a call.
    await new_account(nas.app, "2007")
    pairs = call_request("2007", None, "NOT-TEXT-1")
    request = access_request(RADIUS_SECRET, [*pairs, ("Called-Station-Id", b"49309\xff01820")])
    data = await udp.exchange(wire(request), nas.auth_port)
    assert data is not None and verified(request, data)
    reply = decode_reply(request, data)
    assert reply.code == 3, reply  # Access-Reject
    assert "Session-Timeout" not in reply
    view = await account(nas.app, "2007")
    assert (view["lines_in_use"], view["reserved"]) == (0, "0.000000")


async def test_start_and_stop_put_the_cdr_and_the_balance_in_postgresql(
    nas: RunningRadius,
) -> None:
    await new_account(nas.app, "2010", balance="1.00")
    call = call_request("2010", GERMANY, "CDR-1", caller="4930111222")
    await accepted(nas, call)
    accounting = [("User-Name", "2010"), *cisco_call("CDR-1")]
    await acct(nas, "Start", accounting)
    await acct(nas, "Stop", [*accounting, ("Acct-Session-Time", "125")])
    # 125 s at 0.012 a minute = 0.025.
    view = await account(nas.app, "2010")
    assert view["balance"] == "0.975000"
    assert view["reserved"] == "0.000000" and view["lines_in_use"] == 0
    cdr = await cdr_of(nas, "CDR-1")
    assert cdr["account_id"] == "2010"
    assert cdr["termination_cause"] == "normal"
    assert cdr["nas"] == "test-nas"
    assert cdr["zone"] == "Germany"
    assert cdr["destination"] == GERMANY
    assert cdr["caller"] == "4930111222"
    assert (cdr["duration"], cdr["billed_seconds"]) == (125, 125)
    assert cdr["rated_cost"] == cdr["charged"] == 25_000
    await ledger_balance(nas, "2010", 975_000)


# -- Access-Reject: every return code from a real scenario ------------------------------


async def _unknown_account(nas: RunningRadius) -> tuple[Pairs, str | None]:
    return call_request("9999", GERMANY, "REJ-1"), None


async def _wrong_password(nas: RunningRadius) -> tuple[Pairs, str | None]:
    await nas.app.services.accounts.create(
        AccountSpec("card-2", plan_id="retail", opening_balance=5_000_000, password="4321")
    )
    return call_request("card-2", GERMANY, "REJ-2"), "1234"


async def _no_free_line(nas: RunningRadius) -> tuple[Pairs, str | None]:
    await new_account(nas.app, "acct-3", balance="5.00", max_lines=1)
    await accepted(nas, call_request("acct-3", GERMANY, "REJ-3-FIRST"))
    return call_request("acct-3", GERMANY, "REJ-3"), None


async def _zero_balance(nas: RunningRadius) -> tuple[Pairs, str | None]:
    await new_account(nas.app, "acct-4", balance="0")
    return call_request("acct-4", GERMANY, "REJ-4"), None


async def _card_expired(nas: RunningRadius) -> tuple[Pairs, str | None]:
    await nas.app.services.accounts.create(
        AccountSpec(
            "card-5",
            plan_id="retail",
            opening_balance=5_000_000,
            expires_at=datetime.now(UTC) - timedelta(days=1),
        ),
    )
    return call_request("card-5", GERMANY, "REJ-5"), None


async def _credit_limit(nas: RunningRadius) -> tuple[Pairs, str | None]:
    # A postpaid account talks an hour on a 0.10 credit limit: the stop takes it to -0.10.
    await new_account(nas.app, "acct-6", balance="0", credit_limit="0.10")
    await accepted(nas, call_request("acct-6", GERMANY, "REJ-6-FIRST"))
    used = [("User-Name", "acct-6"), *cisco_call("REJ-6-FIRST")]
    await acct(nas, "Start", used)
    await acct(nas, "Stop", [*used, ("Acct-Session-Time", "3600")])
    view = await account(nas.app, "acct-6")
    assert view["balance"] == "-0.100000" and view["available"] == "0.000000"
    return call_request("acct-6", GERMANY, "REJ-6"), None


async def _suspended(nas: RunningRadius) -> tuple[Pairs, str | None]:
    await new_account(nas.app, "acct-7s", balance="5.00", status="suspended")
    return call_request("acct-7s", GERMANY, "REJ-7S"), None


async def _locked(nas: RunningRadius) -> tuple[Pairs, str | None]:
    await new_account(nas.app, "acct-7l", balance="5.00", status="locked")
    return call_request("acct-7l", GERMANY, "REJ-7L"), None


async def _no_tariff(nas: RunningRadius) -> tuple[Pairs, str | None]:
    await new_account(nas.app, "acct-9", balance="5.00")
    return call_request("acct-9", NO_TARIFF, "REJ-9"), None


async def _letters_in_destination(nas: RunningRadius) -> tuple[Pairs, str | None]:
    await new_account(nas.app, "acct-9l", balance="5.00")
    return call_request("acct-9l", "4930abc1820", "REJ-9L"), None


async def _insufficient_balance(nas: RunningRadius) -> tuple[Pairs, str | None]:
    # UK Mobile's first block costs 0.150 + 30 s at 0.060 a minute = 0.18.
    await new_account(nas.app, "acct-12", balance="0.10")
    return call_request("acct-12", UK_MOBILE, "REJ-12"), None


_REASONS_BY_CODE = {
    1: ("account_not_found",),
    2: ("invalid_password",),
    3: ("no_free_line",),
    4: ("zero_balance",),
    5: ("account_expired",),
    6: ("credit_limit_reached",),
    7: ("account_suspended", "account_locked"),
    9: ("destination_not_allowed", "invalid_field"),
    12: ("insufficient_funds", "below_minimum_balance"),
}


Scenario = Callable[[RunningRadius], Awaitable[tuple[Pairs, str | None]]]


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        (_unknown_account, 1),
        (_wrong_password, 2),
        (_no_free_line, 3),
        (_zero_balance, 4),
        (_card_expired, 5),
        (_credit_limit, 6),
        (_suspended, 7),
        (_locked, 7),
        (_no_tariff, 9),
        (_letters_in_destination, 9),
        (_insufficient_balance, 12),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else str(v),
)
async def test_each_refusal_carries_its_return_code_and_a_reply_message(
    nas: RunningRadius, scenario: Scenario, code: int
) -> None:
    pairs, password = await scenario(nas)
    if password is not None:
        pairs = [*pairs, ("User-Password", password)]
    before = sum(
        sample("ocs_radius_rejects_total", return_code=str(code), reason=reason)
        for reason in _REASONS_BY_CODE[code]
    )
    reply = await auth(nas, pairs)
    assert reply.code == "Access-Reject", reply.output
    assert reply.attributes["h323-return-code"] == [f"h323-return-code={code}"]
    message = reply.first("Reply-Message")
    assert message, reply.output
    assert "Session-Timeout" not in reply.attributes
    assert reply.first("Message-Authenticator") not in (None, "0x00")
    after = sum(
        sample("ocs_radius_rejects_total", return_code=str(code), reason=reason)
        for reason in _REASONS_BY_CODE[code]
    )
    assert after == before + 1
    # The refused call holds nothing.
    fields = dict(pairs)
    conf_id = fields["h323-conf-id"].removeprefix("h323-conf-id=")
    assert conf_id not in await nas.app.services.store.live_calls_of(fields["User-Name"])


async def test_a_refusal_echoing_a_long_non_ascii_user_name_is_still_answered(
    nas: RunningRadius,
) -> None:
    # 120 characters, 240 octets: the refusal's message quotes the name, and cut by
    # characters it would no longer fit in one attribute.
    user = "\u00e9" * 120
    reply = await auth(nas, call_request(user, "4930901820", "long-name-1"))
    assert reply.code == "Access-Reject", reply.output
    assert reply.attributes["h323-return-code"] == ["h323-return-code=1"]
    message = reply.first("Reply-Message")
    assert message is not None and message.startswith("account '\u00e9"), reply.output
    assert 200 < len(message.encode()) <= 253


async def test_a_refused_call_reserves_nothing(nas: RunningRadius) -> None:
    await new_account(nas.app, "2020", balance="0.10")
    reply = await auth(nas, call_request("2020", UK_MOBILE, "REFUSED"))
    assert return_code(reply) == "h323-return-code=12"
    view = await account(nas.app, "2020")
    assert view["reserved"] == "0.000000" and view["lines_in_use"] == 0


# -- calling cards: balance query, PIN password, pinless --------------------------------


async def test_card_only_request_answers_the_balance_and_reserves_nothing(
    nas: RunningRadius,
) -> None:
    await nas.app.services.accounts.create(
        AccountSpec("555000111", plan_id="retail", opening_balance=3_500_000, password="4321")
    )
    query = [("User-Name", "555000111"), ("Calling-Station-Id", "4930123456")]
    reply = await accepted(nas, [*query, ("User-Password", "4321")])
    assert reply.attributes["h323-credit-amount"] == ["h323-credit-amount=3.500000"]
    assert reply.attributes["h323-return-code"] == ["h323-return-code=0"]
    assert reply.attributes["h323-currency"] == ["h323-currency=EUR"]
    assert reply.attributes["h323-billing-model"] == ["h323-billing-model=1"]
    assert "Session-Timeout" not in reply.attributes
    view = await account(nas.app, "555000111")
    assert view["reserved"] == "0.000000" and view["lines_in_use"] == 0
    assert view["balance"] == "3.500000"

    wrong = await auth(nas, [*query, ("User-Password", "9999")])
    assert wrong.code == "Access-Reject", wrong.output
    assert return_code(wrong) == "h323-return-code=2"
    assert wrong.first("Reply-Message")
    missing = await auth(nas, query)
    assert missing.code == "Access-Reject", missing.output
    assert return_code(missing) == "h323-return-code=2"


async def test_card_only_request_of_a_postpaid_account_says_postpaid(nas: RunningRadius) -> None:
    await new_account(nas.app, "2030", balance="0.50", credit_limit="2.00")
    reply = await accepted(nas, [("User-Name", "2030")])
    assert reply.attributes["h323-credit-amount"] == ["h323-credit-amount=2.500000"]
    # Same account, same attribute as in its call authorization: 0 = postpaid.
    assert reply.attributes["h323-billing-model"] == ["h323-billing-model=0"]


async def test_a_user_password_of_a_wrong_size_is_refused_not_an_internal_error(
    nas: RunningRadius, udp: UdpClient
) -> None:
    # RFC 2865 section 5.2: User-Password is 16 to 128 octets, a multiple of 16. A NAS
    # that sends 1 octet (signed correctly) gets a refusal, or its packet is dropped as
    # malformed; it must not end in an internal error (an ERROR log and traceback per
    # packet, counted where the NOC looks for ocs's own failures).
    await nas.app.services.accounts.create(
        AccountSpec("card-pw", plan_id="retail", opening_balance=1_000_000, password="4321")
    )
    request = access_request(RADIUS_SECRET, call_request("card-pw", GERMANY, "PW-SIZE"))
    request["User-Password"] = b"\x07"
    internal = sample("ocs_radius_dropped_total", reason="internal_error")
    malformed = sample("ocs_radius_dropped_total", reason="malformed")
    udp.send(wire(request), nas.auth_port)

    async def settled() -> bool:
        return bool(udp.unread_count()) or (
            sample("ocs_radius_dropped_total", reason="internal_error") > internal
            or sample("ocs_radius_dropped_total", reason="malformed") > malformed
        )

    await eventually(settled, within=5, what="an answer or a counted drop")
    assert sample("ocs_radius_dropped_total", reason="internal_error") == internal
    replies = udp.unread()
    if replies:
        assert verified(request, replies[0]) and replies[0][0] == 3  # Access-Reject
        assert decode_reply(request, replies[0])["h323-return-code"] == ["h323-return-code=2"]
    assert (await account(nas.app, "card-pw"))["lines_in_use"] == 0


async def test_pin_with_the_right_password_places_the_call(nas: RunningRadius) -> None:
    await nas.app.services.accounts.create(
        AccountSpec("card-pin", plan_id="retail", opening_balance=1_000_000, password="4321")
    )
    reply = await accepted(
        nas, [*call_request("card-pin", GERMANY, "PIN-1"), ("User-Password", "4321")]
    )
    assert reply.attributes["Session-Timeout"] == ["5000"]


async def test_pinless_caller_id_identifies_the_account(nas: RunningRadius) -> None:
    await new_account(nas.app, "2040", balance="1.00")
    await nas.app.services.accounts.add_caller("2040", "+4930555666")
    reply = await accepted(nas, call_request(None, GERMANY, "PINLESS-1", caller="4930555666"))
    assert reply.attributes["Session-Timeout"] == ["5000"]
    view = await account(nas.app, "2040")
    assert view["lines_in_use"] == 1

    stranger = await auth(nas, call_request(None, GERMANY, "PINLESS-2", caller="4930777888"))
    assert stranger.code == "Access-Reject", stranger.output
    assert return_code(stranger) == "h323-return-code=1"


# -- call id ------------------------------------------------------------------------------


async def test_call_id_prefers_conf_id_then_acct_session_id_then_avpair(
    nas: RunningRadius,
) -> None:
    await new_account(nas.app, "2050", balance="10.00", max_lines=3)
    base = [("User-Name", "2050"), ("Called-Station-Id", GERMANY)]
    conf = ("h323-conf-id", "h323-conf-id=3C5AEAB9 95C80008 0 58FB8B4")
    session = ("Acct-Session-Id", "SESSION-B")
    avpair = ("Cisco-AVPair", "call-id=sip-c@gw.example")
    await accepted(nas, [*base, conf, session, ("Cisco-AVPair", "call-id=sip-a@gw.example")])
    await accepted(nas, [*base, ("Cisco-AVPair", "call-id=sip-b@gw.example"), session])
    await accepted(nas, [*base, ("Cisco-AVPair", "h323-ivr-out=x"), avpair])
    live = await nas.app.services.store.live_calls_of("2050")
    # A conference id and a SIP Call-ID are unique everywhere; a NAS's own session id is
    # qualified by its client and NAS (decision 0048).
    assert sorted(live) == sorted(
        ["3C5AEAB9 95C80008 0 58FB8B4", "SESSION-B@test-nas:127.0.0.1", "sip-c@gw.example"]
    )
    # The NAS's accounting finds each call by the same rule.
    await acct(nas, "Stop", [("User-Name", "2050"), session, ("Acct-Session-Time", "10")])
    await acct(nas, "Stop", [("User-Name", "2050"), avpair, ("Acct-Session-Time", "10")])
    await acct(nas, "Stop", [("User-Name", "2050"), conf, ("Acct-Session-Time", "10")])
    view = await account(nas.app, "2050")
    assert view["lines_in_use"] == 0
    assert view["balance"] == "9.994000"  # three calls of 10 s at 0.012 a minute


# -- who may talk to the server -------------------------------------------------------


async def test_wrong_secret_gets_no_answer_from_radclient(nas: RunningRadius) -> None:
    await new_account(nas.app, "2060")
    before = sample("ocs_radius_dropped_total", reason="bad_message_authenticator")
    reply = await radclient(
        "auth", nas.auth_port, "wrong-secret", call_request("2060", GERMANY, "WS-1")
    )
    assert reply.code is None, reply.output
    # The server itself stayed silent (radclient would also discard a reply it cannot verify).
    await dropped("bad_message_authenticator", before)
    assert (await account(nas.app, "2060"))["lines_in_use"] == 0


async def test_wrong_secret_on_accounting_gets_no_answer_and_charges_nothing(
    nas: RunningRadius, udp: UdpClient
) -> None:
    await new_account(nas.app, "2061")
    await accepted(nas, call_request("2061", GERMANY, "WS-2"))
    used = [("User-Name", "2061"), *cisco_call("WS-2")]
    await acct(nas, "Start", used)
    before = sample("ocs_radius_dropped_total", reason="bad_authenticator")
    stop = accounting_request(
        "wrong-secret", [("Acct-Status-Type", "Stop"), *used, ("Acct-Session-Time", "600")]
    )
    udp.send(wire(stop), nas.acct_port)
    await dropped("bad_authenticator", before)
    view = await account(nas.app, "2061")
    assert view["balance"] == "1.000000" and view["lines_in_use"] == 1
    assert udp.unread() == []


async def test_unknown_client_gets_no_answer(nas: RunningRadius, udp: UdpClient) -> None:
    await new_account(nas.app, "2070")
    async with extra_server(nas, clients=ClientTable([])) as other:
        before = sample("ocs_radius_dropped_total", reason="unknown_client")
        request = access_request(RADIUS_SECRET, call_request("2070", GERMANY, "UC-1"))
        udp.send(wire(request), other.auth_port)
        start = accounting_request(
            RADIUS_SECRET, [("Acct-Status-Type", "Start"), *cisco_call("UC-1")]
        )
        udp.send(wire(start), other.acct_port)
        await dropped("unknown_client", before, count=2)
        # The same request from a known client is answered: only the client table differed.
        answered = await udp.exchange(wire(request), nas.auth_port)
        assert answered is not None and answered[0] == 2
        assert udp.unread() == []


# -- Message-Authenticator (BlastRADIUS) ----------------------------------------------


async def test_access_request_without_message_authenticator_is_dropped(
    nas: RunningRadius,
) -> None:
    await new_account(nas.app, "2080")
    before = sample("ocs_radius_dropped_total", reason="missing_message_authenticator")
    reply = await radclient(
        "auth",
        nas.auth_port,
        RADIUS_SECRET,
        call_request("2080", GERMANY, "NOMA-1"),
        message_authenticator=False,
    )
    assert reply.code is None, reply.output
    await dropped("missing_message_authenticator", before)
    assert (await account(nas.app, "2080"))["lines_in_use"] == 0


async def test_forged_message_authenticator_is_dropped(nas: RunningRadius, udp: UdpClient) -> None:
    await new_account(nas.app, "2081")
    request = access_request(RADIUS_SECRET, call_request("2081", GERMANY, "FORGED-1"))
    data = wire(request)
    at = _attribute_offset(data, 80)
    forged = data[: at + 2] + bytes([data[at + 2] ^ 0x01]) + data[at + 3 :]
    before = sample("ocs_radius_dropped_total", reason="bad_message_authenticator")
    udp.send(forged, nas.auth_port)
    await dropped("bad_message_authenticator", before)
    assert (await account(nas.app, "2081"))["lines_in_use"] == 0
    # The genuine packet (another authenticator, so not a duplicate) is answered.
    genuine = access_request(RADIUS_SECRET, call_request("2081", GERMANY, "FORGED-1"))
    reply = await udp.exchange(wire(genuine), nas.auth_port)
    assert reply is not None and verified(genuine, reply) and reply[0] == 2
    assert udp.unread() == []


async def test_message_authenticator_on_accounting_is_verified_when_present(
    nas: RunningRadius, udp: UdpClient
) -> None:
    await new_account(nas.app, "2083")
    await accepted(nas, call_request("2083", GERMANY, "ACCT-MA"))
    start = accounting_request(
        RADIUS_SECRET,
        [("Acct-Status-Type", "Start"), ("User-Name", "2083"), *cisco_call("ACCT-MA")],
    )
    start.message_authenticator = True
    data = wire(start)
    at = _attribute_offset(data, 80)
    forged = bytearray(data)
    forged[at + 2] ^= 0x01
    # Re-sign the Request Authenticator so that only the Message-Authenticator is wrong.
    forged[4:20] = hashlib.md5(
        bytes(forged[:4]) + bytes(16) + bytes(forged[20:]) + RADIUS_SECRET.encode()
    ).digest()
    before = sample("ocs_radius_dropped_total", reason="bad_message_authenticator")
    udp.send(bytes(forged), nas.acct_port)
    await dropped("bad_message_authenticator", before)
    entry = await nas.app.services.store.live_entry("2083", "ACCT-MA")
    assert entry is not None and entry.started == 0  # the forged Start changed nothing
    reply = await udp.exchange(data, nas.acct_port)
    assert reply is not None and verified(start, reply)
    entry = await nas.app.services.store.live_entry("2083", "ACCT-MA")
    assert entry is not None and entry.started > 0


def _attribute_offset(data: bytes, kind: int) -> int:
    pos = 20
    while pos < len(data):
        if data[pos] == kind:
            return pos
        pos += data[pos + 1]
    raise AssertionError(f"attribute {kind} not in the packet")


async def test_a_client_may_be_relaxed_on_purpose_but_forgeries_still_drop(
    nas: RunningRadius, udp: UdpClient
) -> None:
    await new_account(nas.app, "2082", max_lines=2)
    async with extra_server(nas, require_message_authenticator=False) as relaxed:
        reply = await radclient(
            "auth",
            relaxed.auth_port,
            RADIUS_SECRET,
            call_request("2082", GERMANY, "RELAXED-1"),
            message_authenticator=False,
        )
        assert reply.code == "Access-Accept", reply.output
        assert reply.attributes["Session-Timeout"] == ["5000"]
        # Verified whenever present, even where it is not required.
        request = access_request(RADIUS_SECRET, call_request("2082", GERMANY, "RELAXED-2"))
        data = wire(request)
        at = _attribute_offset(data, 80)
        forged = data[: at + 2] + bytes(16) + data[at + 18 :]
        before = sample("ocs_radius_dropped_total", reason="bad_message_authenticator")
        udp.send(forged, relaxed.auth_port)
        await dropped("bad_message_authenticator", before)
        assert udp.unread() == []
    assert (await account(nas.app, "2082"))["lines_in_use"] == 1


# -- duplicates (RFC 5080) ----------------------------------------------------------------


async def test_the_same_stop_three_times_charges_once_and_gets_the_same_reply(
    nas: RunningRadius, udp: UdpClient
) -> None:
    await new_account(nas.app, "2090", balance="1.00")
    await accepted(nas, call_request("2090", GERMANY, "DUP-1"))
    used = [("User-Name", "2090"), *cisco_call("DUP-1")]
    await acct(nas, "Start", used)
    stop = accounting_request(
        RADIUS_SECRET, [("Acct-Status-Type", "Stop"), *used, ("Acct-Session-Time", "300")]
    )
    data = wire(stop)
    before = sample("ocs_radius_duplicates_total", type="acct")
    replies = [await udp.exchange(data, nas.acct_port) for _ in range(3)]
    assert all(r is not None for r in replies), replies
    assert replies[0] == replies[1] == replies[2]
    assert verified(stop, replies[0] or b"")
    assert sample("ocs_radius_duplicates_total", type="acct") == before + 2
    # 300 s at 0.012 a minute = 0.06, once.
    view = await account(nas.app, "2090")
    assert view["balance"] == "0.940000" and view["lines_in_use"] == 0
    assert (await cdr_of(nas, "DUP-1"))["charged"] == 60_000
    await ledger_balance(nas, "2090", 940_000)


async def test_a_burst_of_copies_of_one_stop_charges_once(
    nas: RunningRadius, udp: UdpClient
) -> None:
    await new_account(nas.app, "2091", balance="1.00")
    await accepted(nas, call_request("2091", GERMANY, "DUP-2"))
    used = [("User-Name", "2091"), *cisco_call("DUP-2")]
    await acct(nas, "Start", used)
    data = wire(
        accounting_request(
            RADIUS_SECRET, [("Acct-Status-Type", "Stop"), *used, ("Acct-Session-Time", "300")]
        )
    )
    for _ in range(3):
        udp.send(data, nas.acct_port)
    first = await udp.receive()
    assert first is not None
    assert all(copy == first for copy in udp.unread())
    view = await account(nas.app, "2091")
    assert view["balance"] == "0.940000" and view["lines_in_use"] == 0


async def test_a_stop_sent_again_as_a_new_request_charges_once(nas: RunningRadius) -> None:
    await new_account(nas.app, "2092", balance="1.00")
    await accepted(nas, call_request("2092", GERMANY, "DUP-3"))
    used = [("User-Name", "2092"), *cisco_call("DUP-3")]
    await acct(nas, "Start", used)
    before = sample("ocs_radius_packets_total", type="accounting-stop", result="repeated")
    for delay in ("0", "5", "10"):  # a new Acct-Delay-Time each time: new request ids
        await acct(nas, "Stop", [*used, ("Acct-Session-Time", "300"), ("Acct-Delay-Time", delay)])
    assert sample("ocs_radius_packets_total", type="accounting-stop", result="repeated") == (
        before + 2
    )
    assert (await account(nas.app, "2092"))["balance"] == "0.940000"


async def test_a_retransmitted_access_request_takes_one_line(
    nas: RunningRadius, udp: UdpClient
) -> None:
    await new_account(nas.app, "2093", balance="10.00", max_lines=3)
    # No call id at all: only the reply cache can tell the copies apart from new calls.
    request = access_request(RADIUS_SECRET, [("User-Name", "2093"), ("Called-Station-Id", GERMANY)])
    data = wire(request)
    before = sample("ocs_radius_duplicates_total", type="auth")
    first = await udp.exchange(data, nas.auth_port)
    second = await udp.exchange(data, nas.auth_port)
    assert first is not None and first[0] == 2
    assert second == first
    assert sample("ocs_radius_duplicates_total", type="auth") == before + 1
    view = await account(nas.app, "2093")
    assert view["lines_in_use"] == 1 and view["reserved"] == "2.880000"


# -- accounting: interim, debit on interim, stale calls, NAS reboot --------------------------


async def test_interim_update_records_progress_without_debiting(nas: RunningRadius) -> None:
    await new_account(nas.app, "2100", balance="1.00")
    await accepted(nas, call_request("2100", GERMANY, "INT-1"))
    used = [("User-Name", "2100"), *cisco_call("INT-1")]
    await acct(nas, "Start", used)
    await acct(nas, "Interim-Update", [*used, ("Acct-Session-Time", "30")])
    entry = await nas.app.services.store.live_entry("2100", "INT-1")
    assert entry is not None and entry.used == 30 and entry.debited == 0
    view = await account(nas.app, "2100")
    assert view["balance"] == "1.000000" and view["reserved"] == "1.000000"
    await acct(nas, "Stop", [*used, ("Acct-Session-Time", "45")])
    assert (await account(nas.app, "2100"))["balance"] == "0.991000"


async def test_debit_on_interim_takes_the_used_part_and_stop_the_rest(
    nas: RunningRadius,
) -> None:
    await new_account(nas.app, "2110", balance="5.00")
    async with extra_server(nas, debit_on_interim=True) as debiting:
        call = call_request("2110", GERMANY, "DEBIT-1")
        await accepted(nas, call, port=debiting.auth_port)
        used = [("User-Name", "2110"), *cisco_call("DEBIT-1")]
        port = debiting.acct_port
        await acct(nas, "Start", used, port=port)
        await acct(nas, "Interim-Update", [*used, ("Acct-Session-Time", "60")], port=port)
        view = await account(nas.app, "2110")
        # 60 s at 0.012 a minute, debited now, out of the call's reservation (2.88):
        # the funds available to other calls do not change.
        assert view["balance"] == "4.988000"
        assert view["reserved"] == "2.868000" and view["available"] == "2.120000"
        await acct(nas, "Interim-Update", [*used, ("Acct-Session-Time", "60")], port=port)
        assert (await account(nas.app, "2110"))["balance"] == "4.988000"  # repeated: no debit
        await acct(nas, "Stop", [*used, ("Acct-Session-Time", "90")], port=port)
    view = await account(nas.app, "2110")
    assert view["balance"] == "4.982000" and view["reserved"] == "0.000000"
    cdr = await cdr_of(nas, "DEBIT-1")
    assert cdr["charged"] == cdr["rated_cost"] == 18_000
    await ledger_balance(nas, "2110", 4_982_000)
    moves = await rows(
        nas, "SELECT kind, amount FROM ledger WHERE account_id = $1 AND kind <> 'opening'", "2110"
    )
    assert sorted((m["kind"], m["amount"]) for m in moves) == [
        ("call", -6_000),
        ("interim", -12_000),
    ]


async def test_a_prepaid_call_running_past_its_grant_never_overdraws(nas: RunningRadius) -> None:
    await new_account(nas.app, "2114", balance="1.00")
    reply = await accepted(nas, call_request("2114", GERMANY, "OVERRUN"))
    assert reply.attributes["Session-Timeout"] == ["5000"]
    used = [("User-Name", "2114"), *cisco_call("OVERRUN")]
    await acct(nas, "Start", used)
    await acct(nas, "Stop", [*used, ("Acct-Session-Time", "10000")])  # twice the grant
    view = await account(nas.app, "2114")
    assert view["balance"] == "0.000000" and view["lines_in_use"] == 0
    cdr = await cdr_of(nas, "OVERRUN")
    assert (cdr["rated_cost"], cdr["charged"]) == (2_000_000, 1_000_000)


async def test_an_unanswered_call_stopped_without_start_is_free(nas: RunningRadius) -> None:
    await new_account(nas.app, "2115", balance="1.00")
    await accepted(nas, call_request("2115", UK_MOBILE, "UNANSWERED"))
    await acct(
        nas, "Stop", [("User-Name", "2115"), *cisco_call("UNANSWERED"), ("Acct-Session-Time", "0")]
    )
    view = await account(nas.app, "2115")
    assert view["balance"] == "1.000000"  # not even UK Mobile's connect fee
    assert view["reserved"] == "0.000000" and view["lines_in_use"] == 0
    assert (await cdr_of(nas, "UNANSWERED"))["charged"] == 0


async def test_an_accept_never_started_is_released_after_the_start_timeout(
    nas: RunningRadius,
) -> None:
    await new_account(nas.app, "2120", balance="10.00", max_lines=2)
    async with extra_server(nas, start_timeout=1) as short:
        await accepted(nas, call_request("2120", GERMANY, "NOSTART"), port=short.auth_port)
        await accepted(nas, call_request("2120", GERMANY, "STARTED"), port=short.auth_port)
        await acct(nas, "Start", [("User-Name", "2120"), *cisco_call("STARTED")])
        view = await account(nas.app, "2120")
        assert view["lines_in_use"] == 2
        janitor = Janitor(short.calls, nas.app.services.store)
        closed = await janitor.sweep(now=int(time.time()) + 30)
    assert closed == 1
    live = await nas.app.services.store.live_calls_of("2120")
    assert list(live) == ["STARTED"]
    view = await account(nas.app, "2120")
    assert view["lines_in_use"] == 1
    assert view["reserved"] == "2.880000"  # the started call's reservation only
    assert view["balance"] == "10.000000"
    cdr = await cdr_of(nas, "NOSTART")
    assert cdr["termination_cause"] == "start-timeout"
    assert cdr["charged"] == 0 and cdr["duration"] == 0
    # A Start arriving after the release is acknowledged and takes no line.
    await acct(nas, "Start", [("User-Name", "2120"), *cisco_call("NOSTART")])
    assert (await account(nas.app, "2120"))["lines_in_use"] == 1


async def test_a_session_time_of_minus_one_is_not_charged_as_a_week(nas: RunningRadius) -> None:
    # 4294967295 is a NAS's -1 in an unsigned field: no call's length. The Stop is
    # charged the time since the Start instead, here a second or so.
    await new_account(nas.app, "2132", balance="10.00")
    await accepted(nas, call_request("2132", GERMANY, "MINUS-ONE"))
    call = [("User-Name", "2132"), *cisco_call("MINUS-ONE")]
    await acct(nas, "Start", call)
    before = int(time.time())
    await acct(nas, "Stop", [*call, ("Acct-Session-Time", "4294967295")])
    cdr = await cdr_of(nas, "MINUS-ONE")
    assert 0 <= cdr["duration"] <= int(time.time()) - before + 1, cdr
    assert cdr["charged"] <= cdr["duration"] * 200  # 0.012 a minute, by the second


async def test_a_delayed_accounting_request_dates_the_start_and_end_it_reports(
    nas: RunningRadius,
) -> None:
    # The NAS could not reach ocs for a while: its Start carries Acct-Delay-Time. The
    # call started that long ago, though never before it was authorized; a Stop without
    # Acct-Session-Time is charged from that start to the end, Acct-Delay-Time before
    # it came. Both were dated by their arrival: 50 s of talk were charged as 0.
    await new_account(nas.app, "2134", balance="10.00", max_lines=2)
    # Authorized a minute ago, by a server whose clock says so.
    async with extra_server(nas, clock=lambda: time.time() - 60) as earlier:
        for conf_id in ("DELAYED-1", "DELAYED-2"):
            await accepted(nas, call_request("2134", GERMANY, conf_id), port=earlier.auth_port)
    first, second = (
        [("User-Name", "2134"), *cisco_call(conf_id)] for conf_id in ("DELAYED-1", "DELAYED-2")
    )
    before = int(time.time())
    await acct(nas, "Start", [*first, ("Acct-Delay-Time", "50")])
    await acct(nas, "Stop", [*first, ("Acct-Delay-Time", "20")])
    after = int(time.time())
    # Started 50 s before the Start came, ended 20 s before the Stop came: 30 s.
    assert (
        30 - (after - before) <= (await cdr_of(nas, "DELAYED-1"))["duration"] <= 30 + after - before
    )
    # A delay longer than the call has been authorized: it started when authorized.
    await acct(nas, "Start", [*second, ("Acct-Delay-Time", "3600")])
    started = (await nas.app.services.store.live_calls_of("2134"))["DELAYED-2"].started
    assert before - 61 <= started <= after - 59


async def test_accounting_on_from_a_nas_without_a_clock_closes_its_calls(
    nas: RunningRadius,
) -> None:
    # Booted 35 s ago with no clock set: its Event-Timestamp reads 1970-01-01 00:00:35.
    # Taken as the event's time, it closed nothing, and the calls stayed live.
    await new_account(nas.app, "2131")
    await accepted(nas, call_request("2131", GERMANY, "NO-CLOCK"))
    await acct(nas, "Start", [("User-Name", "2131"), *cisco_call("NO-CLOCK")])
    await acct(nas, "Accounting-On", [("NAS-IP-Address", "127.0.0.1"), ("Event-Timestamp", 35)])
    assert await nas.app.services.store.live_calls_of("2131") == {}
    assert (await cdr_of(nas, "NO-CLOCK"))["termination_cause"] == "nas-reboot"


async def test_a_retransmitted_accounting_on_stamped_ahead_spares_the_calls_since_the_first(
    nas: RunningRadius,
) -> None:
    """A NAS whose clock runs ten minutes ahead restarts: its Accounting-On is stamped in
    the future, so the first copy closes the calls authorized before it came. The NAS
    authorizes a call, then retransmits the Accounting-On (Acct-Delay-Time updated, so
    not the reply cache's copy): the stamp was cut to each copy's receipt, and the
    retransmission closed the new call as nas-reboot, its hold freed."""
    await new_account(nas.app, "2133", balance="10.00", max_lines=3)
    await accepted(nas, call_request("2133", GERMANY, "AHEAD-OLD"))
    await acct(nas, "Start", [("User-Name", "2133"), *cisco_call("AHEAD-OLD")])
    restart = [("NAS-IP-Address", "127.0.0.1"), ("Event-Timestamp", int(time.time()) + 600)]
    await acct(nas, "Accounting-On", [*restart, ("Acct-Delay-Time", "0")])
    assert (await cdr_of(nas, "AHEAD-OLD"))["termination_cause"] == "nas-reboot"
    # Back up, the NAS carries a new call; the Accounting-On's answer was lost.
    await accepted(nas, call_request("2133", GERMANY, "AHEAD-NEW"))
    talking = [("User-Name", "2133"), *cisco_call("AHEAD-NEW")]
    await acct(nas, "Start", talking)
    await acct(nas, "Accounting-On", [*restart, ("Acct-Delay-Time", "3")])
    assert list(await nas.app.services.store.live_calls_of("2133")) == ["AHEAD-NEW"]
    view = await account(nas.app, "2133")
    assert view["lines_in_use"] == 1 and view["reserved"] == "2.880000"
    # Its Stop charges it as any call: 60 s at 0.012 a minute, not a late stop.
    await acct(nas, "Stop", [*talking, ("Acct-Session-Time", "60")])
    cdr = await cdr_of(nas, "AHEAD-NEW")
    assert cdr["termination_cause"] not in ("nas-reboot", "late-stop"), cdr
    assert cdr["charged"] == 12_000
    # The NAS's next restart, stamped later, closes what it carries then.
    await accepted(nas, call_request("2133", GERMANY, "AHEAD-NEXT"))
    await acct(nas, "Start", [("User-Name", "2133"), *cisco_call("AHEAD-NEXT")])
    later = [("NAS-IP-Address", "127.0.0.1"), ("Event-Timestamp", int(time.time()) + 601)]
    await acct(nas, "Accounting-On", later)
    assert await nas.app.services.store.live_calls_of("2133") == {}
    assert (await cdr_of(nas, "AHEAD-NEXT"))["termination_cause"] == "nas-reboot"


async def test_accounting_on_closes_the_calls_of_that_nas_by_their_last_report(
    nas: RunningRadius,
) -> None:
    await new_account(nas.app, "2130", balance="10.00", max_lines=3)
    await accepted(nas, call_request("2130", GERMANY, "REBOOT-TALKING"))
    talking = [("User-Name", "2130"), *cisco_call("REBOOT-TALKING")]
    await acct(nas, "Start", talking)
    await acct(nas, "Interim-Update", [*talking, ("Acct-Session-Time", "40")])
    await accepted(nas, call_request("2130", GERMANY, "REBOOT-RINGING"))
    async with extra_server(nas, nas_name="other-nas") as other:
        await accepted(nas, call_request("2130", GERMANY, "ELSEWHERE"), port=other.auth_port)
    await acct(nas, "Accounting-On", [("NAS-IP-Address", "127.0.0.1")])
    live = await nas.app.services.store.live_calls_of("2130")
    assert list(live) == ["ELSEWHERE"]  # another NAS's call lives on
    talked = await cdr_of(nas, "REBOOT-TALKING")
    assert talked["termination_cause"] == "nas-reboot"
    assert talked["duration"] == 40 and talked["charged"] == 8_000  # 40 s at 0.012 a minute
    assert talked["nas"] == "test-nas"
    rang = await cdr_of(nas, "REBOOT-RINGING")
    assert rang["termination_cause"] == "nas-reboot" and rang["charged"] == 0
    view = await account(nas.app, "2130")
    assert view["balance"] == "9.992000" and view["lines_in_use"] == 1
    assert view["reserved"] == "2.880000"


# -- shutdown -----------------------------------------------------------------------------


@pytest.mark.replaces_hot_path_function
async def test_a_reply_whose_socket_closed_first_is_counted_as_a_drop(
    nas: RunningRadius, udp: UdpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown stops reading, drains, then closes (tests/test_serve_cleanup.py). Where a
    socket is closed under a request still running (the drain's time ran out), the reply
    it can no longer send is counted, not lost in silence."""
    await new_account(nas.app, "2150", balance="1.00")
    entered, release = asyncio.Event(), asyncio.Event()
    real = radius_server.answer_access_request

    async def held(*args: Any, **kwargs: Any) -> Any:
        answer = await real(*args, **kwargs)
        entered.set()
        await release.wait()
        return answer

    monkeypatch.setattr(radius_server, "answer_access_request", held)
    before = sample("ocs_radius_dropped_total", reason="send_failed")
    udp.send(
        wire(access_request(RADIUS_SECRET, call_request("2150", GERMANY, "closed-1"))),
        nas.auth_port,
    )
    await asyncio.wait_for(entered.wait(), 5)
    nas.server.close_listeners()
    release.set()
    await dropped("send_failed", before)


@pytest.mark.replaces_hot_path_function
async def test_a_stop_of_reading_still_answers_the_requests_in_flight(
    nas: RunningRadius, udp: UdpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown's first stage stops reading, yet the request in flight is answered
    through the same socket; the drain then closes the sockets."""
    await new_account(nas.app, "2151", balance="1.00")
    entered, release = asyncio.Event(), asyncio.Event()
    real = radius_server.answer_access_request

    async def held(*args: Any, **kwargs: Any) -> Any:
        answer = await real(*args, **kwargs)
        entered.set()
        await release.wait()
        return answer

    monkeypatch.setattr(radius_server, "answer_access_request", held)
    request = access_request(RADIUS_SECRET, call_request("2151", GERMANY, "draining-1"))
    udp.send(wire(request), nas.auth_port)
    await asyncio.wait_for(entered.wait(), 5)
    nas.server.stop_listening()
    release.set()
    await nas.server.drain(5)
    reply = await udp.receive()
    assert reply is not None and verified(request, reply)
    assert decode_reply(request, reply).code == rp.AccessAccept
    assert all(listener.sock.fileno() == -1 for listener in nas.server.listeners)
    view = await account(nas.app, "2151")
    assert view["lines_in_use"] == 1


# -- metrics ------------------------------------------------------------------------------


async def test_metrics_count_packets_by_type_and_result_and_rejects_by_code(
    nas: RunningRadius,
) -> None:
    await new_account(nas.app, "2140", balance="1.00")

    def counts() -> dict[str, float]:
        return {
            "accept": sample("ocs_radius_packets_total", type="access", result="accept"),
            "reject": sample("ocs_radius_packets_total", type="access", result="reject"),
            "start": sample("ocs_radius_packets_total", type="accounting-start", result="ok"),
            "stop": sample("ocs_radius_packets_total", type="accounting-stop", result="ok"),
            "unknown": sample(
                "ocs_radius_packets_total", type="accounting-stop", result="unknown_call"
            ),
            "code1": sample(
                "ocs_radius_rejects_total", return_code="1", reason="account_not_found"
            ),
            "code4": sample("ocs_radius_rejects_total", return_code="4", reason="zero_balance"),
            "latency": sample("ocs_radius_request_duration_seconds_count", type="access"),
        }

    before = counts()
    await accepted(nas, call_request("2140", GERMANY, "MET-1"))
    await auth(nas, call_request("nobody", GERMANY, "MET-2"))
    used = [("User-Name", "2140"), *cisco_call("MET-1")]
    await acct(nas, "Start", used)
    await acct(nas, "Stop", [*used, ("Acct-Session-Time", "5")])
    await acct(nas, "Stop", [("User-Name", "2140"), *cisco_call("NEVER-AUTHORIZED")])
    after = counts()
    delta = {name: after[name] - before[name] for name in before}
    assert delta == {
        "accept": 1,
        "reject": 1,
        "start": 1,
        "stop": 1,
        "unknown": 1,
        "code1": 1,
        "code4": 0,
        "latency": 2,
    }
    # The same figures on /metrics, as Prometheus scrapes them.
    response = await nas.app.client.get("/metrics")
    scraped = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await response.text())
        for s in family.samples
    }
    accept_key = ("ocs_radius_packets_total", (("result", "accept"), ("type", "access")))
    reject_key = (
        "ocs_radius_rejects_total",
        (("reason", "account_not_found"), ("return_code", "1")),
    )
    assert scraped[accept_key] == after["accept"]
    assert scraped[reject_key] == after["code1"]


async def test_a_nas_translation_set_replaces_the_plans_for_its_calls(
    nas: RunningRadius,
) -> None:
    # This gateway sends UK national numbers ("020 ..."); the plan has no rules.
    await new_account(nas.app, "2301", balance="1.00")
    national = [{"match": "^0", "replace": "44"}]
    gateway = NasClient(
        "uk-gw",
        ipaddress.ip_network("127.0.0.1/32"),
        RADIUS_SECRET.encode(),
        True,
        translation=validate_rules(national),
    )
    async with extra_server(nas, clients=ClientTable([gateway])) as uk:
        reply = await accepted(nas, call_request("2301", "02079460000", "NAS-TR-1"), uk.auth_port)
        # UK Fixed at 0.010 a minute, 60/60: 1.00 buys 100 minutes.
        assert reply.attributes["Session-Timeout"] == ["6000"]
    # Through the plain NAS the same digits are not a UK number: no tariff starts with 0.
    refused = await auth(nas, call_request("2301", "02079460000", "NAS-TR-2"))
    assert refused.code == "Access-Reject" and return_code(refused) == "h323-return-code=9"
