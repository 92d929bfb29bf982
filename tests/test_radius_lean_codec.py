"""The lean RADIUS codec (ocs.radius.lean) pinned to pyrad, byte for byte.

Requests come two ways: built by pyrad from random attributes of the ocs
dictionary, and built here by hand from raw attributes in any order (integers
of the wrong size, unknown codes, Vendor-Specifics of any vendor whose inner
lengths need not add up, several Message-Authenticators), signed as a NAS
holding the secret signs them. Each is decoded by both codecs and compared
attribute by attribute, for every name of the dictionary; replies built the
way the server builds them are compared octet for octet. The verdicts on
broken and forged packets are compared with the server's pyrad path
(``server_verdict`` below: its framing checks, then pyrad's decoding and
verification, as ocs.radius.server did them before the lean codec).
"""

import hashlib
import hmac
import string
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from io import StringIO
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyrad import packet as rp
from pyrad.dictionary import Dictionary

from ocs.radius.attributes import avpair, cisco, cisco_value, first
from ocs.radius.call_identity import call_id_of
from ocs.radius.dictionary import radius_dictionary
from ocs.radius.lean.crypto import Signer
from ocs.radius.lean.request import LeanCodec, LeanRequest, Refused
from ocs.radius.server import MAX_LENGTH, MIN_LENGTH, Drop, check_attribute_lengths

DICTIONARY = radius_dictionary()
CODEC = LeanCodec(DICTIONARY)
NAMES = sorted(DICTIONARY.attributes)
ACCESS_REQUEST, ACCOUNTING_REQUEST = 1, 4
MESSAGE_AUTHENTICATOR = 80
ZEROS = bytes(16)

Outcome = tuple[str, object]


def outcome(action: Callable[[], object]) -> Outcome:
    """What an action gives: its value, or the type of what it raised."""
    try:
        return ("value", action())
    except Exception as error:
        return ("raises", type(error))


# -- requests -------------------------------------------------------------------------------


def attribute(kind: int, value: bytes) -> bytes:
    return bytes([kind, len(value) + 2]) + value


