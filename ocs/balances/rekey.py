"""Digests stored in the old form, before the pepper (decision 0054), made new-form.

A PIN or password digest stored before decision 0054 is in the old form, with a
public key: a copy of the store gives its PIN away. Two ways turn it into the new
form, keyed by the pepper (``ocs.balances.digests``):

- as it is used: a PIN no new-form digest opens is looked up by its old form
  (``open_by_legacy_pin``), and the card's reference re-keyed; a password stored in
  the old form is checked by its old form and replaced (``check_password.lua``);
- all at once: ``ocs credentials rekey`` (``rekey_all``) turns every old-form digest of
  PostgreSQL and Redis into its new form, from the stored digest alone (the new form is
  built on the old one): no PIN or password is needed. Safe while ocs serves: every
  step keeps the card or password working, and one that changed meanwhile is left as it
  is. Run once after upgrading; running it again finds nothing to do.

After it, no old-form digest is left in either store. It then records so
(``ocs.balances.old_forms``), and a PIN no new-form digest opens is no longer looked up by
its old form: a wrong PIN costs one Redis look-up, not two. It clears that mark as it
begins, so that a run cut short (or one re-keying the old digests a restored backup
brought back) leaves the old-form look-up on until a run finishes with none left.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import asyncpg

from ocs.balances import keys
from ocs.balances.cluster import RedisClient
from ocs.balances.digests import PEPPERED, Digests, is_peppered, legacy_pin_digest
from ocs.balances.old_forms import record_gone
from ocs.balances.store import BalanceStore

log = logging.getLogger("ocs.rekey")

# Rows read from PostgreSQL, and Redis keys handled, per step.
CHUNK = 2_000
# Keys asked of each master per SCAN step.
SCAN_COUNT = 10_000


async def open_by_legacy_pin(store: BalanceStore, digests: Digests, pin: str) -> str | None:
    """The card a PIN opens by its old-form digest, if any; its reference is re-keyed on
    the way (decision 0054), so that it opens by the new form from now on. Called only
    for a PIN no new-form digest opens: a card re-keyed costs nothing more."""
    legacy = legacy_pin_digest(pin)
    account = await store.pin_account(legacy)
    if account is None:
        return None
    if await store.rekey_pin(legacy, digests.pin_from_legacy(legacy), account):
        log.info("card PIN digest re-keyed", extra={"account": account})
    return account


@dataclass(slots=True)
class RekeyReport:
    """What ``rekey_all`` turned into the new form, store by store, and the PIN references
    it left: their new form opens another card (``conflicts``, card ids; never expected);
    ``old_forms_left``: whether any old-form digest is still stored (only with conflicts:
    the old-form look-up of PINs then stays on)."""

    postgres_pins: int = 0
    postgres_passwords: int = 0
    redis_pins: int = 0
    redis_passwords: int = 0
    redis_card_pins: int = 0
    conflicts: list[str] = field(default_factory=list)
    old_forms_left: bool = True


async def _rekey_postgres_pins(pool: asyncpg.Pool, digests: Digests) -> int:
    """Every old-form PIN digest of the ``pins`` table in its new form; how many."""
    done, after = 0, ""
    while True:
        async with pool.acquire() as conn:
            olds = [
                r["pin_digest"]
                for r in await conn.fetch(
                    "SELECT pin_digest FROM pins WHERE NOT starts_with(pin_digest, $3)"
                    " AND pin_digest > $1 ORDER BY pin_digest LIMIT $2",
                    after,
                    CHUNK,
                    PEPPERED,
                )
            ]
            if not olds:
                return done
            status = await conn.execute(
                "UPDATE pins p SET pin_digest = u.new"
                " FROM unnest($1::text[], $2::text[]) AS u (old, new) WHERE p.pin_digest = u.old",
                olds,
                [digests.pin_from_legacy(old) for old in olds],
            )
        done += int(status.split()[-1])
        after = olds[-1]


async def _rekey_postgres_passwords(pool: asyncpg.Pool, digests: Digests) -> int:
    """Every old-form password digest of the ``accounts`` table in its new form; how many.
    A password changed meanwhile keeps its new value."""
    done, after = 0, ""
    while True:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, password_digest FROM accounts WHERE password_digest <> ''"
                " AND NOT starts_with(password_digest, $3) AND id > $1 ORDER BY id LIMIT $2",
                after,
                CHUNK,
                PEPPERED,
            )
            if not rows:
                return done
            status = await conn.execute(
                "UPDATE accounts a SET password_digest = u.new"
                " FROM unnest($1::text[], $2::text[], $3::text[]) AS u (id, old, new)"
                " WHERE a.id = u.id AND a.password_digest = u.old",
                [r["id"] for r in rows],
                [r["password_digest"] for r in rows],
                [digests.password_from_legacy(r["password_digest"]) for r in rows],
            )
        done += int(status.split()[-1])
        after = rows[-1]["id"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _scan(redis: RedisClient, match: str) -> AsyncIterator[list[str]]:
    """The names after the hash tag (``pin:{b:N}:<digest>``, ``acct:{b:N}:<id>``) of the
    keys matching ``match``, every master's on a cluster, a chunk at a time. Keys
    written while it runs may be seen or not: the re-keyed ones are passed over."""
    found: list[str] = []
    async for key in redis.scan_iter(match=match, count=SCAN_COUNT):
        found.append(_text(key).partition("}:")[2])
        if len(found) >= CHUNK:
            yield found
            found = []
    if found:
        yield found


async def _rekey_redis_pins(
    store: BalanceStore, redis: RedisClient, digests: Digests, report: RekeyReport
) -> None:
    """Every PIN reference of Redis keyed by an old-form digest, re-keyed."""
    async for chunk in _scan(redis, "pin:*"):
        olds = [digest for digest in chunk if not is_peppered(digest)]
        accounts = await asyncio.gather(*(store.pin_account(old) for old in olds))
        found = [(old, a) for old, a in zip(olds, accounts, strict=True) if a is not None]
        moved = await asyncio.gather(
            *(store.rekey_pin(old, digests.pin_from_legacy(old), a) for old, a in found)
        )
        report.redis_pins += sum(moved)
        report.conflicts += [a for (_, a), ok in zip(found, moved, strict=True) if not ok]


async def _rekey_redis_accounts(
    store: BalanceStore, redis: RedisClient, digests: Digests, report: RekeyReport
) -> None:
    """Every password digest and card PIN digest an account hash keeps in the old form,
    re-keyed; one changed meanwhile is left as it is."""
    async for chunk in _scan(redis, "acct:*"):
        async with redis.pipeline(transaction=False) as pipe:
            for account_id in chunk:
                pipe.hmget(keys.account(account_id), ["pw", "pin"])
            replies: Sequence[list[bytes | str | None]] = await pipe.execute()
        passwords, pins = [], []
        for account_id, (password, pin) in zip(chunk, replies, strict=True):
            if password and not is_peppered(old := _text(password)):
                passwords.append((account_id, old, digests.password_from_legacy(old)))
            if pin and not is_peppered(old := _text(pin)):
                pins.append((account_id, old, digests.pin_from_legacy(old)))
        done = await asyncio.gather(
            *(store.rekey_field(a, "pw", old, new) for a, old, new in passwords),
            *(store.rekey_field(a, "pin", old, new) for a, old, new in pins),
        )
        report.redis_passwords += sum(done[: len(passwords)])
        report.redis_card_pins += sum(done[len(passwords) :])


async def rekey_all(
    pool: asyncpg.Pool, store: BalanceStore, redis: RedisClient, digests: Digests
) -> RekeyReport:
    """Turn every old-form PIN and password digest of PostgreSQL and Redis into its new
    form (``ocs credentials rekey``); what was changed. When none is left, recorded for
    every process: a PIN no new-form digest opens is then not looked up by its old form."""
    # Until this run ends with none left, the processes look old forms up: a run cut
    # short leaves them doing so, whatever an earlier run recorded.
    await record_gone(pool, False)
    report = RekeyReport()
    report.postgres_pins = await _rekey_postgres_pins(pool, digests)
    report.postgres_passwords = await _rekey_postgres_passwords(pool, digests)
    await _rekey_redis_pins(store, redis, digests, report)
    await _rekey_redis_accounts(store, redis, digests, report)
    # Redis: every old form the scans met was re-keyed, or is a conflict (a field changed
    # meanwhile holds a new form: no process of this version writes an old one).
    # PostgreSQL is asked again, which costs little.
    report.old_forms_left = bool(report.conflicts) or await _old_forms_in_postgres(pool)
    if not report.old_forms_left:
        await record_gone(pool, True)
    log.info(
        "old-form PIN and password digests re-keyed",
        extra={
            "postgres_pins": report.postgres_pins,
            "postgres_passwords": report.postgres_passwords,
            "redis_pins": report.redis_pins,
            "redis_passwords": report.redis_passwords,
            "redis_card_pins": report.redis_card_pins,
            "conflicts": len(report.conflicts),
            "old_forms_left": report.old_forms_left,
        },
    )
    return report


async def _old_forms_in_postgres(pool: asyncpg.Pool) -> bool:
    """Whether PostgreSQL still holds a PIN or password digest of the old form."""
    left = await pool.fetchval(
        "SELECT EXISTS (SELECT FROM pins WHERE NOT starts_with(pin_digest, $1))"
        " OR EXISTS (SELECT FROM accounts WHERE password_digest <> ''"
        " AND NOT starts_with(password_digest, $1))",
        PEPPERED,
    )
    return bool(left)
