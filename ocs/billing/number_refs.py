"""A number's Redis reference made to agree with PostgreSQL after a take or release
whose COMMIT's outcome is unknown (decision 0030, addendum 2026-12-07).

A take or release tells Redis inside its transaction, then commits. When the
connection dies after the COMMIT was sent and before its answer came back, the
transaction may stand or not: putting Redis back "as before" is then a guess, and a
wrong one sends the number's inbound calls to an account PostgreSQL does not say holds
it (or to none, while the holder is charged for it). So PostgreSQL is read back on
another connection, a few short tries, and Redis is set to what it says, under the
number row's lock so that no other take or release can slip between the read and the
write. Where PostgreSQL cannot be read, the caller is answered 503 ``outcome_unknown``
and Redis is left as the change set it.
"""

import asyncio
import logging

import asyncpg

from ocs import backend_health
from ocs.balances.store import BalanceStore
from ocs.errors import OcsError, Reason

log = logging.getLogger("ocs.billing.number_sets")

# A few short tries: the number's change waits on them, and a PostgreSQL away for
# longer is answered 503 outcome_unknown rather than held.
SETTLE_TRIES = 3
SETTLE_PAUSE_S = 0.2  # before each try after the first
SETTLE_TRY_S = 2.0  # one try: a connection, the row's lock, one read and the Redis write
# What a try that PostgreSQL did not answer raises (any other error is not retried).
_NO_ANSWER = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def outcome_unknown(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a transaction that told Redis, leaves unknown whether
    its COMMIT went through: the PostgreSQL connection lost (or timed out) at that
    point, or the task cancelled then. A Redis error, a refusal or a SQL error before the
    COMMIT rolled the transaction back: known not to stand."""
    if isinstance(exc, asyncio.CancelledError | asyncpg.InterfaceError):
        return True
    if not isinstance(exc, Exception):
        return False
    return backend_health.backend_of(exc, backend_health.POSTGRESQL) == backend_health.POSTGRESQL


async def settle_reference(pool: asyncpg.Pool, store: BalanceStore, number: str) -> str | None:
    """Set the Redis reference of ``number`` to the account PostgreSQL says holds it
    (None: free, the reference removed), and return that account.

    503 ``outcome_unknown`` naming ``number`` when PostgreSQL does not answer within
    ``SETTLE_TRIES`` tries; Redis is then left unchanged. A Redis error is raised as it
    is (the caller's 503 ``unavailable``).
    """
    for attempt in range(SETTLE_TRIES):
        if attempt:
            await asyncio.sleep(SETTLE_PAUSE_S)
        try:
            async with asyncio.timeout(SETTLE_TRY_S):
                return await _read_and_tell(pool, store, number)
        except _NO_ANSWER as exc:
            # A connection of the pool may be as dead as the one that failed: the
            # pool drops it, and the next try connects afresh.
            log.warning(
                "a number's owner could not be read back after a lost COMMIT answer",
                extra={
                    "number": number,
                    "attempt": attempt + 1,
                    "error": backend_health.describe(exc),
                },
            )
    raise OcsError(
        Reason.OUTCOME_UNKNOWN,
        f"the change of number {number} was sent to PostgreSQL but its answer was lost,"
        " and PostgreSQL could not be read back: it may or may not stand. Read the"
        " account's numbers (GET /v1/accounts/{account_id}/numbers) before retrying",
        field="number",
    )


async def _read_and_tell(pool: asyncpg.Pool, store: BalanceStore, number: str) -> str | None:
    """One try: the number's holder read under its row's lock, and Redis told while the
    lock is held (a take or release of it waits meanwhile, and tells Redis after)."""
    async with pool.acquire() as conn, conn.transaction():
        holder = await conn.fetchval(
            "SELECT account_id FROM number_set_numbers WHERE number = $1 FOR SHARE", number
        )
        owner = None if holder is None else str(holder)
        await store.set_did(number, owner)
    return owner
