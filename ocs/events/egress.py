"""Where webhooks may be sent: no address inside the operator's own network unless allowed.

A webhook's URL is an operator's input, and its failed attempts' errors are shown to
viewer tokens (``GET /v1/events``): a URL naming 127.0.0.1, the cloud's metadata
service (169.254.169.254) or a host of the private network made ocs a blind port
scanner and a request forger inside that network. Unless ``webhook_allow_private`` is
on, a literal IP address of those kinds is refused when a webhook is added, and every
address a delivery would connect to is checked at send time, after DNS (a name that
points inside is refused too): ``connector`` wraps aiohttp's resolver, so the check
is on the addresses the connection really uses (no second look-up to race).
"""

import ipaddress
import socket
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

# A host name that resolves to the loopback by definition (RFC 6761).
LOCALHOST = "localhost"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# The old IPv4-compatible form (::127.0.0.1), whose last 32 bits are the IPv4 address;
# :: and ::1 in it are IPv6's own unspecified and loopback addresses.
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# NAT64's local-use prefix (RFC 8215): a translator inside the operator's own network.
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class PrivateAddressRefused(Exception):
    """A webhook's host is, or resolves to, an address ``webhook_allow_private`` keeps
    out. Not an OSError: aiohttp passes it on as is, without the host and port its
    connection errors quote."""


def private_kind(address: IPAddress) -> str | None:
    """What kind of address inside the network ``address`` is ("loopback",
    "link-local", "private", "multicast", "unspecified"); None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64_LOCAL:
            return "private"
        # IPv6 forms that reach an IPv4 address: mapped (::ffff:127.0.0.1), 6to4
        # (2002:7f00:1::), NAT64's well-known prefix (64:ff9b::7f00:1) and the old
        # IPv4-compatible form (::127.0.0.1).
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.sixtofour is not None:
            address = address.sixtofour
        elif address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    # Not global: RFC 1918 and unique local, shared (100.64/10), reserved, documentation.
    if address.is_private or not address.is_global or site_local:
        return "private"
    return None


def literal_kind(host: str, *, names: bool = True) -> str | None:
    """The kind of a URL host that names an address inside the network by itself (an IP
    literal of such an address, or, with ``names``, ``localhost``); None otherwise (a
    public address, or a host name, which only a look-up can tell)."""
    name = host.strip("[]").removesuffix(".").lower()
    if names and (name == LOCALHOST or name.endswith("." + LOCALHOST)):
        return "loopback"
    try:
        return private_kind(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        # The legacy IPv4 forms the C library still reads (127.1, 2130706433, 0x7f.1).
        return private_kind(ipaddress.IPv4Address(socket.inet_aton(name)))
    except OSError:
        return None


def refusal(kind: str) -> str:
    """The reason a delivery is refused (no host or address: it is shown to viewers)."""
    return (
        f"refused: the webhook's host is a {kind} address, inside the network"
        " (webhook_allow_private is off)"
    )


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, refusing any answer that holds an address inside
    the network (a name with one such address among public ones is refused whole)."""

    def __init__(self) -> None:
        """Wrap aiohttp's default resolver."""
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of ``host``; PrivateAddressRefused when one is inside."""
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            kind = private_kind(ipaddress.ip_address(entry["host"]))
            if kind is not None:
                raise PrivateAddressRefused(refusal(kind))
        return found

    async def close(self) -> None:
        """Release the wrapped resolver."""
        await self._inner.close()


def connector(allow_private: bool) -> aiohttp.TCPConnector:
    """The connector webhooks are sent through: any address when ``allow_private``,
    else public ones only (an IP literal host is checked by ``check_url_host`` first:
    aiohttp does not resolve one)."""
    options: dict[str, Any] = {} if allow_private else {"resolver": GuardedResolver()}
    return aiohttp.TCPConnector(**options)


def check_url_host(url: str, allow_private: bool) -> None:
    """Refuse (PrivateAddressRefused) a URL whose host is an IP address inside the
    network, unless ``allow_private``: aiohttp looks no IP literal up, so ``connector``
    never sees one. A host name (``localhost`` too) is checked at its look-up.
    ValueError: not a URL (the caller records it as any unusable URL)."""
    if allow_private:
        return
    host = yarl.URL(url).host
    kind = None if host is None else literal_kind(host, names=False)
    if kind is not None:
        raise PrivateAddressRefused(refusal(kind))
