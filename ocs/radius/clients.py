"""RADIUS clients (NAS): who may talk to ocs, with which shared secret and policy.

Clients come from the configuration file (``radius_clients``) and from the
``nas_clients`` table (admin API). A packet's source address is matched to
the most specific network; a packet from no known client is dropped.
"""

import ipaddress
import json
from dataclasses import dataclass, field

import asyncpg

from ocs.config import Settings
from ocs.errors import OcsError, Reason
from ocs.rating.translation import TranslationSet, translation_from_json, validate_rules

NAS_CHANNEL = "ocs_nas"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class NasClient:
    """A NAS allowed to send RADIUS requests: its network, secret and options."""

    name: str
    network: IPNetwork
    secret: bytes = field(repr=False)
    require_message_authenticator: bool
    coa_port: int | None = None  # RFC 5176 port for Disconnect-Requests; None: none
    # The NAS's own number translation, used instead of the plan's (None: the plan's).
    translation: TranslationSet | None = None


class ClientTable:
    """Address -> client, most specific network first; immutable once built."""

    def __init__(self, clients: list[NasClient]) -> None:
        self._clients = sorted(clients, key=lambda c: c.network.prefixlen, reverse=True)
        self._cache: dict[str, NasClient | None] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def named(self, name: str) -> NasClient | None:
        """The client of that name, or None."""
        return next((c for c in self._clients if c.name == name), None)

    def lookup(self, address: str) -> NasClient | None:
        """The client a source address belongs to (most specific network), or None."""
        if address in self._cache:
            return self._cache[address]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        found = next((c for c in self._clients if ip in c.network), None)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[address] = found
        return found


def clients_from_settings(settings: Settings) -> list[NasClient]:
    """The NAS clients the settings declare."""
    return [
        NasClient(
            name=c.name,
            network=ipaddress.ip_network(c.network, strict=False),
            secret=c.secret.encode(),
            require_message_authenticator=(
                settings.radius_require_message_authenticator
                if c.require_message_authenticator is None
                else c.require_message_authenticator
            ),
            coa_port=c.coa_port,
            translation=None if c.translation is None else validate_rules(list(c.translation)),
        )
        for c in settings.radius_clients
    ]


async def load_client_table(pool: asyncpg.Pool, settings: Settings) -> ClientTable:
    """Configured clients plus those in PostgreSQL (a configured network wins)."""
    clients = clients_from_settings(settings)
    known = {c.network for c in clients}
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT name, network, secret, require_message_authenticator, coa_port, translation"
            " FROM nas_clients"
        )
    for row in rows:
        network = ipaddress.ip_network(row["network"], strict=False)
        if network not in known:
            clients.append(
                NasClient(
                    row["name"],
                    network,
                    row["secret"].encode(),
                    row["require_message_authenticator"],
                    row["coa_port"],
                    translation_from_json(row["translation"]) if row["translation"] else None,
                )
            )
    return ClientTable(clients)


def refuse_configured(settings: Settings, network: str) -> None:
    """409 (field ``address``) for a network the configuration file declares: its
    client wins over a stored one (``load_client_table``), so a stored one would be
    ignored without a word."""
    wanted = ipaddress.ip_network(network, strict=False)
    for client in settings.radius_clients:
        if ipaddress.ip_network(client.network, strict=False) == wanted:
            raise OcsError(
                Reason.SET_IN_CONFIG,
                f"the configuration file's radius_clients has {wanted} (as {client.name!r}),"
                " and its entry wins: change it there",
                field="address",
            )


async def add_client(
    pool: asyncpg.Pool,
    name: str,
    network: str,
    secret: str,
    require_message_authenticator: bool,
    coa_port: int | None = None,
    translation: TranslationSet | None = None,
) -> None:
    """Add or replace a stored NAS client and tell every process to reload the table.
    The caller refuses a configured network first (``refuse_configured``)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO nas_clients (name, network, secret, require_message_authenticator,"
            " coa_port, translation) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO"
            " UPDATE SET network = $2, secret = $3, require_message_authenticator = $4,"
            " coa_port = $5, translation = $6",
            name,
            network,
            secret,
            require_message_authenticator,
            coa_port,
            None if translation is None else translation.to_json(),
        )
        await conn.execute("SELECT pg_notify($1, $2)", NAS_CHANNEL, name)


async def remove_client(pool: asyncpg.Pool, settings: Settings, name: str) -> None:
    """Remove a stored NAS client and tell every process to reload the table: its
    requests are dropped from then on. 404 for no stored client of that name; 409 for
    one the configuration file declares (only the file can remove it)."""
    async with pool.acquire() as conn, conn.transaction():
        deleted = await conn.fetchval("DELETE FROM nas_clients WHERE name = $1 RETURNING 1", name)
        if deleted is None:
            if any(c.name == name for c in settings.radius_clients):
                raise OcsError(
                    Reason.SET_IN_CONFIG,
                    f"NAS client {name!r} is in the configuration file's radius_clients:"
                    " remove it there",
                    field="name",
                )
            raise OcsError(Reason.NOT_FOUND, f"no NAS client {name!r}", field="name")
        await conn.execute("SELECT pg_notify($1, $2)", NAS_CHANNEL, name)


async def list_clients(pool: asyncpg.Pool) -> list[dict[str, object]]:
    """Every stored NAS client, without its secret."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT name, network, require_message_authenticator, coa_port, translation"
            " FROM nas_clients ORDER BY name"
        )
    return [
        {
            "name": r["name"],
            "address": str(r["network"]),
            "require_message_authenticator": r["require_message_authenticator"],
            "coa_port": r["coa_port"],
            "translation": json.loads(r["translation"]) if r["translation"] else None,
        }
        for r in rows
    ]
