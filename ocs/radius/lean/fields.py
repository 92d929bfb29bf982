"""The RADIUS dictionary as the lean codec reads and writes it: one ``Field`` per attribute.

Built once from pyrad's ``Dictionary``, so pyrad stays the one reader of the dictionary
files. A field decodes and encodes values exactly as pyrad's ``Packet`` does (named
values first, then the data type), with the types on the hot path (string, integer,
IPv4 address) done inline and every other type handed to ``pyrad.tools``. Attributes whose handling
involves more than a value (tagged, salt-encrypted, TLV) get no field: the codec leaves
packets and names that need them to pyrad.

Keys are pyrad's: the attribute code, or ``(vendor, code)`` for a vendor attribute.
"""

from collections.abc import Mapping
from typing import Any

from pyrad import tools

Key = int | tuple[int, int]

VENDOR_SPECIFIC = 26
PROXY_STATE = 33
MESSAGE_AUTHENTICATOR = 80
_MAX_VALUE = 253  # an attribute's Length octet counts its two header octets (RFC 2865 s. 5)
_MAX_VENDOR_VALUE = _MAX_VALUE - 6  # less the vendor id and the sub-attribute header
_MEMO_LIMIT = 1024  # whole attributes remembered per field


class Field:
    """One dictionary attribute: its key, and its values' decoding and encoding."""

    __slots__ = (
        "_encoded",
        "_headers",
        "_table",
        "backward",
        "datatype",
        "forward",
        "key",
        "name",
    )

    def __init__(
        self,
        name: str,
        key: Key,
        datatype: str,
        forward: Mapping[str, bytes],
        backward: Mapping[bytes, str],
        table: "FieldTable",
    ) -> None:
        self.name = name
        self.key = key
        self.datatype = datatype
        self.forward = forward  # VALUE name -> encoded value
        self.backward = backward  # encoded value -> VALUE name
        self._table = table
        self._headers: tuple[bytes, ...] | None = None
        # Whole attributes by (type, value): most values a reply carries recur (return
        # codes, currencies, billing models, routes). Keyed by type too, so that True,
        # 1 and 1.0 stay apart, as pyrad's encoding keeps them.
        self._encoded: dict[tuple[type, object], bytes] = {}

    def decode(self, raw: bytes) -> Any:
        """The value pyrad returns for ``raw``: a named value, else by data type (a string
        that is not UTF-8 stays bytes); ``ValueError`` for a value of the wrong size."""
        backward = self.backward
        if backward:
            named = backward.get(raw)
            if named is not None:
                return named
        datatype = self.datatype
        if datatype == "string":
            try:
                return raw.decode()
            except UnicodeDecodeError:
                return raw
        if datatype == "integer" and len(raw) == 4:
            return int.from_bytes(raw, "big")
        if datatype == "ipaddr" and len(raw) == 4:
            # NAS-IP-Address, read for every request (decision 0048): pyrad's dotted quad.
            return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
        return tools.DecodeAttr(datatype, raw)

    def encode(self, value: object) -> bytes:
        """The octets pyrad sends for ``value`` (without the attribute header); pyrad's
        own errors for values it refuses."""
        forward = self.forward
        if forward and isinstance(value, str):
            named = forward.get(value)
            if named is not None:
                return named
        datatype = self.datatype
        if datatype == "string":
            if type(value) is str:
                raw = value.encode()
                if len(raw) <= _MAX_VALUE:
                    return raw
            elif type(value) is bytes and len(value) <= _MAX_VALUE:
                return value
        elif datatype == "integer" and type(value) is int and 0 <= value <= 0xFFFFFFFF:
            return value.to_bytes(4, "big")
        encoded: bytes = tools.EncodeAttr(datatype, value)
        return encoded

    def attribute(self, value: object) -> bytes:
        """The whole attribute for ``value``, header included (a Vendor-Specific one for a
        vendor attribute); pyrad's ``ValueError`` for a value too long to fit."""
        encoded = self._encoded
        memo = (type(value), value)
        try:
            found = encoded.get(memo)
        except TypeError:  # unhashable: not remembered (pyrad refuses such values anyway)
            return self._whole(value)
        if found is None:
            found = self._whole(value)
            if len(encoded) >= _MEMO_LIMIT:
                encoded.clear()  # values that vary per call (amounts) come and go
            encoded[memo] = found
        return found

    def _whole(self, value: object) -> bytes:
        """``attribute`` worked out: the encoded value behind its header."""
        raw = self.encode(value)
        headers = self._headers
        if headers is None:
            headers = self._headers = self._table.headers(self.key)
        size = len(raw)
        if size >= len(headers):
            raise too_long(self.key, size)
        return headers[size] + raw


def too_long(key: Key, size: int) -> ValueError:
    """pyrad's error for a value that does not fit into an attribute."""
    return ValueError(
        f"Value of attribute {key!r} is too long ({size} octets, at most 253 fit into an attribute)"
    )


class FieldTable:
    """Every attribute of a pyrad ``Dictionary`` the lean codec handles, by name, and the
    attribute headers by key and value length."""

    def __init__(self, dictionary: Any) -> None:
        self.dictionary = dictionary
        self.fields: dict[str, Field] = {}
        # Names of the dictionary that get no field: more than a value to decode, pyrad's.
        delegated = set()
        for name, attr in dictionary.attributes.items():
            if attr.is_sub_attribute or attr.has_tag or attr.encrypt == 2 or attr.type == "tlv":
                delegated.add(name)
                continue
            key: Key = attr.code
            if attr.vendor:
                key = (dictionary.vendors.GetForward(attr.vendor), attr.code)
            self.fields[name] = Field(
                name, key, attr.type, dict(attr.values.forward), dict(attr.values.backward), self
            )
        self.delegated = frozenset(delegated)
        # Keys pyrad decodes as TLVs (it names a key by the dictionary's attribute index).
        attributes = dictionary.attributes
        self.tlv_keys: frozenset[Key] = frozenset(
            key
            for key, name in dictionary.attrindex.backward.items()
            if name in attributes and attributes[name].type == "tlv"
        )
        self._headers: dict[Key, tuple[bytes, ...]] = {}

    def headers(self, key: Key) -> tuple[bytes, ...]:
        """The attribute header for each value length the attribute can carry: index n is
        the header of an n-octet value (a Vendor-Specific one for a vendor key)."""
        found = self._headers.get(key)
        if found is None:
            if isinstance(key, tuple):
                vendor, code = key
                vendor_id = vendor.to_bytes(4, "big")
                found = tuple(
                    bytes((VENDOR_SPECIFIC, n + 8)) + vendor_id + bytes((code, n + 2))
                    for n in range(_MAX_VENDOR_VALUE + 1)
                )
            else:
                found = tuple(bytes((key, n + 2)) for n in range(_MAX_VALUE + 1))
            self._headers[key] = found
        return found
