"""Which call a RADIUS request names, and which NAS sent it (decision 0048).

A call id from an ``h323-conf-id`` (an H.323 conference GUID) or a SIP ``call-id``
is unique everywhere. An ``Acct-Session-Id``, or any other attribute an operator
names in ``radius_call_id_order``, is unique only on the NAS that counts it (RFC 2866
section 5.5): two gateways both counting from 00000001 would name one call. Such an
id is qualified by the client and the NAS it came from,
``<session>@<client>:<nas>``, so each NAS has calls of its own.

The NAS is what it says it is within its client (``NAS-Identifier``, else
``NAS-IP-Address`` or ``NAS-IPv6-Address``, as FreeRADIUS's unique session id takes
it), else the packet's source address: the nodes of a high-availability pair that
share one NAS identity and one client keep finding each other's calls.
"""

import hashlib

from pyrad.packet import Packet

from ocs.charging.lifecycle import MAX_CALL_ID
from ocs.radius.attributes import avpair, cisco_value, first
from ocs.radius.clients import NasClient

# The sources whose ids are unique beyond the NAS that made them.
GLOBAL_SOURCES = frozenset({"h323-conf-id", "call-id"})
_NAS_ATTRIBUTES = ("NAS-Identifier", "NAS-IP-Address", "NAS-IPv6-Address")


def id_and_source(packet: Packet, order: tuple[str, ...]) -> tuple[str, str] | None:
    """The call id from the first source present in ``order``, and that source."""
    for source in order:
        if source == "h323-conf-id":
            value = cisco_value(packet, "h323-conf-id")
        elif source == "call-id":
            value = avpair(packet, "call-id")
        else:
            value = first(packet, source)
        if value:
            return value.strip(), source
    return None


def call_id_of(packet: Packet, order: tuple[str, ...]) -> str | None:
    """The call id as the NAS sent it, from the first source present in ``order``."""
    found = id_and_source(packet, order)
    return None if found is None else found[0]


def nas_node(packet: Packet) -> str | None:
    """The NAS a request comes from within its client: the identity it states, else the
    packet's source address (None when neither is known)."""
    for name in _NAS_ATTRIBUTES:
        value = first(packet, name)
        if value:
            return value.strip()
    source = getattr(packet, "source", None)
    return str(source[0]) if source else None


def radius_call_id(packet: Packet, order: tuple[str, ...], client: NasClient) -> str | None:
    """The call a request names: a global id as sent, a NAS's own id qualified by its
    client and NAS (``<session>@<client>:<nas>``). A qualified id longer than a call id
    may be names its NAS by a digest instead."""
    found = id_and_source(packet, order)
    if found is None:
        return None
    value, source = found
    if source in GLOBAL_SOURCES or not value:
        return value
    qualifier = f"{client.name}:{nas_node(packet) or ''}"
    qualified = f"{value}@{qualifier}"
    if len(qualified) <= MAX_CALL_ID:
        return qualified
    # Too long to keep readable (a NAS-Identifier may take 253 octets): the session id
    # stays as sent, and the NAS it belongs to is named by 16 hex digits of a digest.
    return f"{value}@{hashlib.blake2b(qualifier.encode(), digest_size=8).hexdigest()}"
