"""Which call a RADIUS request names, and which NAS sent it (decision 0048).

A call id from an ``h323-conf-id`` (an H.323 conference GUID) or a SIP ``call-id``
is unique everywhere. An ``Acct-Session-Id`` (the third source
``radius_call_id_order`` may name) is unique only on the NAS that counts it (RFC 2866
section 5.5): two gateways both counting from 00000001 would name one call. Such an
id is qualified by the client and the NAS it came from,
``<session>@<client>:<nas>``, so each NAS has calls of its own.

The NAS is what it says it is within its client (``NAS-IP-Address``, else
``NAS-IPv6-Address`` or ``NAS-Identifier``, the attributes FreeRADIUS's unique session
id takes), else the packet's source address: the nodes of a high-availability pair
that share one NAS identity and one client keep finding each other's calls. The
address comes first: every NAS sends it, in its accounting too, and it is usually the
address the packets come from, which a request that states none is then known by.
"""

import hashlib

from pyrad.packet import Packet

from ocs.charging.lifecycle import MAX_CALL_ID
from ocs.radius.attributes import avpair, cisco_value, first
from ocs.radius.clients import NasClient

# The sources whose ids are unique beyond the NAS that made them.
GLOBAL_SOURCES = frozenset({"h323-conf-id", "call-id"})
_NAS_ATTRIBUTES = ("NAS-IP-Address", "NAS-IPv6-Address", "NAS-Identifier")


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


def _stated(value: str | None) -> str:
    """A stated NAS identity as a call id may carry it, or "" when it cannot: some NASes
    end their strings with a NUL octet, no part of the name; one with a control
    character or a "|" (which no call id holds) is passed over for the next name."""
    if not value:
        return ""
    node = value.strip().strip("\x00")
    return node if node.isprintable() and "|" not in node else ""


def nas_node(packet: Packet) -> str | None:
    """The NAS a request comes from within its client: the identity it states, else the
    packet's source address (None when neither is known)."""
    for name in _NAS_ATTRIBUTES:
        node = _stated(first(packet, name))
        if node:
            return node
    source = getattr(packet, "source", None)
    return str(source[0]) if source else None


def nas_names(packet: Packet) -> list[str]:
    """Every name the NAS of a request goes by, ``nas_node``'s first: the identities it
    states, then the packet's source address. A NAS that states another identity in
    its accounting than in its Access-Request (or none) is still found by one."""
    names = []
    for name in _NAS_ATTRIBUTES:
        node = _stated(first(packet, name))
        if node and node not in names:
            names.append(node)
    source = getattr(packet, "source", None)
    if source and str(source[0]) not in names:
        names.append(str(source[0]))
    return names


def other_call_ids(packet: Packet, order: tuple[str, ...], client: NasClient) -> list[str]:
    """The ids a request's call may have been authorized under when not under the one
    ``radius_call_id`` gives: qualified by each other name of its NAS (``nas_names``).
    None for a global id."""
    found = id_and_source(packet, order)
    if found is None or found[1] in GLOBAL_SOURCES:
        return []
    names = nas_names(packet)
    ids = [radius_call_id(packet, order, client, name) for name in names[1:]]
    return [call_id for call_id in ids if call_id]


# What a long session id keeps of itself when qualified: room for "@" and 16 hex digits.
_KEPT = MAX_CALL_ID - 17


def radius_call_id(
    packet: Packet,
    order: tuple[str, ...],
    client: NasClient,
    node: str | None = None,
    generation: int = 0,
) -> str | None:
    """The call a request names: a global id as sent, a NAS's own id qualified by its
    client and NAS ``node`` (``<session>@<client>:<nas>``; None: ``nas_node``'s, read
    only when needed), and by the NAS's restart ``generation`` when it has restarted
    (``~<its cut-off, epoch ms>``, decision 0059: a session id it numbers afresh is a new
    call). One that would be longer than a call id may be keeps the start of the
    session id and names the rest by a digest of the whole."""
    found = id_and_source(packet, order)
    if found is None:
        return None
    value, source = found
    if source in GLOBAL_SOURCES or not value:
        return value
    if node is None:
        node = nas_node(packet)
    qualified = f"{value}@{client.name}:{node or ''}"
    if generation:
        qualified = f"{qualified}~{generation}"
    if len(qualified) <= MAX_CALL_ID:
        return qualified
    # Too long to keep whole (a NAS-Identifier may take 253 octets, a session id too):
    # 16 hex digits of a digest of the whole keep each NAS's calls apart.
    digest = hashlib.blake2b(qualified.encode(), digest_size=8).hexdigest()
    return f"{value[:_KEPT]}@{digest}"


def qualified_source(packet: Packet, order: tuple[str, ...]) -> bool:
    """Whether the request's call id is a NAS's own, qualified by its client and NAS (an
    ``Acct-Session-Id``), not a global one."""
    found = id_and_source(packet, order)
    return found is not None and found[1] not in GLOBAL_SOURCES


def legacy_call_id(packet: Packet, order: tuple[str, ...]) -> str | None:
    """The id a call authorized before decision 0048 was kept under (the session id as
    sent), when ``radius_call_id`` qualified it; None when it names a global id."""
    found = id_and_source(packet, order)
    if found is None or found[1] in GLOBAL_SOURCES:
        return None
    return found[0]
