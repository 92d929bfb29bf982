"""What a Redis holds that is not ``ocs demo``'s own (decision 0014, addendums 2026-12-07).

The demo's server runs a ledger writer in the ledger's consumer group and a janitor: on
a deployment's Redis they would read its ledger entries into the demo's PostgreSQL and
delete them from the streams, and close its live calls; its accounts 1001, 1002 and 2001
would be taken over. So a Redis is the demo's only when every key in it is one the demo
makes (``ocs.balances.keys`` says what each kind of key holds):

- keys named after an account (balance, live calls, results kept for retries,
  counters, member lines, IVR): of the demo's accounts only;
- ledger and dead-letter entries, live calls' expiry entries, call references, and
  the references of callers, numbers, members and PINs: naming the demo's accounts;
- counter cycles: of a demo plan or account;
- what any process writes for itself (the live-state sample, the write probe) and
  short-lived traces of requests (failed PINs, a NAS's restart).

Anything else (another account's key, a ledger entry of another account, a card batch,
a usage import, a key ocs does not make) is not the demo's.
"""

from collections import Counter
from collections.abc import Iterable
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from ocs.balances import keys
from ocs.charging.values import CallRecord

# Counted up to this many in all, as the PostgreSQL check: enough to say what it is.
COUNT_UP_TO = 1000


class _Tally:
    """What was found that is not the demo's, by kind; full once over ``COUNT_UP_TO``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._accounts: set[str] = set()

    @property
    def full(self) -> bool:
        """Whether enough was found to stop looking."""
        return sum(self.counts.values()) > COUNT_UP_TO

    def add(self, what: str, count: int = 1) -> None:
        """Count ``count`` things of kind ``what`` that are not the demo's."""
        if count:
            self.counts[what] += count

    def account(self, account_id: str) -> None:
        """Count an account that is not the demo's (once, whatever its keys)."""
        if account_id not in self._accounts:
            self._accounts.add(account_id)
            self.add("accounts")

    def lines(self) -> list[str]:
        """``["accounts: 3", "ledger entries: 12"]``, with a last word when cut short."""
        # By kind's name: SCAN's order is Redis's, and the line should not change with it.
        found = [f"{what}: {count}" for what, count in sorted(self.counts.items())]
        if self.full:
            found.append("more not counted")
        return found


def _text(value: bytes | str) -> str:
    """A key, field or value as text, whether the client decodes replies or not."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def other_redis_data(redis: Any, accounts: Iterable[str], plans: Iterable[str]) -> list[str]:
    """What ``redis`` holds that is not the demo's (``accounts`` and ``plans`` are its),
    e.g. ``["accounts: 2", "ledger entries: 5"]``; empty for the demo's own, or nothing.

    Reads only (SCAN, then GET, XRANGE or ZRANGE of the keys whose names do not say whose
    they are), and stops once ``COUNT_UP_TO`` things were counted.
    """
    own = _Own(frozenset(accounts), frozenset(plans))
    tally = _Tally()
    async for raw in redis.scan_iter(count=COUNT_UP_TO):
        await own.look_at(redis, _text(raw), tally)
        if tally.full:
            break
    return tally.lines()


class _Own:
    """The demo's accounts and plans, and how each kind of key is told to be theirs."""

    def __init__(self, accounts: frozenset[str], plans: frozenset[str]) -> None:
        self.accounts = accounts
        self.plans = plans

    async def look_at(self, redis: Any, key: str, tally: _Tally) -> None:
        """Count ``key`` (or what it holds) in ``tally`` unless it is the demo's."""
        prefix = keys.key_prefix(key)
        if key in keys.PROCESS_KEYS or prefix in keys.TRACE_KEY_PREFIXES:
            return
        account = keys.account_of_key(key)
        scope = keys.counter_cycle_scope(key)
        try:
            if account is not None:
                if account not in self.accounts:
                    tally.account(account)
            elif scope is not None:
                if scope[0] not in self.plans and scope[1] not in self.accounts:
                    tally.add("counter cycles")
            elif prefix in keys.LEDGER_KEY_PREFIXES:
                tally.add("ledger entries", await self._others_in_stream(redis, key))
            elif prefix == keys.EXPIRY_PREFIX:
                tally.add("live calls", await self._others_in_expiry(redis, key))
            elif prefix in keys.REFERENCE_KEY_PREFIXES or prefix == keys.CALL_REF_PREFIX:
                if not await self._reference_is_own(redis, key, prefix):
                    tally.add("references")
            else:
                tally.add("other keys")
        except ResponseError:  # WRONGTYPE: a key of that name holding something else
            tally.add("other keys")

    async def _others_in_stream(self, redis: Any, key: str) -> int:
        """Entries of a ledger (or dead-letter) stream not of the demo's accounts; those
        past the first ``COUNT_UP_TO`` are counted unread (the demo's own ledger writer
        keeps its streams near empty)."""
        length = int(await redis.xlen(key))
        entries = await redis.xrange(key, count=COUNT_UP_TO) if length else []
        others = sum(
            1
            for _id, fields in entries
            if _text(fields.get(b"account", fields.get("account", b""))) not in self.accounts
        )
        return others + length - len(entries)

    async def _others_in_expiry(self, redis: Any, key: str) -> int:
        """Live calls in an expiry set not of the demo's accounts (past the first
        ``COUNT_UP_TO``: counted unread)."""
        length = int(await redis.zcard(key))
        members = await redis.zrange(key, 0, COUNT_UP_TO - 1) if length else []
        others = sum(
            1 for member in members if keys.split_expiry_member(member)[0] not in self.accounts
        )
        return others + length - len(members)

    async def _reference_is_own(self, redis: Any, key: str, prefix: str) -> bool:
        """Whether a reference names one of the demo's accounts (a call reference, by
        its live-call record)."""
        value = await redis.get(key)
        if value is None:
            return True  # expired since the SCAN
        if prefix != keys.CALL_REF_PREFIX:
            return _text(value) in self.accounts
        try:
            record = CallRecord.unpack(value if isinstance(value, bytes) else value.encode())
        except msgspec.DecodeError:
            return False
        return record.account_id in self.accounts