def sign(code: int, ident: int, attributes: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """A request as a NAS holding ``secret`` sends it: every Message-Authenticator in
    ``attributes`` must be 16 zero octets; the first is set to the packet's HMAC-MD5."""
    header = bytes([code, ident]) + (20 + len(attributes)).to_bytes(2, "big")
    vector = authenticator if code == ACCESS_REQUEST else ZEROS
    at = _first_message_authenticator(attributes)
    if at is not None:
        mac = hmac.digest(secret, header + vector + attributes, "md5")
        attributes = attributes[: at + 2] + mac + attributes[at + 18 :]
    if code == ACCOUNTING_REQUEST:
        authenticator = hashlib.md5(header + ZEROS + attributes + secret).digest()
    return header + authenticator + attributes


def _first_message_authenticator(attributes: bytes) -> int | None:
    at = 0
    while at + 2 <= len(attributes) and attributes[at + 1] >= 2:
        if attributes[at] == MESSAGE_AUTHENTICATOR:
            return at
        at += attributes[at + 1]
    return None


def _request(code: int, attributes: bytes, secret: bytes = b"s3cret") -> bytes:
    return sign(code, 7, attributes, secret, bytes(range(16)))


WITH_MA = attribute(MESSAGE_AUTHENTICATOR, ZEROS) + attribute(1, b"alice")


def value_of(attr: Any) -> st.SearchStrategy[object]:
    """Values pyrad encodes for an attribute of the dictionary, by its data type."""
    named = sorted(attr.values.forward)
    if attr.type == "string":
        return st.one_of(st.text(max_size=30), st.binary(max_size=30))
    if attr.type == "integer":
        numbers = st.integers(0, 2**32 - 1)
        return st.one_of(numbers, st.sampled_from(named)) if named else numbers
    if attr.type == "ipaddr":
        return st.ip_addresses(v=4).map(str)
    if attr.type == "ipv6addr":
        return st.ip_addresses(v=6).map(str)
    if attr.type == "date":
        return st.integers(0, 2**32 - 1)
    return st.binary(max_size=30)  # octets


REQUEST_NAMES = [n for n in NAMES if n not in ("Message-Authenticator", "User-Password")]
pairs = st.lists(
    st.sampled_from(REQUEST_NAMES).flatmap(
        lambda name: st.tuples(st.just(name), value_of(DICTIONARY.attributes[name]))
    ),
    max_size=10,
)
secrets = st.binary(min_size=1, max_size=70)  # past 64 octets HMAC hashes the key first
passwords = st.text(string.ascii_letters + string.digits + "é€", min_size=1, max_size=40)


@dataclass(frozen=True)
class Built:
    """A signed request, the secret it was signed with, and how it was made."""

    data: bytes
    secret: bytes
    how: str


@st.composite
def pyrad_requests(draw: st.DrawFn) -> Built:
    """A request pyrad builds from named attributes (it groups them by attribute)."""
    code = draw(st.sampled_from((ACCESS_REQUEST, ACCOUNTING_REQUEST)))
    secret = draw(secrets)
    cls = rp.AuthPacket if code == ACCESS_REQUEST else rp.AcctPacket
    request = cls(secret=secret, dict=DICTIONARY, id=draw(st.integers(0, 255)))
    if code == ACCESS_REQUEST:
        request.authenticator = draw(st.binary(min_size=16, max_size=16))
    if draw(st.booleans()):
        request.add_message_authenticator()
    for name, value in draw(pairs):
        request.AddAttribute(name, value)
    if code == ACCESS_REQUEST and draw(st.booleans()):
        request["User-Password"] = request.PwCrypt(draw(passwords))
    return Built(request.RequestPacket(), secret, "pyrad")


INTEGERS = (5, 6, 27, 40, 41, 46, 55, 61, 85)
sub_attribute = st.one_of(
    st.tuples(st.sampled_from((1, 24, 25, 26, 101, 103, 141, 187)), st.binary(max_size=12)).map(
        lambda t: attribute(*t)
    ),
    st.binary(max_size=8),  # sub-attribute framing that need not add up
    st.sampled_from((b"\x01\x00", b"\x01\x01", b"\x01\x01\x02\x03", b"\x01")),  # too short
)
raw_attribute = st.one_of(
    st.tuples(st.sampled_from(INTEGERS), st.binary(max_size=6)),  # often the wrong size
    st.tuples(st.sampled_from((1, 30, 31, 32, 44)), st.binary(max_size=20)),
    st.tuples(
        st.just(26),
        st.tuples(st.sampled_from((9, 9, 9, 311, 0)), st.lists(sub_attribute, max_size=3)).map(
            lambda t: (t[0].to_bytes(4, "big") + b"".join(t[1]))[:253]
        ),
    ),
    st.tuples(st.just(26), st.binary(max_size=7)),
    st.tuples(st.integers(1, 255).filter(lambda k: k != MESSAGE_AUTHENTICATOR), st.binary()),
    st.just((MESSAGE_AUTHENTICATOR, ZEROS)),
).map(lambda t: (t[0], t[1][:253]))


@st.composite
def hand_requests(draw: st.DrawFn) -> Built:
    """A request built octet by octet, its raw attributes in any order."""
    code = draw(st.sampled_from((ACCESS_REQUEST, ACCOUNTING_REQUEST)))
    body = b"".join(attribute(k, v) for k, v in draw(st.lists(raw_attribute, max_size=12)))
    secret = draw(secrets)
    data = sign(
        code,
        draw(st.integers(0, 255)),
        body,
        secret,
        draw(st.binary(min_size=16, max_size=16)),
    )
    return Built(data, secret, "hand")


requests = st.one_of(pyrad_requests(), hand_requests())


def pyrad_decoded(data: bytes, secret: bytes) -> Any:
    length = int.from_bytes(data[2:4], "big")
    cls = rp.AuthPacket if data[0] == ACCESS_REQUEST else rp.AcctPacket
    return cls(packet=data[:length], secret=secret, dict=DICTIONARY)


def lean_decoded(data: bytes, secret: bytes) -> LeanRequest:
    request = CODEC.decode(data, secret, require_message_authenticator=False)
    assert request is not None
    return request


# -- the server's pyrad path, the reference --------------------------------------------------


def _has_message_authenticator(data: bytes) -> bool:
    at = 20
    while at + 2 <= len(data):
        if data[at + 1] < 2:
            return False
        if data[at] == MESSAGE_AUTHENTICATOR:
            return True
        at += data[at + 1]
    return False


def server_verdict(data: bytes, secret: bytes, require_message_authenticator: bool) -> str:
    """What the server's pyrad path makes of a datagram from a known client on the port of
    its code: "accepted", or the reason it is dropped for."""
    try:
        if len(data) < MIN_LENGTH:
            raise Drop("malformed")
        length = int.from_bytes(data[2:4], "big")
        if not MIN_LENGTH <= length <= min(len(data), MAX_LENGTH):
            raise Drop("malformed")
        check_attribute_lengths(data, length)
        data = data[:length]
        acct = data[0] == ACCOUNTING_REQUEST
        cls = rp.AcctPacket if acct else rp.AuthPacket
        try:
            request = cls(packet=data, secret=secret, dict=DICTIONARY)
        except Exception:
            raise Drop("malformed") from None
        if acct:
            try:
                if not request.VerifyAcctRequest():
                    raise Drop("bad_authenticator")
            except Drop:
                raise
            except Exception:
                raise Drop("malformed") from None
        if _has_message_authenticator(data):
            try:
                valid = request.verify_message_authenticator()
            except Exception:
                valid = False
            if not valid:
                raise Drop("bad_message_authenticator")
        elif not acct and require_message_authenticator:
            raise Drop("missing_message_authenticator")
    except Drop as drop:
        return str(drop)
    return "accepted"


def lean_verdict(data: bytes, secret: bytes, require_message_authenticator: bool) -> str | None:
    """The lean codec's verdict; None where it leaves the packet to pyrad."""
    try:
        request = CODEC.decode(
            data, secret, require_message_authenticator=require_message_authenticator
        )
    except Refused as refused:
        return refused.reason
    return None if request is None else "accepted"


def header_is_broken(data: bytes) -> bool:
    if len(data) < MIN_LENGTH:
        return True
    length = int.from_bytes(data[2:4], "big")
    return not MIN_LENGTH <= length <= min(len(data), MAX_LENGTH)


# -- decoding --------------------------------------------------------------------------------


def assert_same_request(lean: LeanRequest, pyrad: Any) -> None:
    assert (lean.code, lean.id, lean.authenticator) == (pyrad.code, pyrad.id, pyrad.authenticator)
    assert lean.message_authenticator == pyrad.message_authenticator
    assert list(lean.raw_attributes().items()) == list(OrderedDict.items(pyrad))
    for name in [*NAMES, "No-Such-Attribute", "User-Name:0", "Cisco-AVPair:1"]:
        assert outcome(partial(lean.get, name)) == outcome(partial(pyrad.get, name)), name
        assert outcome(partial(lean.__getitem__, name)) == outcome(
            partial(pyrad.__getitem__, name)
        ), name
        assert (name in lean) == (name in pyrad), name
    for key in [*OrderedDict.keys(pyrad), 33, (9, 1), (311, 7), 200]:
        assert lean.get(key) == pyrad.get(key), key
        assert (key in lean) == (key in pyrad), key


def _vsa(vendor: int, *subs: bytes) -> bytes:
    return attribute(26, vendor.to_bytes(4, "big") + b"".join(subs))


@settings(max_examples=300, deadline=None)
@example(built=Built(_request(1, WITH_MA + _vsa(9, b"\x01\x00", b"\x01\x02")), b"s3cret", "hand"))
@example(built=Built(_request(1, WITH_MA + _vsa(9, b"\x01\x01\x01\x02")), b"s3cret", "hand"))
@example(built=Built(_request(4, _vsa(9, attribute(1, b"a=b"), b"\x02")), b"s3cret", "hand"))
@example(
    built=Built(_request(4, _vsa(311, attribute(7, b""), attribute(9, b"x"))), b"s3cret", "hand")
)
@given(built=requests)
def test_decoding_matches_pyrad(built: Built) -> None:
    lean = lean_decoded(built.data, built.secret)
    assert_same_request(lean, pyrad_decoded(built.data, built.secret))
    assert server_verdict(built.data, built.secret, False) == "accepted"


@settings(max_examples=200, deadline=None)
@given(built=requests, padding=st.binary(min_size=1, max_size=30))
def test_padding_after_the_length_is_ignored(built: Built, padding: bytes) -> None:
    lean = lean_decoded(built.data + padding, built.secret)
    assert lean.raw_packet == built.data
    assert_same_request(lean, pyrad_decoded(built.data, built.secret))


def test_a_cisco_call_request_reads_as_the_server_reads_it() -> None:
    request = rp.AuthPacket(secret=b"s3cret", dict=DICTIONARY)
    request.add_message_authenticator()
    for name, value in [
        ("User-Name", "4412345678"),
        ("Called-Station-Id", "4930123456"),
        ("Calling-Station-Id", "4412345678"),
        ("h323-conf-id", "h323-conf-id=3F2A11C2 00000001"),
        ("Cisco-AVPair", "call-id=abc-123@192.0.2.10"),
        ("Cisco-AVPair", "ocs-direction=inbound"),
        ("NAS-IP-Address", "192.0.2.10"),
        ("Acct-Session-Id", "sess-1"),
    ]:
        request.AddAttribute(name, value)
    request["User-Password"] = request.PwCrypt("1234")
    lean = lean_decoded(request.RequestPacket(), b"s3cret")

    assert first(lean, "User-Name") == "4412345678"
    assert first(lean, "NAS-IP-Address") == "192.0.2.10"
    assert cisco_value(lean, "h323-conf-id") == "3F2A11C2 00000001"
    assert avpair(lean, "ocs-direction") == "inbound"
    assert call_id_of(lean, ("call-id", "h323-conf-id")) == "abc-123@192.0.2.10"
    assert call_id_of(lean, ("h323-conf-id",)) == "3F2A11C2 00000001"
    assert lean.PwDecrypt(lean["User-Password"][0]) == "1234"
    assert lean.message_authenticator is True
    assert getattr(lean, "source", (None,)) == (None,)  # access.py's read before it is set
    lean.source = ("192.0.2.10", 1645)
    assert lean.source[0] == "192.0.2.10"


def test_an_accounting_request_reads_as_pyrad_reads_it() -> None:
    request = rp.AcctPacket(secret=b"s3cret", dict=DICTIONARY)
    for name, value in [
        ("Acct-Status-Type", "Interim-Update"),
        ("Acct-Session-Id", "sess-1"),
        ("Acct-Session-Time", 61),
        ("Event-Timestamp", 1_700_000_000),
        ("h323-conf-id", "h323-conf-id=X"),
    ]:
        request.AddAttribute(name, value)
    lean = lean_decoded(request.RequestPacket(), b"s3cret")
    assert lean["Acct-Status-Type"] == ["Interim-Update"]
    assert lean.get(40) == [(3).to_bytes(4, "big")]  # accounting.py reads it by number
    assert lean.get(55) == [(1_700_000_000).to_bytes(4, "big")]
    assert first(lean, "Acct-Session-Time") == "61"
    assert lean.message_authenticator is None


@settings(max_examples=200, deadline=None)
@given(
    built=requests, keys=st.lists(st.sampled_from(("call-id", "ocs-direction", "x")), max_size=3)
)
def test_the_servers_readers_answer_the_same(built: Built, keys: list[str]) -> None:
    lean = lean_decoded(built.data, built.secret)
    pyrad = pyrad_decoded(built.data, built.secret)
    for name in NAMES:
        assert first(lean, name) == first(pyrad, name), name
    for name in ("h323-conf-id", "h323-call-origin", "h323-setup-time"):
        assert cisco_value(lean, name) == cisco_value(pyrad, name)
    for key in keys:
        assert avpair(lean, key) == avpair(pyrad, key)
    order = ("h323-conf-id", "call-id", "Acct-Session-Id", "User-Name")
    assert call_id_of(lean, order) == call_id_of(pyrad, order)
    assert call_id_of(lean, order[::-1]) == call_id_of(pyrad, order[::-1])


def test_a_first_value_beside_a_malformed_one_reads_as_pyrad_reads_it() -> None:
    # NAS-Port (5) twice: a good value, then one of 3 octets. pyrad decodes every value
    # and fails, so the server reads no NAS-Port; the lean request must not read "7".
    data = _request(ACCESS_REQUEST, attribute(5, (7).to_bytes(4, "big")) + attribute(5, b"abc"))
    lean, pyrad = lean_decoded(data, b"s3cret"), pyrad_decoded(data, b"s3cret")
    assert first(pyrad, "NAS-Port") is None
    assert first(lean, "NAS-Port") is None
    one = _request(ACCESS_REQUEST, attribute(5, (7).to_bytes(4, "big")))
    assert first(lean_decoded(one, b"s3cret"), "NAS-Port") == "7"


# -- verification and refusals -----------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    how: str  # truncate, length, attribute-length, flip, secret, none
    at: int
    value: int

    def apply(self, data: bytes) -> bytes:
        out = bytearray(data)
        if self.how == "truncate":
            return bytes(out[: self.at % len(out)])
        if self.how == "length":
            out[2:4] = self.value.to_bytes(2, "big")
        elif self.how == "attribute-length":
            offsets = _offsets(data)
            if offsets:
                out[offsets[self.at % len(offsets)] + 1] = self.value % 256
        elif self.how == "flip":
            out[self.at % len(out)] ^= 1 << (self.value % 8)
        return bytes(out)


def _offsets(data: bytes) -> list[int]:
    found, at = [], 20
    while at + 2 <= len(data) and data[at + 1] >= 2:
        found.append(at)
        at += data[at + 1]
    return found


mutations = st.builds(
    Mutation,
    st.sampled_from(("truncate", "length", "attribute-length", "flip", "secret", "none")),
    st.integers(0, 1000),
    st.one_of(st.integers(0, 3), st.integers(0, 5000)),
)


@settings(max_examples=500, deadline=None)
@example(
    built=Built(_request(1, WITH_MA), b"s3cret", "hand"),
    mutation=Mutation("length", 0, 0),
    require=True,
)
@example(
    built=Built(_request(1, WITH_MA), b"s3cret", "hand"),
    mutation=Mutation("length", 0, 19),
    require=True,
)
@example(
    built=Built(_request(1, WITH_MA), b"s3cret", "hand"),
    mutation=Mutation("length", 0, 4097),
    require=True,
)
@example(
    built=Built(_request(1, WITH_MA), b"s3cret", "hand"),
    mutation=Mutation("truncate", 19, 0),
    require=True,
)
@example(
    built=Built(_request(1, WITH_MA), b"s3cret", "hand"),
    mutation=Mutation("attribute-length", 1, 0),
    require=True,
)
@example(
    built=Built(_request(4, attribute(1, b"a")), b"s3cret", "hand"),
    mutation=Mutation("attribute-length", 0, 1),
    require=True,
)
@example(
    built=Built(_request(4, attribute(1, b"a")), b"s3cret", "hand"),
    mutation=Mutation("attribute-length", 0, 200),  # overlong
    require=False,
)
@given(built=requests, mutation=mutations, require=st.booleans())
def test_verdicts_match_the_servers_pyrad_path(
    built: Built, mutation: Mutation, require: bool
) -> None:
    data = mutation.apply(built.data)
    secret = built.secret + b"!" if mutation.how == "secret" else built.secret
    verdict = lean_verdict(data, secret, require)
    if header_is_broken(data):
        assert verdict == "malformed"
    elif data[0] not in (ACCESS_REQUEST, ACCOUNTING_REQUEST):
        assert verdict is None  # the server drops it first, as of an unexpected code
    else:
        assert verdict == server_verdict(data, secret, require)
    if mutation.how == "none":
        assert verdict in ("accepted", "missing_message_authenticator")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120), code=st.sampled_from((1, 4)), require=st.booleans())
