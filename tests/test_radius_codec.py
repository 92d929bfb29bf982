"""The RADIUS dictionary and codec (pyrad) against FreeRADIUS's real radclient.

A tiny UDP listener in the test decodes what radclient sends with pyrad and our
dictionary, checks the authenticators with the shared secret, and answers (or,
for a request that fails the check, stays silent as a RADIUS server must).
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from pyrad import packet
from pyrad.dictionary import Dictionary

from ocs.radius.radclient_hint import quote_value, radclient_command
from tests.radclient import RadiusReply, radclient, unquote

DICTIONARY = Path(__file__).resolve().parent.parent / "ocs/radius/dictionaries/dictionary"
FREERADIUS_DICTIONARIES = Path("/usr/share/freeradius")
SECRET = "testing123"

# (name, code, type); vendor attributes have code (vendor, code).
REQUIRED_ATTRIBUTES: list[tuple[str, int | tuple[int, int], str]] = [
    ("User-Name", 1, "string"),
    ("User-Password", 2, "string"),
    ("CHAP-Password", 3, "octets"),
    ("NAS-IP-Address", 4, "ipaddr"),
    ("NAS-Port", 5, "integer"),
    ("Service-Type", 6, "integer"),
    ("Framed-Protocol", 7, "integer"),
    ("Framed-IP-Address", 8, "ipaddr"),
    ("Framed-IP-Netmask", 9, "ipaddr"),
    ("Filter-Id", 11, "string"),
    ("Reply-Message", 18, "string"),
    ("State", 24, "octets"),
    ("Class", 25, "octets"),
    ("Vendor-Specific", 26, "octets"),
    ("Session-Timeout", 27, "integer"),
    ("Idle-Timeout", 28, "integer"),
    ("Termination-Action", 29, "integer"),
    ("Called-Station-Id", 30, "string"),
    ("Calling-Station-Id", 31, "string"),
    ("NAS-Identifier", 32, "string"),
    ("Proxy-State", 33, "octets"),
    ("Acct-Status-Type", 40, "integer"),
    ("Acct-Delay-Time", 41, "integer"),
    ("Acct-Input-Octets", 42, "integer"),
    ("Acct-Output-Octets", 43, "integer"),
    ("Acct-Session-Id", 44, "string"),
    ("Acct-Authentic", 45, "integer"),
    ("Acct-Session-Time", 46, "integer"),
    ("Acct-Input-Packets", 47, "integer"),
    ("Acct-Output-Packets", 48, "integer"),
    ("Acct-Terminate-Cause", 49, "integer"),
    ("Acct-Multi-Session-Id", 50, "string"),
    ("Acct-Link-Count", 51, "integer"),
    ("Acct-Input-Gigawords", 52, "integer"),
    ("Acct-Output-Gigawords", 53, "integer"),
    ("Event-Timestamp", 55, "date"),
    ("CHAP-Challenge", 60, "octets"),
    ("NAS-Port-Type", 61, "integer"),
    ("Connect-Info", 77, "string"),
    ("EAP-Message", 79, "octets"),
    ("Message-Authenticator", 80, "octets"),
    ("Acct-Interim-Interval", 85, "integer"),
    ("NAS-Port-Id", 87, "string"),
    ("Error-Cause", 101, "integer"),
    ("Cisco-AVPair", (9, 1), "string"),
    ("h323-remote-address", (9, 23), "string"),
    ("h323-conf-id", (9, 24), "string"),
    ("h323-setup-time", (9, 25), "string"),
    ("h323-call-origin", (9, 26), "string"),
    ("h323-call-type", (9, 27), "string"),
    ("h323-connect-time", (9, 28), "string"),
    ("h323-disconnect-time", (9, 29), "string"),
    ("h323-disconnect-cause", (9, 30), "string"),
    ("h323-voice-quality", (9, 31), "string"),
    ("h323-gw-id", (9, 33), "string"),
    ("h323-incoming-conf-id", (9, 35), "string"),
    ("h323-credit-amount", (9, 101), "string"),
    ("h323-credit-time", (9, 102), "string"),
    ("h323-return-code", (9, 103), "string"),
    ("h323-prompt-id", (9, 104), "string"),
    ("h323-time-and-day", (9, 105), "string"),
    ("h323-redirect-number", (9, 106), "string"),
    ("h323-preferred-lang", (9, 107), "string"),
    ("h323-redirect-ip-address", (9, 108), "string"),
    ("h323-billing-model", (9, 109), "string"),
    ("h323-currency", (9, 110), "string"),
]


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    return Dictionary(str(DICTIONARY))


# --- the dictionary ---------------------------------------------------------------


def test_dictionary_defines_the_attributes_with_their_real_numbers(
    dictionary: Dictionary,
) -> None:
    assert dictionary.skipped_attributes == set()
    for name, code, datatype in REQUIRED_ATTRIBUTES:
        assert dictionary.attrindex.GetForward(name) == code, name
        assert dictionary[name].type == datatype, name
    assert dictionary["User-Password"].encrypt == 1
    assert dictionary.vendors.GetForward("Cisco") == 9


def test_dictionary_values(dictionary: Dictionary) -> None:
    def value(attribute: str, name: str) -> int:
        return int.from_bytes(dictionary[attribute].values.GetForward(name), "big")

    assert {
        name: value("Acct-Status-Type", name)
        for name in ("Start", "Stop", "Interim-Update", "Accounting-On", "Accounting-Off")
    } == {"Start": 1, "Stop": 2, "Interim-Update": 3, "Accounting-On": 7, "Accounting-Off": 8}
    # 3 decodes to Interim-Update (the old alias Alive is not defined).
    assert dictionary["Acct-Status-Type"].values.GetBackward((3).to_bytes(4, "big")) == (
        "Interim-Update"
    )
    assert value("Acct-Terminate-Cause", "User-Request") == 1
    assert value("Acct-Terminate-Cause", "Lost-Carrier") == 2
    assert value("Acct-Terminate-Cause", "Idle-Timeout") == 4
    assert value("Acct-Terminate-Cause", "Session-Timeout") == 5
    assert value("Acct-Terminate-Cause", "Admin-Reset") == 6
    assert value("Acct-Terminate-Cause", "NAS-Request") == 10
    assert value("Service-Type", "Login-User") == 1
    assert value("NAS-Port-Type", "Virtual") == 5
    assert value("Error-Cause", "Session-Context-Not-Found") == 503
    assert value("Error-Cause", "Invalid-Attribute-Value") == 407


def test_dictionary_agrees_with_freeradius(dictionary: Dictionary) -> None:
    # FreeRADIUS's own dictionaries come with freeradius-utils, which CI installs.
    assert (FREERADIUS_DICTIONARIES / "dictionary.cisco").exists(), "install freeradius-utils"
    freeradius = Dictionary(
        *(
            str(FREERADIUS_DICTIONARIES / f"dictionary.{name}")
            for name in (
                "rfc2865",
                "rfc2866",
                "rfc2869",
                "rfc3162",
                "rfc3576",
                "rfc3580",
                "rfc5176",
                "cisco",
            )
        )
    )
    for name, ours in dictionary.attributes.items():
        if name == "Vendor-Specific":  # FreeRADIUS type "vsa", which pyrad skips
            continue
        theirs = freeradius[name]
        assert (ours.code, ours.type, ours.vendor, ours.encrypt) == (
            theirs.code,
            theirs.type,
            theirs.vendor,
            theirs.encrypt,
        ), name
        for key, encoded in ours.values.forward.items():
            assert theirs.values.GetForward(key) == encoded, (name, key)


# --- pyrad encode / decode ------------------------------------------------------


def test_access_request_round_trip(dictionary: Dictionary) -> None:
    request = packet.AuthPacket(secret=SECRET.encode(), dict=dictionary)
    request.add_message_authenticator()
    request["User-Name"] = "4412345678"
    request["User-Password"] = request.PwCrypt("1234")
    request["NAS-IP-Address"] = "192.0.2.10"
    request["NAS-Port"] = 7
    request["NAS-Port-Type"] = "Virtual"
    request["Service-Type"] = "Login-User"
    request["Called-Station-Id"] = "4930123456"
    request["Calling-Station-Id"] = "4412345678"
    request["NAS-Identifier"] = "gw1"
    request["Event-Timestamp"] = 1_700_000_000
    request["Proxy-State"] = b"\x01\x02"
    request["Cisco-AVPair"] = ["call-id=abc@192.0.2.10", "h323-ivr-out=x:y"]
    request["h323-conf-id"] = "h323-conf-id=3F2A 11C2 0000 0001"
    request["h323-call-origin"] = "h323-call-origin=answer"
    raw = request.RequestPacket()

    decoded = packet.AuthPacket(packet=raw, secret=SECRET.encode(), dict=dictionary)
    assert decoded.keys()[0] == "Message-Authenticator"
    assert decoded.verify_message_authenticator()
    assert decoded.PwDecrypt(decoded["User-Password"][0]) == "1234"
    assert decoded["User-Name"] == ["4412345678"]
    assert decoded["NAS-IP-Address"] == ["192.0.2.10"]
    assert decoded["NAS-Port"] == [7]
    assert decoded["NAS-Port-Type"] == ["Virtual"]
    assert decoded["Service-Type"] == ["Login-User"]
    assert decoded["Event-Timestamp"] == [1_700_000_000]
    assert decoded["Proxy-State"] == [b"\x01\x02"]
    assert decoded["Cisco-AVPair"] == ["call-id=abc@192.0.2.10", "h323-ivr-out=x:y"]
    assert decoded["h323-conf-id"] == ["h323-conf-id=3F2A 11C2 0000 0001"]

    reply = decoded.CreateReply()
    reply["Session-Timeout"] = 600
    reply["h323-credit-time"] = "h323-credit-time=600"
    reply["h323-return-code"] = "h323-return-code=0"
    raw_reply = reply.ReplyPacket()
    answer = packet.AuthPacket(packet=raw_reply, secret=SECRET.encode(), dict=dictionary)
    assert request.VerifyReply(answer, enforce_ma=True)
    assert answer.code == packet.AccessAccept
    assert answer["Proxy-State"] == [b"\x01\x02"]  # CreateReply copies it
    assert answer["Session-Timeout"] == [600]
    assert answer["h323-credit-time"] == ["h323-credit-time=600"]


def test_accounting_request_round_trip(dictionary: Dictionary) -> None:
    request = packet.AcctPacket(secret=SECRET.encode(), dict=dictionary)
    request["Acct-Status-Type"] = "Interim-Update"
    request["Acct-Session-Id"] = "sess-1"
    request["Acct-Session-Time"] = 60
    request["Acct-Terminate-Cause"] = "User-Request"
    request["h323-disconnect-cause"] = "h323-disconnect-cause=10"
    raw = request.RequestPacket()

    decoded = packet.AcctPacket(packet=raw, secret=SECRET.encode(), dict=dictionary)
    assert decoded.VerifyAcctRequest()
    assert decoded["Acct-Status-Type"] == ["Interim-Update"]
    assert decoded["Acct-Session-Time"] == [60]
    assert decoded["Acct-Terminate-Cause"] == ["User-Request"]
    assert decoded["h323-disconnect-cause"] == ["h323-disconnect-cause=10"]
    wrong = packet.AcctPacket(packet=raw, secret=b"wrong", dict=dictionary)
    assert not wrong.VerifyAcctRequest()


# --- radclient against a listener -------------------------------------------------

Handler = Callable[[packet.Packet], packet.Packet | None]


@dataclass
class Listener:
    """A UDP RADIUS listener: verified requests go to ``handler``, others are dropped."""

    dictionary: Dictionary
    handler: Handler
    secret: str = SECRET
    port: int = 0
    received: list[packet.Packet] = field(default_factory=list)
    dropped: list[packet.Packet] = field(default_factory=list)


def _verified(request: packet.Packet) -> bool:
    if isinstance(request, packet.AcctPacket):
        return request.VerifyAcctRequest() and (
            not request.message_authenticator or request.verify_message_authenticator()
        )
    # An Access-Request is only authenticated by its Message-Authenticator.
    return not request.message_authenticator or request.verify_message_authenticator()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not a subclass of asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        listener = self.listener
        kind = packet.AcctPacket if data[0] == packet.AccountingRequest else packet.AuthPacket
        request = kind(packet=data, secret=listener.secret.encode(), dict=listener.dictionary)
        if not _verified(request):
            listener.dropped.append(request)
            return
        listener.received.append(request)
        reply = listener.handler(request)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply.ReplyPacket(), addr)


@asynccontextmanager
async def udp_listener(dictionary: Dictionary, handler: Handler) -> AsyncIterator[Listener]:
    listener = Listener(dictionary, handler)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Protocol(listener), local_addr=("127.0.0.1", 0)
    )
    listener.port = transport.get_extra_info("sockname")[1]
    try:
        yield listener
    finally:
        transport.close()


def accept_with_credit(request: packet.Packet) -> packet.Packet:
    reply = request.CreateReply()  # AuthPacket replies carry a Message-Authenticator
    reply.add_message_authenticator()
    reply["Session-Timeout"] = 600
    reply["h323-credit-time"] = "h323-credit-time=600"
    reply["h323-return-code"] = "h323-return-code=0"
    return reply


CALL = [
    ("User-Name", "4412345678"),
    ("NAS-IP-Address", "192.0.2.10"),
    ("Called-Station-Id", "4930123456"),
    ("Calling-Station-Id", "4412345678"),
    ("h323-conf-id", "h323-conf-id=3F2A11C2 00000001 00000000 0000ABCD"),
    ("Cisco-AVPair", "call-id=abc-123@192.0.2.10"),
    ("Cisco-AVPair", "h323-ivr-out=pin:1234"),
]


async def test_access_request_with_message_authenticator(dictionary: Dictionary) -> None:
    async with udp_listener(dictionary, accept_with_credit) as listener:
        reply = await radclient("auth", listener.port, SECRET, CALL)

    assert reply.code == "Access-Accept", reply.output
    [request] = listener.received
    assert request.code == packet.AccessRequest
    assert request["User-Name"] == ["4412345678"]
    assert request["NAS-IP-Address"] == ["192.0.2.10"]
    assert request["Called-Station-Id"] == ["4930123456"]
    assert request["h323-conf-id"] == ["h323-conf-id=3F2A11C2 00000001 00000000 0000ABCD"]
    assert request["Cisco-AVPair"] == ["call-id=abc-123@192.0.2.10", "h323-ivr-out=pin:1234"]
    assert request.message_authenticator is True
    assert request.keys()[0] == "Message-Authenticator"
    assert request.verify_message_authenticator() is True

    assert reply.attributes["Session-Timeout"] == ["600"]
    assert reply.attributes["h323-credit-time"] == ["h323-credit-time=600"]
    assert reply.attributes["h323-return-code"] == ["h323-return-code=0"]
    assert (reply.first("Message-Authenticator") or "").startswith("0x")


async def test_access_request_without_message_authenticator(dictionary: Dictionary) -> None:
    async with udp_listener(dictionary, accept_with_credit) as listener:
        reply = await radclient(
            "auth", listener.port, SECRET, dict(CALL), message_authenticator=False
        )

    assert reply.code == "Access-Accept", reply.output
    [request] = listener.received
    assert request.message_authenticator is None
    assert "Message-Authenticator" not in request
    assert request["Cisco-AVPair"] == ["h323-ivr-out=pin:1234"]  # a dict keeps the last one


async def test_proxy_state_is_echoed(dictionary: Dictionary) -> None:
    async with udp_listener(dictionary, accept_with_credit) as listener:
        reply = await radclient(
            "auth", listener.port, SECRET, [("User-Name", "alice"), ("Proxy-State", b"\x07\x08")]
        )
    assert reply.code == "Access-Accept", reply.output
    assert listener.received[0]["Proxy-State"] == [b"\x07\x08"]
    assert reply.attributes["Proxy-State"] == ["0x0708"]


async def test_access_reject(dictionary: Dictionary) -> None:
    def reject(request: packet.Packet) -> packet.Packet:
        reply = request.CreateReply()
        reply.code = packet.AccessReject
        reply["h323-return-code"] = "h323-return-code=4"
        reply["Reply-Message"] = "zero balance"
        return reply

    async with udp_listener(dictionary, reject) as listener:
        reply = await radclient("auth", listener.port, SECRET, CALL)
    assert reply.code == "Access-Reject", reply.output
    assert reply.attributes["h323-return-code"] == ["h323-return-code=4"]
    assert reply.attributes["Reply-Message"] == ["zero balance"]


async def test_accounting_request(dictionary: Dictionary) -> None:
    def respond(request: packet.Packet) -> packet.Packet:
        return request.CreateReply()

    start = [
        ("Acct-Status-Type", "Start"),
        ("Acct-Session-Id", "sess-1"),
        ("Acct-Session-Time", "0"),
        ("Event-Timestamp", "1700000000"),
        *CALL,
        ("h323-setup-time", "h323-setup-time=12:00:00.000 UTC Tue Nov 14 2023"),
    ]
    async with udp_listener(dictionary, respond) as listener:
        reply = await radclient("acct", listener.port, SECRET, start)
        stop = await radclient(
            "acct",
            listener.port,
            SECRET,
            {"Acct-Status-Type": "Stop", "Acct-Session-Id": "sess-1", "Acct-Session-Time": 61},
            message_authenticator=False,
        )

    assert reply.code == "Accounting-Response", reply.output
    assert stop.code == "Accounting-Response", stop.output
    first, second = listener.received
    assert first.code == packet.AccountingRequest
    assert first.verify_message_authenticator()  # radclient signs accounting too
    assert first["Acct-Status-Type"] == ["Start"]
    assert first["Event-Timestamp"] == [1_700_000_000]
    assert first["h323-conf-id"] == ["h323-conf-id=3F2A11C2 00000001 00000000 0000ABCD"]
    assert first["h323-setup-time"] == ["h323-setup-time=12:00:00.000 UTC Tue Nov 14 2023"]
    assert second["Acct-Status-Type"] == ["Stop"]
    assert second["Acct-Session-Time"] == [61]
    assert second.message_authenticator is None


@pytest.mark.parametrize("kind", ["auth", "acct"])
async def test_wrong_secret_gets_no_reply(dictionary: Dictionary, kind: str) -> None:
    attributes = [("Acct-Status-Type", "Start"), *CALL] if kind == "acct" else CALL
    async with udp_listener(dictionary, accept_with_credit) as listener:
        started = time.monotonic()
        reply = await radclient(kind, listener.port, "not-the-secret", attributes, timeout=0.5)
        elapsed = time.monotonic() - started

    assert reply.code is None, reply.output
    assert reply.attributes == {}
    assert "No reply from server" in reply.output
    assert listener.received == []
    assert len(listener.dropped) == 1
    assert elapsed < 5


async def test_escaped_values_survive_both_ways(dictionary: Dictionary) -> None:
    tricky = "say \"hi\", \\back\\slash' it's\tok\nnext line é€ \x01"

    def echo(request: packet.Packet) -> packet.Packet:
        reply = request.CreateReply()
        reply["Reply-Message"] = request["User-Name"][0]
        return reply

    async with udp_listener(dictionary, echo) as listener:
        reply = await radclient("auth", listener.port, SECRET, {"User-Name": tricky})
    assert listener.received[0]["User-Name"] == [tricky]
    assert reply.attributes["Reply-Message"] == [tricky]


@pytest.mark.parametrize("value", ["alice", 'it\'s "quoted" \\ here'])
async def test_radclient_command_is_copy_pasteable(dictionary: Dictionary, value: str) -> None:
    async with udp_listener(dictionary, accept_with_credit) as listener:
        command = radclient_command(
            "auth", listener.port, SECRET, [("User-Name", value), ("Cisco-AVPair", "a=b,c")]
        )
        process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), 10)

    output = stdout.decode()
    assert f"| radclient -x 127.0.0.1:{listener.port} auth {SECRET}" in command
    assert "Received Access-Accept" in output, (command, output)
    [request] = listener.received
    assert request["User-Name"] == [value]
    assert request["Cisco-AVPair"] == ["a=b,c"]
    assert request.verify_message_authenticator()


def test_radclient_command_text() -> None:
    command = radclient_command("acct", 1813, "s3cret", {"Acct-Status-Type": "Start"})
    assert command == (
        "echo 'Message-Authenticator = 0x00, Acct-Status-Type = \"Start\"'"
        " | radclient -x 127.0.0.1:1813 acct s3cret"
    )
    with pytest.raises(ValueError):
        radclient_command("auth", 1812, "s", {"User-Name, Class": "x"})
    with pytest.raises(ValueError):
        radclient_command("bogus", 1812, "s", {})


def test_quoting() -> None:
    assert quote_value('a"b\\c\n\x01') == '"a\\"b\\\\c\\n\\001"'
    assert quote_value(600) == '"600"'
    assert quote_value(b"\x01\xff") == "0x01ff"
    assert unquote('"a\\"b\\\\c\\n\\001 \\303\\251"') == 'a"b\\c\n\x01 é'
    assert unquote("0x01ff") == "0x01ff"
    assert unquote("600") == "600"
    assert RadiusReply(None).first("Class") is None
