"""Fuzzing the RADIUS server over real UDP: bad input is dropped and counted, never obeyed.

Each example sends a batch of datagrams to the authentication and accounting
ports from a fresh socket, then a good Access-Request (a calling card's
balance query) and a good Accounting-Request, which must be answered
correctly. The batch mixes:

* junk that no server may answer: random bytes, truncated requests, wrong
  Length fields, corrupted attribute lengths, flipped bits, well-framed
  packets nobody signed. Each must be dropped and counted; those whose
  framing is broken (RFC 2865 sections 3 and 5) must be counted as
  ``malformed``;
* correctly signed requests with odd content (integer attributes of the wrong
  size, vendor attributes with bad inner lengths, random text, padding after
  the Length): each is either answered with a reply that verifies, or dropped
  as ``malformed``. None may end in an internal error.

Requests are built and signed here by hand (RFC 2865/2866/3579), not by
pyrad, so the server's codec is not checking itself.
"""

import hashlib
import hmac
import itertools
import os
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyrad import packet as rp

from ocs.balances.accounts import AccountSpec
from ocs.radius.dictionary import radius_dictionary
from tests.conftest import RADIUS_SECRET, RunningRadius, add_plan, eventually
from tests.radclient import radclient
from tests.radius_udp import UdpClient, access_request, accounting_request, sample, total_drops

SECRET = RADIUS_SECRET.encode()
CARD = "fuzz-card"
ACCESS_REQUEST, ACCOUNTING_REQUEST = 1, 4
MESSAGE_AUTHENTICATOR = 80

_nonces = itertools.count(1)


# -- building requests by hand ------------------------------------------------------------


def attribute(kind: int, value: bytes) -> bytes:
    return bytes([kind, len(value) + 2]) + value


def sign(port: str, attributes: bytes, ident: int) -> bytes:
    """A request as a NAS holding the right secret sends it."""
    if port == "auth":
        body = attribute(MESSAGE_AUTHENTICATOR, bytes(16)) + attributes
        header = bytes([ACCESS_REQUEST, ident]) + (20 + len(body)).to_bytes(2, "big")
        authenticator = os.urandom(16)
        mac = hmac.new(SECRET, header + authenticator + body, "md5").digest()
        return header + authenticator + attribute(MESSAGE_AUTHENTICATOR, mac) + attributes
    header = bytes([ACCOUNTING_REQUEST, ident]) + (20 + len(attributes)).to_bytes(2, "big")
    authenticator = hashlib.md5(header + bytes(16) + attributes + SECRET).digest()
    return header + authenticator + attributes


def header_is_broken(data: bytes) -> bool:
    """RFC 2865 section 3: at least a header, and a Length from 20 to 4096 within the datagram."""
    if len(data) < 20:
        return True
    length = int.from_bytes(data[2:4], "big")
    return not 20 <= length <= min(len(data), 4096)


def framing_is_broken(data: bytes) -> bool:
    """RFC 2865 sections 3 and 5: the header and the attributes must tile the Length."""
    if header_is_broken(data):
        return True
    length = int.from_bytes(data[2:4], "big")
    pos = 20
    while pos < length:
        if pos + 2 > length or data[pos + 1] < 2 or pos + data[pos + 1] > length:
            return True
        pos += data[pos + 1]
    return False


def attribute_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 20
    while pos + 2 <= len(data) and data[pos + 1] >= 2:
        offsets.append(pos)
        pos += data[pos + 1]
    return offsets


# -- what the batches are made of -----------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A well-framed request to sign: its port and raw (type, value) attributes."""

    port: str
    attributes: tuple[tuple[int, bytes], ...]

    def build(self) -> bytes:
        nonce = next(_nonces)
        # A unique NAS-Identifier: no two requests of a run share an identity for the
        # reply cache, whatever hypothesis draws.
        raw = attribute(32, f"fuzz-{nonce}".encode())
        raw += b"".join(attribute(kind, value) for kind, value in self.attributes)
        return sign(self.port, raw, nonce % 256)


@dataclass(frozen=True)
class Junk:
    port: str
    data: bytes


@dataclass(frozen=True)
class Mutated:
    """A signed request broken on the way: it must not be answered."""

    request: Request
    how: str  # truncate, length, attribute-length, flip
    at: int
    value: int

    def build(self) -> bytes:
        data = bytearray(self.request.build())
        if self.how == "truncate":
            return bytes(data[: self.at % len(data)])
        if self.how == "length":
            length = self.value if self.value != len(data) else len(data) + 1
            data[2:4] = length.to_bytes(2, "big")
        elif self.how == "attribute-length":
            offsets = attribute_offsets(bytes(data))
            pos = offsets[self.at % len(offsets)] + 1
            length = self.value % 256
            data[pos] = length if length != data[pos] else (length + 1) % 256
        else:  # flip one bit anywhere
            data[self.at % len(data)] ^= 1 << (self.value % 8)
        return bytes(data)


