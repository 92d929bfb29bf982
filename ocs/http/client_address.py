"""The address an HTTP client is known by: its TCP peer, or, behind a reverse proxy
named in ``http_trusted_proxies``, the address that proxy forwarded the request for.

A proxy appends the address it received a request from to ``X-Forwarded-For``; the
entries to the left of it are whatever the client (or proxies before it) wrote, so
only the right-most ones, each added by a proxy we trust, can be believed. The client
is the right-most entry that is not itself a trusted proxy. A peer outside the
trusted networks never has its header read: a client that writes one itself is still
known by its own address (and counted by it, ``ocs.balances.pin_guard``).
"""

import ipaddress
from collections.abc import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = "X-Forwarded-For"


def parse_address(text: str) -> Address | None:
    """An address as a peer or an ``X-Forwarded-For`` entry gives it: bare, with an
    IPv6 zone, or with a port (``192.0.2.1:5060``, ``[2001:db8::1]:5060``), some proxies
    add one. An IPv4 peer of a dual-stack listener (``::ffff:a.b.c.d``) as its IPv4
    address. None for anything else (``unknown``, a name, garbage)."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAddresses:
    """Finds each request's client address, reading ``X-Forwarded-For`` only from the
    trusted proxies' networks (none: the header is never read)."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in trusted_proxies
        )

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted)

    def of(self, remote: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client's address, from the TCP peer ``remote`` (``request.remote``) and
        the request's ``X-Forwarded-For`` header lines, in order.

        The peer itself unless it is a trusted proxy. Otherwise the entries are read
        from the right: the first one not in a trusted network is the client. An entry
        that is not an address stops the walk at the trusted proxy that passed it on
        (that proxy answers for the request, as it would with no header); so does an
        empty header. When every entry is a trusted proxy, the left-most is the client.
        """
        if not self._trusted or not remote:
            return remote
        peer = parse_address(remote)
        if peer is None or not self._is_trusted(peer):
            return remote
        entries = [entry for line in forwarded_for for entry in line.split(",") if entry.strip()]
        client = peer
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                break
            client = address
            if not self._is_trusted(address):
                break
        return str(client)


CLIENT_ADDRESSES = web.AppKey("client_addresses", ClientAddresses)


def client_address(request: web.Request) -> str | None:
    """The request's client address (``ClientAddresses.of``), as the app's settings
    say whom to trust; the TCP peer in an app made without them."""
    finder = request.app.get(CLIENT_ADDRESSES)
    if finder is None:
        return request.remote
    return finder.of(request.remote, request.headers.getall(FORWARDED_FOR, ()))