def test_junk_gets_the_servers_verdict(data: bytes, code: int, require: bool) -> None:
    if len(data) >= 4:  # a plausible header: the right code and a Length that fits
        data = bytes([code, data[1]]) + len(data).to_bytes(2, "big") + data[4:]
    verdict = lean_verdict(data, b"s3cret", require)
    if header_is_broken(data):
        assert verdict == "malformed"
    else:
        assert verdict == server_verdict(data, b"s3cret", require)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (_request(1, WITH_MA)[:19], "malformed"),  # shorter than a header
        (_request(1, WITH_MA)[:-1], "malformed"),  # the Length says more than came
        (_request(1, attribute(1, b"a") + b"\x1f\x00"), "malformed"),  # attribute length 0
        (_request(1, attribute(1, b"a") + b"\x1f\x01"), "malformed"),  # attribute length 1
        (_request(1, attribute(1, b"a") + b"\x1f"), "malformed"),  # half an attribute header
        (_request(1, attribute(1, b"a") + b"\x1f\x09abc"), "malformed"),  # overlong
        (_request(1, WITH_MA, b"other"), "bad_message_authenticator"),
        (_request(1, attribute(MESSAGE_AUTHENTICATOR, b"\x00" * 15)), "bad_message_authenticator"),
        (_request(1, attribute(1, b"alice")), "missing_message_authenticator"),
        (_request(4, attribute(1, b"alice"), b"other"), "bad_authenticator"),
        (_request(1, WITH_MA), "accepted"),
        (_request(4, WITH_MA), "accepted"),
        (_request(4, attribute(1, b"a")), "accepted"),
        # two Message-Authenticators: the first is the one that counts, as for pyrad
        (_request(1, WITH_MA + attribute(MESSAGE_AUTHENTICATOR, b"junk")), "accepted"),
    ],
)
def test_refusals(data: bytes, reason: str) -> None:
    assert lean_verdict(data, b"s3cret", True) == reason
    assert server_verdict(data, b"s3cret", True) == reason