@dataclass(frozen=True)
class Padded:
    """A signed request with octets after its Length: padding, to be ignored (RFC 2865 s. 3)."""

    request: Request
    padding: bytes

    def build(self) -> bytes:
        return self.request.build() + self.padding


Item = Junk | Mutated | Request | Padded

INTEGERS = (5, 6, 27, 40, 41, 46, 61)  # NAS-Port ... Acct-Status-Type, Acct-Session-Time
STRINGS = (1, 18, 30, 31, 44)  # User-Name, Reply-Message, Called/Calling-Station-Id, session
text = st.text(string.ascii_letters + string.digits + " -=@.|+", max_size=40)

integer_attribute = st.tuples(
    st.sampled_from(INTEGERS),
    st.one_of(
        st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
        st.binary(min_size=0, max_size=9),
    ),
)
string_attribute = st.tuples(
    st.sampled_from(STRINGS), st.one_of(text.map(str.encode), st.binary(min_size=0, max_size=40))
)
sub_attribute = st.one_of(
    st.tuples(st.sampled_from((1, 24, 25, 26, 101, 141)), text.map(str.encode)).map(
        lambda t: attribute(*t)
    ),
    st.binary(min_size=0, max_size=12),  # sub-attribute framing that need not add up
)
vendor_attribute = st.tuples(
    st.just(26),
    st.tuples(st.sampled_from((9, 9, 311, 0)), st.lists(sub_attribute, max_size=3)).map(
        lambda t: (t[0].to_bytes(4, "big") + b"".join(t[1]))[:253]
    ),
)
other_attribute = st.tuples(
    st.integers(1, 255).filter(lambda k: k != MESSAGE_AUTHENTICATOR),
    st.binary(min_size=0, max_size=30),
)
attributes = st.lists(
    st.one_of(integer_attribute, string_attribute, vendor_attribute, other_attribute),
    max_size=8,
).map(tuple)

requests = st.builds(Request, st.sampled_from(("auth", "acct")), attributes)
# The accounting path that reads Acct-Session-Time: a Stop with a call id.
stops = st.builds(
    lambda seconds, extra: Request(
        "acct", ((40, (2).to_bytes(4, "big")), (44, b"fuzz-call"), (46, seconds), *extra)
    ),
    st.binary(min_size=0, max_size=9),
    attributes,
)
ports = st.sampled_from(("auth", "acct"))
junk = st.one_of(
    st.builds(Junk, ports, st.binary(max_size=19)),
    st.builds(Junk, ports, st.binary(min_size=20, max_size=120)),
    # Well framed, right code, but signed by nobody.
    st.builds(
        lambda port, ident, auth, attrs: Junk(
            port,
            bytes([ACCESS_REQUEST if port == "auth" else ACCOUNTING_REQUEST, ident])
            + (20 + len(attrs)).to_bytes(2, "big")
            + auth
            + attrs,
        ),
        ports,
        st.integers(0, 255),
        st.binary(min_size=16, max_size=16),
        attributes.map(lambda a: b"".join(attribute(k, v) for k, v in a)),
    ),
)
mutated = st.builds(
    Mutated,
    st.one_of(requests, stops),
    st.sampled_from(("truncate", "length", "attribute-length", "flip")),
    st.integers(0, 1000),
    st.integers(0, 65535).map(lambda n: n if n < 512 else n % 256),
)
padded = st.builds(Padded, st.one_of(requests, stops), st.binary(min_size=1, max_size=40))
batches = st.lists(st.one_of(junk, mutated, requests, stops, padded), min_size=1, max_size=12)


# -- the test -----------------------------------------------------------------------------------


@pytest.fixture
async def card(radius: RunningRadius) -> AsyncIterator[RunningRadius]:
    await add_plan(radius.app.services)
    await radius.app.services.accounts.create(
        AccountSpec(CARD, plan_id="retail", opening_balance=7_250_000)
    )
    yield radius


def _drop(reason: str) -> float:
    return sample("ocs_radius_dropped_total", reason=reason)


