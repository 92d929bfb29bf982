"""Access-Accept, Access-Reject and Accounting-Response built from precomputed headers.

``LeanReply`` answers to the part of pyrad's reply packet that the RADIUS server uses
(``code``, ``AddAttribute``, ``in``, ``add_message_authenticator``, ``ReplyPacket``), so
the server builds a reply the same way whichever codec decoded the request, and the
octets are pyrad's: attributes grouped by key in the order each key was first added
(pyrad keeps them in a dict of lists), the request's Proxy-States first (RFC 2865 5.33),
the Message-Authenticator before everything (RFC 3579 3.2; computed over the reply with
itself zeroed, with the Request Authenticator, or zeros for an Accounting-Response), and
the Response Authenticator MD5(code, id, length, request authenticator, attributes,
secret) (RFC 2865 section 3, RFC 2866 section 3).

Anything else (a name with a tag, a TLV, a raw key, an unknown name, the
Message-Authenticator added by hand) turns the reply into pyrad's: the request is
decoded by pyrad, its reply gets every step so far replayed, and pyrad carries on.
"""

import struct
from collections.abc import Callable
from itertools import chain
from typing import Any

from ocs.radius.lean.crypto import Signer, md5
from ocs.radius.lean.fields import MESSAGE_AUTHENTICATOR, PROXY_STATE, FieldTable, Key

ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5
STATUS_SERVER = 12
_DISCONNECT_REQUEST = 40
_COA_REQUEST = 43

_HEADER = struct.Struct("!BBH")
_ZEROS = bytes(16)
_MA_HEADER = bytes((MESSAGE_AUTHENTICATOR, 18))
_MA_NAME = "Message-Authenticator"


class LeanReply:
    """A reply to a request the lean codec decoded; pyrad's reply interface, in part."""

    __slots__ = (
        "_fields",
        "_groups",
        "_ma_added",
        "_pairs",
        "_pyrad",
        "_pyrad_reply",
        "_request_code",
        "_signer",
        "authenticator",
        "code",
        "id",
        "message_authenticator",
        "secret",
    )

    def __init__(
        self,
        table: FieldTable,
        signer: Signer,
        request_code: int,
        ident: int,
        authenticator: bytes,
        secret: bytes,
        proxy_states: list[bytes] | None,
        pyrad_reply: Callable[[], Any],
    ) -> None:
        """A reply to request ``request_code``/``ident`` with the Request Authenticator
        ``authenticator``; ``pyrad_reply`` makes pyrad's reply to the same request."""
        self._fields = table.fields
        self._signer = signer
        self._request_code = request_code
        self.id = ident
        self.authenticator = authenticator
        self.secret = secret
        if request_code in (ACCESS_REQUEST, STATUS_SERVER):
            self.code = ACCESS_ACCEPT
            # pyrad signs every reply to an Access-Request (BlastRADIUS, CVE-2024-3596).
            self.message_authenticator: bool | None = True
        else:
            self.code = ACCOUNTING_RESPONSE
            self.message_authenticator = None
        # Whole attributes by key, keys in the order first added: pyrad's layout.
        self._groups: dict[Key, list[bytes]] = {}
        if proxy_states:
            headers = table.headers(PROXY_STATE)
            self._groups[PROXY_STATE] = [headers[len(value)] + value for value in proxy_states]
        self._pairs: list[tuple[str, object]] = []
        self._ma_added = False
        self._pyrad_reply = pyrad_reply
        self._pyrad: Any = None

    def _to_pyrad(self) -> Any:
        """pyrad's reply, with what was done to this one so far."""
        if self._pyrad is None:
            reply = self._pyrad_reply()
            reply.code = self.code
            for name, value in self._pairs:
                reply.AddAttribute(name, value)
            if self._ma_added:
                reply.add_message_authenticator()
            reply.message_authenticator = self.message_authenticator
            self._pyrad = reply
        return self._pyrad

    def AddAttribute(self, key: str, value: object) -> None:
        """Append a value (or a list or tuple of values) of the attribute named ``key``."""
        if self._pyrad is not None:
            self._pyrad.AddAttribute(key, value)
            return
        field = self._fields.get(key) if type(key) is str else None
        if field is None or field.key == MESSAGE_AUTHENTICATOR:
            self._to_pyrad().AddAttribute(key, value)
            return
        if isinstance(value, list | tuple):
            encoded = [field.attribute(one) for one in value]
        else:
            encoded = [field.attribute(value)]
        group = self._groups.get(field.key)
        if group is None:
            self._groups[field.key] = encoded
        else:
            group += encoded
        self._pairs.append((key, value))

    def __contains__(self, key: object) -> bool:
        """Whether the reply has the attribute (a name, or a key as pyrad's are)."""
        if self._pyrad is None:
            if key in (MESSAGE_AUTHENTICATOR, _MA_NAME):
                return self._ma_added
            if type(key) is str:
                field = self._fields.get(key)
                if field is not None:
                    return field.key in self._groups
            elif type(key) is int or type(key) is tuple:
                return key in self._groups
        return key in self._to_pyrad()

    def add_message_authenticator(self) -> None:
        """Sign the reply with a Message-Authenticator, as its first attribute (RFC 3579)."""
        self.message_authenticator = True
        self._ma_added = True
        if self._pyrad is not None:
            self._pyrad.add_message_authenticator()

    def ReplyPacket(self) -> bytes:
        """The reply's octets, authenticated for the request's client."""
        if self._pyrad is None and self._ma_added and not self.message_authenticator:
            self._to_pyrad()  # a zeroed Message-Authenticator sent as is: pyrad's oddity
        if self._pyrad is not None:
            self._pyrad.code = self.code
            self._pyrad.message_authenticator = self.message_authenticator
            wire: bytes = self._pyrad.ReplyPacket()
            return wire
        body = b"".join(chain.from_iterable(self._groups.values()))
        code, secret, request_authenticator = self.code, self.secret, self.authenticator
        if self.message_authenticator:
            self._ma_added = True
            header = _HEADER.pack(code, self.id, 38 + len(body))
            vector = self._vector()
            mac = self._signer.mac(secret, header + vector + _MA_HEADER + _ZEROS + body)
            body = _MA_HEADER + mac + body
        else:
            header = _HEADER.pack(code, self.id, 20 + len(body))
        response: bytes = md5(header + request_authenticator + body + secret).digest()
        return header + response + body

    def _vector(self) -> bytes:
        """The authenticator the Message-Authenticator is computed with (RFC 2869 5.14,
        RFC 5176 3.3, RFC 5997 3), as pyrad chooses it for a reply."""
        code = self.code
        if code in (ACCOUNTING_REQUEST, _DISCONNECT_REQUEST, _COA_REQUEST) or (
            code == ACCOUNTING_RESPONSE and self._request_code != STATUS_SERVER
        ):
            return _ZEROS
        return self.authenticator