def test_a_message_authenticator_of_another_size_is_refused() -> None:
    # 18 octets whose first 16 are the HMAC of the packet with those 16 zeroed: a check
    # that only compared 16 octets would take it.
    body = bytes([MESSAGE_AUTHENTICATOR, 20]) + bytes(18) + attribute(1, b"alice")
    header = bytes([ACCESS_REQUEST, 7]) + (20 + len(body)).to_bytes(2, "big")
    authenticator = bytes(range(16))
    mac = hmac.digest(b"s3cret", header + authenticator + body, "md5")
    data = header + authenticator + body[:2] + mac + body[18:]
    assert lean_verdict(data, b"s3cret", True) == "bad_message_authenticator"
    assert server_verdict(data, b"s3cret", True) == "bad_message_authenticator"


def test_an_overlong_packet_is_refused() -> None:
    body = attribute(MESSAGE_AUTHENTICATOR, ZEROS) + attribute(18, b"x" * 253) * 17
    data = _request(1, body)
    assert int.from_bytes(data[2:4], "big") > MAX_LENGTH
    assert lean_verdict(data, b"s3cret", True) == "malformed"
    assert server_verdict(data, b"s3cret", True) == "malformed"


@given(code=st.integers(0, 255).filter(lambda c: c not in (1, 4)))
def test_other_codes_are_left_to_pyrad(code: int) -> None:
    data = bytes([code, 1, 0, 20]) + ZEROS
    assert CODEC.decode(data, b"s", require_message_authenticator=True) is None


