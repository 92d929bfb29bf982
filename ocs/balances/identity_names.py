"""One name, one customer: an account id, a member's name and a caller id never name
two accounts.

``CallService.identify`` takes a RADIUS User-Name (or an HTTP call's ``member``) as an
account id before a member's name, and ``identify_caller`` takes a caller id as a
member's name before a listed caller id. A name held by one account in one role and by
another account in the other would silently move the calls of the one shadowed to the
other customer. So each creation of such a name (an account, a member, a caller id)
looks the other roles up in PostgreSQL, the system of record, and is refused 409
``account_exists`` naming its field when another account holds the name there.

The look-up and the insert that follows run in one transaction under an advisory lock
of the name (``hold_name``), which every such creation takes: two made at once (an
account ``alice`` and a member ``alice``) are serialized, so the second sees the first.
Nothing of this is on the request path (decision 0053, addendum 2026-12-07).
"""

import asyncpg

from ocs.errors import OcsError, Reason

# The first key of every name's advisory lock (the two-key form): it keeps these locks
# apart from every single-key advisory lock ocs takes (``hashtext`` of a text), which a
# name's hash could otherwise equal. Any fixed number does; this one spells "idnm".
NAME_LOCK_CLASS = 0x69646E6D


async def hold_name(conn: asyncpg.Connection, name: str) -> None:
    """Hold ``name`` as an identity until ``conn``'s transaction ends, so that no other
    creation of it (an account id, a member, a caller id) runs meanwhile. Each creation
    takes one name, last before its look-ups: no two such locks wait on each other."""
    await conn.execute("SELECT pg_advisory_xact_lock($1::int, hashtext($2))", NAME_LOCK_CLASS, name)


async def refuse_member_as_account_id(conn: asyncpg.Connection, account_id: str) -> None:
    """Refuse a new account whose id is already a member's name (409 ``account_exists``
    naming ``id``): the id would take the member's calls from its account. The name is
    held already (``hold_name``)."""
    if await conn.fetchval("SELECT 1 FROM account_members WHERE member = $1", account_id):
        raise OcsError(
            Reason.ACCOUNT_EXISTS,
            f"{account_id!r} is another account's member: an account by that id would"
            " take that member's calls (remove the member there first)",
            field="id",
        )


async def refuse_taken_member(conn: asyncpg.Connection, account_id: str, member: str) -> None:
    """Refuse a member of ``account_id`` whose name is another account's id or caller id
    (409 ``account_exists`` naming ``member``). A member named like its own account's id
    or caller id names that same account, and stays allowed (a number that is an account's
    id and its member, for caller-id identification). The name is held already."""
    if member != account_id and await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", member):
        raise OcsError(
            Reason.ACCOUNT_EXISTS,
            f"member {member!r} is another account's id: a user name {member!r} names"
            " that account, never this member",
            field="member",
        )
    if await conn.fetchval(
        "SELECT 1 FROM account_callers WHERE caller = $1 AND account_id <> $2", member, account_id
    ):
        raise OcsError(
            Reason.ACCOUNT_EXISTS,
            f"member {member!r} is another account's caller id: calls from it would be"
            " charged to this account (remove the caller id there first)",
            field="member",
        )


async def refuse_taken_caller(conn: asyncpg.Connection, account_id: str, caller: str) -> None:
    """Refuse a caller id (its digits) of ``account_id`` that is another account's
    member (409 ``account_exists`` naming ``caller``): a caller id finds a member first,
    so calls from it would be charged to that other account. The name is held already."""
    if await conn.fetchval(
        "SELECT 1 FROM account_members WHERE member = $1 AND account_id <> $2", caller, account_id
    ):
        raise OcsError(
            Reason.ACCOUNT_EXISTS,
            f"caller {caller} is another account's member: calls from it would be"
            " charged to that account (remove the member there first)",
            field="caller",
        )
