"""Reading request attributes and writing Cisco VSAs in their ``name=value`` form."""

from pyrad.packet import Packet


def first(packet: Packet, name: str) -> str | None:
    """The first value of an attribute as text, or None when absent or undecodable."""
    # The lean codec's requests decode the first value alone; pyrad's decode them all.
    first_value = getattr(packet, "first_value", None)
    try:
        if first_value is not None:
            value = first_value(name)
        else:
            values = packet.get(name)
            value = values[0] if values else None
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return str(value)


def cisco_value(packet: Packet, name: str) -> str | None:
    """A Cisco h323 VSA's value: ``h323-conf-id=ABC`` -> ``ABC`` (bare values pass through)."""
    raw = first(packet, name)
    if raw is None:
        return None
    prefix = f"{name}="
    return raw[len(prefix) :] if raw.startswith(prefix) else raw


def avpair(packet: Packet, key: str) -> str | None:
    """The value of ``key`` among the Cisco-AVPair ``key=value`` attributes."""
    try:
        values = packet.get("Cisco-AVPair") or []
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    for value in values:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        name, sep, rest = text.partition("=")
        if sep and name.strip() == key:
            return rest
    return None


def cisco(name: str, value: object) -> tuple[str, str]:
    """A Cisco VSA attribute with its value in Cisco's ``name=value`` string form."""
    return name, f"{name}={value}"