# -- passwords and HMAC ------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(1, 129))
def test_passwords_of_every_length_decrypt_as_pyrad(size: int) -> None:
    clear = "".join(string.ascii_letters[i % 52] for i in range(size))
    request = rp.AuthPacket(secret=b"s3cret", dict=DICTIONARY, authenticator=bytes(range(16)))
    request.add_message_authenticator()
    request["User-Password"] = request.PwCrypt(clear)
    data = request.RequestPacket()
    lean, pyrad = lean_decoded(data, b"s3cret"), pyrad_decoded(data, b"s3cret")
    hidden = pyrad["User-Password"][0]
    assert lean["User-Password"] == [hidden]
    assert lean.PwDecrypt(hidden) == pyrad.PwDecrypt(hidden) == clear


@settings(max_examples=300, deadline=None)
@given(
    clear=st.binary(min_size=1, max_size=128),
    secret=secrets,
    authenticator=st.binary(min_size=16, max_size=16),
)
def test_any_password_decrypts_as_pyrad(clear: bytes, secret: bytes, authenticator: bytes) -> None:
    request = rp.AuthPacket(secret=secret, dict=DICTIONARY, authenticator=authenticator)
    request.add_message_authenticator()
    request["User-Password"] = request.PwCrypt(clear)
    data = request.RequestPacket()
    lean, pyrad = lean_decoded(data, secret), pyrad_decoded(data, secret)
    # A value that happens to be UTF-8 comes as str from both, and is taken back as such.
    [hidden] = pyrad["User-Password"]
    assert lean["User-Password"] == [hidden]
    assert lean.PwDecrypt(hidden) == pyrad.PwDecrypt(hidden)
    assert lean.PwDecrypt(hidden) == clear.rstrip(b"\x00").decode(errors="ignore")