async def _still_answers(card: RunningRadius, udp: UdpClient) -> list[bytes]:
    """Send the good requests; check their replies; return the other datagrams received."""
    query = access_request(RADIUS_SECRET, [("User-Name", CARD)])
    interim = accounting_request(
        RADIUS_SECRET,
        [
            ("Acct-Status-Type", "Interim-Update"),
            ("Acct-Session-Id", f"no-such-call-{next(_nonces)}"),
            ("Acct-Session-Time", 10),
        ],
    )
    udp.send(query.RequestPacket(), card.auth_port)
    udp.send(interim.RequestPacket(), card.acct_port)
    others: list[bytes] = []
    pending = {"auth": query, "acct": interim}
    while pending:
        data = await udp.receive(within=5)
        assert data is not None, f"no answer to the good request(s) {sorted(pending)}"
        for name, request in list(pending.items()):
            reply = request.CreateReply(packet=data)
            if data[1] == request.id and request.VerifyReply(reply, data, enforce_ma=True):
                if name == "auth":
                    assert data[0] == rp.AccessAccept
                    assert reply["h323-credit-amount"] == ["h323-credit-amount=7.250000"]
                else:
                    assert data[0] == rp.AccountingResponse
                del pending[name]
                break
        else:
            others.append(data)
    return others


def _answers(data: bytes, signed: list[bytes]) -> bytes | None:
    """The signed request ``data`` is a valid reply to, if any."""
    for request in signed:
        if data[1] != request[1]:
            continue
        cls = rp.AuthPacket if request[0] == ACCESS_REQUEST else rp.AcctPacket
        original = cls(packet=request, secret=SECRET, dict=radius_dictionary())
        if original.VerifyReply(original.CreateReply(packet=data), data):
            return request
    return None


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(batch=[Junk("auth", b""), Junk("acct", b"\x04\x00\x00\x13" + bytes(15))])
@example(batch=[Mutated(Request("auth", ((1, CARD.encode()),)), "length", 0, 4097)])
@example(batch=[Mutated(Request("auth", ((1, CARD.encode()),)), "attribute-length", 0, 1)])
@example(batch=[Request("acct", ((40, (2).to_bytes(4, "big")), (44, b"x"), (46, b"\x01\x02\x03")))])
@example(batch=[Request("auth", ((26, b"\x00\x00\x00\x09\x18\x00"),))])
@example(batch=[Request("auth", ((1, CARD.encode()), (2, b"\x00")))])  # a 1-octet User-Password
@given(batch=batches)
async def test_bad_packets_are_dropped_and_counted_and_good_ones_still_answered(
    card: RunningRadius, batch: list[Item]
) -> None:
    udp = await UdpClient.open()  # a fresh source port: no reply cache entry in common
    try:
        drops_before = total_drops()
        malformed_before = _drop("malformed")
        internal_before = _drop("internal_error") + _drop("backend_unavailable")
        must_drop, may_answer, broken_framing = 0, [], 0
        for item in batch:
            data = item.build() if not isinstance(item, Junk) else item.data
            port_name = item.port if isinstance(item, Junk | Request) else item.request.port
            port = card.auth_port if port_name == "auth" else card.acct_port
            if isinstance(item, Junk | Mutated):
                must_drop += 1
                code = ACCESS_REQUEST if port_name == "auth" else ACCOUNTING_REQUEST
                # The server checks the framing of the header first, then the client and
                # the code, then the attributes.
                if header_is_broken(data) or (data[0] == code and framing_is_broken(data)):
                    broken_framing += 1
            else:
                may_answer.append(data)
            udp.send(data, port)

        replies = await _still_answers(card, udp)
        answered: set[bytes] = set()

        async def settled() -> bool:
            replies.extend(udp.unread())
            for reply in replies:
                request = _answers(reply, may_answer)
                assert request is not None, f"a reply to junk: {reply.hex()}"
                answered.add(request)
            return len(answered) + total_drops() - drops_before >= len(batch)

        await eventually(settled, within=5, what="every packet answered or counted as dropped")
        assert len(answered) + total_drops() - drops_before == len(batch)
        assert _drop("malformed") - malformed_before >= broken_framing
        assert _drop("internal_error") + _drop("backend_unavailable") == internal_before, (
            "a packet ended in an internal error instead of a reply or a 'malformed' drop"
        )
        assert must_drop + len(may_answer) == len(batch)
    finally:
        udp.close()


async def test_radclient_is_answered_after_the_fuzzing(card: RunningRadius) -> None:
    """A real client no one here wrote gets the same answer after a storm of junk."""
    udp = await UdpClient.open()
    try:
        for size in (0, 1, 19, 20, 21, 4095, 4096, 4097):
            udp.send(os.urandom(size), card.auth_port)
            udp.send(os.urandom(size), card.acct_port)
        reply = await radclient(
            "auth",
            card.auth_port,
            RADIUS_SECRET,
            [("User-Name", CARD), ("Called-Station-Id", "4930901820")],
        )
    finally:
        udp.close()
    assert reply.code == "Access-Accept", reply.output
    assert reply.attributes["Session-Timeout"] == ["14400"]  # 7.25 EUR buys the 4 h cap
    assert reply.attributes["h323-credit-amount"] == ["h323-credit-amount=7.250000"]
