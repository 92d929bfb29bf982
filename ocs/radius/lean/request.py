"""Access-Request and Accounting-Request decoding and verification, without pyrad.

``LeanCodec.decode`` takes a datagram the server admitted (its client known, its code
the port's) and does what the server's pyrad path does after that, with the same
refusals: attributes framed exactly within the Length (RFC 2865 section 5), the
Request Authenticator of an Accounting-Request (RFC 2866 section 3), the first
Message-Authenticator (RFC 3579 section 3.2, RFC 2869 section 5.14: HMAC-MD5 over
the packet with its value zeroed; for an Accounting-Request with a zero
authenticator), and a missing one where the client must send it. Attributes are
split once into pyrad's layout (a dict of raw value lists, by code or ``(vendor,
code)`` for the sub-attributes of a well-formed Vendor-Specific, in arrival order)
and decoded on access, as pyrad does.

``LeanRequest`` answers to the part of pyrad's packet interface that ocs reads
(``get``, ``[]``, ``in``, ``PwDecrypt``, ``CreateReply``, ``code``, ``id``,
``authenticator``, ``source``); what it does not decode itself (a tagged name, an
attribute with no field) is asked of the same packet decoded by pyrad, built on first
need. A packet of another code, or one with a TLV attribute, is not decoded at all:
``decode`` answers None and the caller uses pyrad.
"""

import hmac
from collections.abc import Mapping
from typing import Any

from pyrad import packet as rp

from ocs.radius.lean.crypto import Signer, decrypt_password, md5
from ocs.radius.lean.fields import (
    MESSAGE_AUTHENTICATOR,
    PROXY_STATE,
    VENDOR_SPECIFIC,
    Field,
    FieldTable,
    Key,
)
from ocs.radius.lean.reply import ACCESS_REQUEST, ACCOUNTING_REQUEST, LeanReply

MIN_LENGTH = 20
MAX_LENGTH = 4096
_ZEROS = bytes(16)


class Refused(Exception):
    """A request that gets no answer; ``reason`` is the server's drop reason for it
    (malformed, bad_authenticator, bad_message_authenticator, missing_message_authenticator)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LeanRequest:
    """A decoded Access-Request or Accounting-Request; values decoded on access, as pyrad's."""

    __slots__ = (
        "_attrs",
        "_codec",
        "_delegated",
        "_fields",
        "_pyrad",
        "authenticator",
        "code",
        "id",
        "message_authenticator",
        "raw_packet",
        "secret",
        "source",
    )

    source: tuple[Any, ...]  # set by the server: where a Disconnect-Request may go

    def __init__(
        self,
        codec: "LeanCodec",
        raw: bytes,
        secret: bytes,
        attrs: dict[Key, list[bytes]],
        message_authenticator: bool,
    ) -> None:
        self._codec = codec
        self._fields = codec.table.fields
        self._delegated = codec.table.delegated
        self.raw_packet = raw
        self.code = raw[0]
        self.id = raw[1]
        self.authenticator = raw[4:20]
        self.secret = secret
        self._attrs = attrs
        # pyrad's flag: True when the packet has one, else None.
        self.message_authenticator: bool | None = True if message_authenticator else None
        self._pyrad: Any = None

    def pyrad_packet(self) -> Any:
        """The same request decoded by pyrad (built once, on first need)."""
        if self._pyrad is None:
            cls = rp.AcctPacket if self.code == ACCOUNTING_REQUEST else rp.AuthPacket
            self._pyrad = cls(
                packet=self.raw_packet, secret=self.secret, dict=self._codec.dictionary
            )
        return self._pyrad

    def raw_attributes(self) -> Mapping[Key, list[bytes]]:
        """The raw values by key, in pyrad's layout and order (not to be changed)."""
        return self._attrs

    def get(self, key: object, failobj: Any = None) -> Any:
        """The decoded values of the attribute named ``key`` (the raw values for a code or
        ``(vendor, code)`` key), or ``failobj`` without it; ``ValueError`` for a value
        of the wrong size, as pyrad."""
        if type(key) is str:
            field = self._fields.get(key)
            if field is None:
                if ":" in key or key in self._delegated:
                    return self.pyrad_packet().get(key, failobj)
                return failobj  # a name the dictionary does not know: pyrad's answer too
            raw = self._attrs.get(field.key)
            if raw is None:
                return failobj
            decode = field.decode
            return [decode(value) for value in raw]
        if type(key) is int or type(key) is tuple:
            return self._attrs.get(key, failobj)
        return self.pyrad_packet().get(key, failobj)

    def first_value(self, name: str) -> Any:
        """``get(name)[0]``, or None without the attribute: the request path reads most
        attributes once, and most have one value, decoded alone. Several are all
        decoded, so that one of the wrong size raises ``ValueError`` as ``get`` does."""
        field = self._fields.get(name)
        if field is None:
            values = self.get(name)
            return values[0] if values else None
        raw = self._attrs.get(field.key)
        if not raw:
            return None
        decode = field.decode
        first = decode(raw[0])
        for value in raw[1:]:
            decode(value)
        return first

    def __getitem__(self, key: object) -> Any:
        """As ``get``, with ``KeyError`` for an attribute the packet does not have."""
        values = self.get(key, _ABSENT)
        if values is _ABSENT:
            raise KeyError(key)
        return values

    def __contains__(self, key: object) -> bool:
        """Whether the packet has the attribute (a name, or a key as pyrad's are)."""
        if type(key) is str:
            field: Field | None = self._fields.get(key)
            if field is not None:
                return field.key in self._attrs
            if ":" not in key and key not in self._delegated:
                return False  # a name the dictionary does not know
        elif type(key) is int or type(key) is tuple:
            return key in self._attrs
        return key in self.pyrad_packet()

    def PwDecrypt(self, password: bytes | str) -> str:
        """A User-Password's value in clear (RFC 2865 section 5.2), as pyrad's."""
        return decrypt_password(password, self.secret, self.authenticator)

    def CreateReply(self) -> LeanReply:
        """The reply: an Access-Accept (the code can be changed) or Accounting-Response,
        with the request's Proxy-States."""
        proxy_states = self._attrs.get(PROXY_STATE)
        return LeanReply(
            self._codec.table,
            self._codec.signer,
            self.code,
            self.id,
            self.authenticator,
            self.secret,
            list(proxy_states) if proxy_states else None,
            self._pyrad_reply,
        )

    def _pyrad_reply(self) -> Any:
        return self.pyrad_packet().CreateReply()