@given(hidden=st.binary(max_size=150).filter(lambda b: len(b) % 16 != 0))
def test_a_password_of_a_wrong_size_raises_as_pyrad(hidden: bytes) -> None:
    lean = lean_decoded(_request(1, WITH_MA), b"s3cret")
    pyrad = pyrad_decoded(_request(1, WITH_MA), b"s3cret")
    assert outcome(lambda: lean.PwDecrypt(hidden)) == outcome(lambda: pyrad.PwDecrypt(hidden))
    assert outcome(lambda: lean.PwDecrypt(hidden)) == ("raises", rp.PacketError)


@given(secret=st.binary(max_size=150), message=st.binary(max_size=300))
def test_the_signer_is_hmac_md5(secret: bytes, message: bytes) -> None:
    assert Signer().mac(secret, message) == hmac.digest(secret, message, "md5")


# -- replies -------------------------------------------------------------------------------------


def build_reply(request: Any, code: int | None, attributes: list[tuple[str, object]]) -> bytes:
    """A reply built the way ocs.radius.server builds one."""
    reply = request.CreateReply()
    if code is not None:
        reply.code = code
    for name, value in attributes:
        reply.AddAttribute(name, value)
    if MESSAGE_AUTHENTICATOR not in reply:
        reply.add_message_authenticator()
    wire: bytes = reply.ReplyPacket()
    return wire


def build_unsigned_reply(request: Any, attributes: list[tuple[str, object]]) -> bytes:
    reply = request.CreateReply()
    for name, value in attributes:
        reply.AddAttribute(name, value)
    wire: bytes = reply.ReplyPacket()
    return wire


odd_reply_pair = st.one_of(
    st.tuples(st.sampled_from(("Reply-Message", "h323-currency")), st.text(min_size=240)),
    st.tuples(st.sampled_from(("Session-Timeout", "Acct-Interim-Interval")), st.integers()),
    st.tuples(st.sampled_from(("Session-Timeout", "Reply-Message")), st.sampled_from(("600", 7))),
    st.tuples(st.just("Cisco-AVPair"), st.lists(st.text(max_size=10), max_size=3)),
    st.tuples(st.sampled_from(("User-Name:1", "No-Such-Attribute")), st.text(max_size=5)),
    st.tuples(st.just("Message-Authenticator"), st.just(ZEROS)),
    st.tuples(st.just("Proxy-State"), st.binary(max_size=5)),
)
reply_pairs = st.lists(
    st.one_of(
        st.sampled_from(NAMES).flatmap(
            lambda name: st.tuples(st.just(name), value_of(DICTIONARY.attributes[name]))
        ),
        odd_reply_pair,
    ),
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(
    built=requests,
    code=st.sampled_from((None, rp.AccessAccept, rp.AccessReject, rp.AccessChallenge)),
    attributes=reply_pairs,
    signed=st.booleans(),
)
def test_replies_match_pyrad(
    built: Built, code: int | None, attributes: list[tuple[str, object]], signed: bool
) -> None:
    lean = lean_decoded(built.data, built.secret)
    pyrad = pyrad_decoded(built.data, built.secret)
    if signed:
        mine = outcome(lambda: build_reply(lean, code, attributes))
        theirs = outcome(lambda: build_reply(pyrad, code, attributes))
    else:
        mine = outcome(lambda: build_unsigned_reply(lean, attributes))
        theirs = outcome(lambda: build_unsigned_reply(pyrad, attributes))
    assert mine == theirs


def grant(timeout: int, amount: str, routes: int) -> list[tuple[str, object]]:
    """An authorize answer's attributes, as ocs.radius.access makes them."""
    return [
        ("Session-Timeout", timeout),
        cisco("h323-credit-time", timeout),
        cisco("h323-credit-amount", amount),
        cisco("h323-return-code", 0),
        cisco("h323-billing-model", 1),
        cisco("h323-currency", "EUR"),
        *[("Cisco-AVPair", f"ocs-route={n}:carrier-{n}") for n in range(1, routes + 1)],
        cisco("h323-preferred-lang", "en"),
        ("Cisco-AVPair", "ocs-voicemail=vm.example"),
    ]


@settings(max_examples=200, deadline=None)
@given(
    built=requests,
    timeout=st.integers(0, 14_400),
    amount=st.decimals(0, 10_000, places=6).map(str),
    routes=st.integers(0, 3),
    accept=st.booleans(),
)
def test_the_servers_replies_are_pyrads_and_verify(
    built: Built, timeout: int, amount: str, routes: int, accept: bool
) -> None:
    lean = lean_decoded(built.data, built.secret)
    pyrad = pyrad_decoded(built.data, built.secret)
    if built.data[0] == ACCOUNTING_REQUEST:
        code, attributes = None, []
    elif accept:
        code, attributes = rp.AccessAccept, grant(timeout, amount, routes)
    else:
        code = rp.AccessReject
        attributes = [cisco("h323-return-code", 4), ("Reply-Message", "zero balance")]
    wire = build_reply(lean, code, attributes)
    assert wire == build_reply(pyrad, code, attributes)
    reply = pyrad.CreateReply(packet=wire)
    assert pyrad.VerifyReply(reply, wire, enforce_ma=True)
    assert reply.keys()[0] == "Message-Authenticator"
    assert reply.get("Proxy-State", []) == pyrad.get("Proxy-State", [])


def test_a_reply_with_a_too_long_vendor_value_raises_as_pyrads() -> None:
    request = lean_decoded(_request(1, WITH_MA), b"s3cret")
    pyrad = pyrad_decoded(_request(1, WITH_MA), b"s3cret")
    for size in (247, 248, 253, 254):
        attributes: list[tuple[str, object]] = [("h323-currency", "x" * size)]
        assert outcome(partial(build_reply, request, 2, attributes)) == outcome(
            partial(build_reply, pyrad, 2, attributes)
        )
    assert outcome(lambda: build_reply(request, 2, [("h323-currency", "x" * 248)]))[0] == "raises"
    assert outcome(lambda: build_reply(request, 2, [("h323-currency", "x" * 247)]))[0] == "value"


def test_a_value_encoded_before_is_reused_only_for_the_same_type_and_value() -> None:
    # Whole attributes are remembered per field (fields.py): 1, True and 1.0 are equal
    # (one hash), yet pyrad encodes 1 as a date and refuses 1.0; each must still encode,
    # or fail, as pyrad has it.
    request = lean_decoded(_request(1, WITH_MA), b"s3cret")
    pyrad = pyrad_decoded(_request(1, WITH_MA), b"s3cret")
    for value in (1, True, "1", 1.0, 1, [1, 2], 2, 1):
        for name in ("Event-Timestamp", "Session-Timeout", "Reply-Message"):
            attributes: list[tuple[str, object]] = [(name, value)]
            assert outcome(partial(build_reply, request, 2, attributes)) == outcome(
                partial(build_reply, pyrad, 2, attributes)
            ), (name, value)


# -- what the lean codec leaves to pyrad ---------------------------------------------------------

SPECIAL = """
ATTRIBUTE User-Name 1 string
ATTRIBUTE Vendor-Specific 26 octets
ATTRIBUTE Proxy-State 33 octets
ATTRIBUTE Tunnel-Type 64 integer has_tag
ATTRIBUTE Tunnel-Private-Group-Id 81 string has_tag
ATTRIBUTE Message-Authenticator 80 octets
ATTRIBUTE Test-Tlv 241 tlv
ATTRIBUTE Test-Tlv-Str 241.1 string
VALUE Tunnel-Type VLAN 13
"""


def special_codec() -> tuple[Any, LeanCodec]:
    dictionary = Dictionary(StringIO(SPECIAL))
    return dictionary, LeanCodec(dictionary)


def test_a_packet_with_a_tlv_is_left_to_pyrad() -> None:
    _, codec = special_codec()
    data = _request(1, WITH_MA + attribute(241, attribute(1, b"abc")))
    assert codec.decode(data, b"s3cret", require_message_authenticator=True) is None
    assert CODEC.decode(data, b"s3cret", require_message_authenticator=True) is not None


def test_tagged_attributes_are_read_and_written_by_pyrad() -> None:
    dictionary, codec = special_codec()
    tagged = attribute(64, b"\x01\x00\x00\x0d") + attribute(81, b"\x02vlan-7")
    data = _request(1, WITH_MA + tagged)
    lean = codec.decode(data, b"s3cret", require_message_authenticator=True)
    assert lean is not None
    pyrad = rp.AuthPacket(packet=data, secret=b"s3cret", dict=dictionary)
    for name in ("Tunnel-Type", "Tunnel-Type:1", "Tunnel-Private-Group-Id:2", "User-Name:0"):
        assert outcome(partial(lean.get, name)) == outcome(partial(pyrad.get, name))
        assert (name in lean) == (name in pyrad)
    assert lean["Tunnel-Type"] == ["VLAN"]
    attributes: list[tuple[str, object]] = [
        ("User-Name", "a"),
        ("Tunnel-Type:3", "VLAN"),
        ("User-Name", "b"),
    ]
    wire = build_reply(lean, rp.AccessAccept, attributes)
    assert wire == build_reply(pyrad, rp.AccessAccept, attributes)
    assert b"\x40\x06\x03\x00\x00\x0d" in wire  # Tunnel-Type, tag 3, VLAN