_ABSENT: Any = object()


class LeanCodec:
    """Decodes the hot requests for one dictionary; one per server."""

    def __init__(self, dictionary: Any) -> None:
        self.dictionary = dictionary
        self.table = FieldTable(dictionary)
        self.signer = Signer()

    def decode(
        self, data: bytes, secret: bytes, *, require_message_authenticator: bool
    ) -> LeanRequest | None:
        """The request in ``data``, verified with the client's ``secret``; None for a packet
        that is not an Access-Request or Accounting-Request, or that has a TLV attribute
        (pyrad's to decode). ``Refused`` with the server's drop reason for one that fails a
        check. Octets past the Length are padding and ignored (RFC 2865 section 3)."""
        size = len(data)
        if size < MIN_LENGTH:
            raise Refused("malformed")
        length = (data[2] << 8) | data[3]
        if not MIN_LENGTH <= length <= size or length > MAX_LENGTH:
            raise Refused("malformed")
        code = data[0]
        if code != ACCESS_REQUEST and code != ACCOUNTING_REQUEST:
            return None
        if length != size:
            data = data[:length]
        tlv_keys = self.table.tlv_keys
        attrs: dict[Key, list[bytes]] = {}
        at, ma_at = 20, -1
        while at < length:
            if at + 2 > length:
                raise Refused("malformed")
            kind, end = data[at], at + data[at + 1]
            if end < at + 2 or end > length:
                raise Refused("malformed")
            if kind == VENDOR_SPECIFIC and end - at >= 8:
                # Split into (vendor, type) sub-attributes (RFC 2865 5.26) when their
                # lengths tile the value; otherwise pyrad keeps it whole, under 26.
                sub = at + 6
                while sub + 2 <= end and data[sub + 1] >= 2:
                    sub += data[sub + 1]
                if sub == end:
                    vendor = int.from_bytes(data[at + 2 : at + 6], "big")
                    sub = at + 6
                    while sub < end:
                        sub_end = sub + data[sub + 1]
                        key: Key = (vendor, data[sub])
                        if tlv_keys and key in tlv_keys:
                            return None
                        values = attrs.get(key)
                        if values is None:
                            attrs[key] = [data[sub + 2 : sub_end]]
                        else:
                            values.append(data[sub + 2 : sub_end])
                        sub = sub_end
                    at = end
                    continue
            elif kind == MESSAGE_AUTHENTICATOR and ma_at < 0:
                ma_at = at
            elif tlv_keys and kind in tlv_keys:
                return None
            value = data[at + 2 : end]
            values = attrs.get(kind)
            if values is None:
                attrs[kind] = [value]
            else:
                values.append(value)
            at = end
        if code == ACCOUNTING_REQUEST:
            expected = md5(data[:4] + _ZEROS + data[20:] + secret).digest()
            if not hmac.compare_digest(expected, data[4:20]):
                raise Refused("bad_authenticator")
        if ma_at >= 0:
            if not self._message_authenticator_holds(data, code, ma_at, secret):
                raise Refused("bad_message_authenticator")
        elif code == ACCESS_REQUEST and require_message_authenticator:
            raise Refused("missing_message_authenticator")
        return LeanRequest(self, data, secret, attrs, ma_at >= 0)

    def _message_authenticator_holds(self, data: bytes, code: int, at: int, secret: bytes) -> bool:
        """Whether the Message-Authenticator at ``at`` is the packet's HMAC-MD5 (RFC 3579
        section 3.2): over the packet with that value zeroed, and for an Accounting-Request
        with a zero Request Authenticator (it is computed after the HMAC; FreeRADIUS and
        pyrad sign it so)."""
        if data[at + 1] != 18:
            return False  # a value of any other size matches no 16-octet HMAC
        value = data[at + 2 : at + 18]
        if code == ACCOUNTING_REQUEST:
            message = data[:4] + _ZEROS + data[20 : at + 2] + _ZEROS + data[at + 18 :]
        else:
            message = data[: at + 2] + _ZEROS + data[at + 18 :]
        return hmac.compare_digest(value, self.signer.mac(secret, message))
