"""Discarding a calling-card batch whose creation failed and will not be finished.

A batch that fails part-way leaves cards in Redis that PostgreSQL does not know
(ocs.balances.cards): the same request again finishes it. When nobody will send
it again (the settings are lost, the batch is no longer wanted), those cards stay
in Redis for ever, and ``ocs reconcile`` reports them as orphans and exits 1 on
every run. ``discard_unfinished_batch`` removes them (``ocs pins discard``):

- under the batch's lock (``cards.lock_batch``), held by a creation of the same
  batch for its whole transaction, so neither runs while the other does, and
  only if PostgreSQL records no such batch and none of its cards;
- each card's PIN is withdrawn first (release_pin.lua: only where it still opens
  that card), then the card (discard_card.lua): its balance, never spendable
  since nobody received its PIN, is written off by a ``discarded`` ledger entry,
  so its ledger sums to zero and a later batch of the same id starts clean;
- then the batch's claim, so that any request may make a batch of that id anew.

Run again after a failure, it finishes what is left.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ocs.balances import keys
from ocs.balances.card_ids import CARD_PREFIX, is_card_account
from ocs.balances.cards import lock_batch, validate_batch_id
from ocs.balances.cluster import RedisClient
from ocs.balances.store import BalanceStore
from ocs.errors import OcsError, Reason

log = logging.getLogger("ocs.cards")

_SCAN_COUNT = 10_000
_CHUNK = 2_000  # cards discarded at once


@dataclass(frozen=True, slots=True)
class Discarded:
    """What discarding a batch removed: its cards, the PINs still opening them, and
    their balances written off (micro-units of ``currency``; None: no card)."""

    batch_id: str
    cards: int
    pins_withdrawn: int
    written_off: int
    currency: str | None


@dataclass(frozen=True, slots=True)
class _Card:
    account_id: str
    created: str
    pin: str | None
    currency: str | None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _cards_in_redis(redis: RedisClient, batch_id: str) -> list[_Card]:
    """The batch's cards Redis holds (every master's, on a cluster), by id."""
    prefix = f"{CARD_PREFIX}{batch_id}-"
    found: list[str] = []
    # Batch ids hold letters, digits, - and _ only: nothing a SCAN pattern reads as special.
    async for key in redis.scan_iter(match=f"acct:*:{prefix}*", count=_SCAN_COUNT):
        account_id = _text(key).partition("}:")[2]
        # The exact form: batch "A" must not match the cards of batch "A-2".
        if is_card_account(account_id) and account_id[len(prefix) :].isdigit():
            found.append(account_id)
    found.sort()
    async with redis.pipeline(transaction=False) as pipe:
        for account_id in found:
            pipe.hmget(keys.account(account_id), ["created", "pin", "currency"])
        replies = await pipe.execute() if found else []
    cards = []
    for account_id, (created, pin, currency) in zip(found, replies, strict=True):
        if created is None:
            continue  # gone since the scan
        cards.append(
            _Card(
                account_id,
                _text(created),
                _text(pin) if pin else None,
                None if currency is None else _text(currency),
            )
        )
    return cards


async def _refuse_if_recorded(
    conn: asyncpg.Connection, batch_id: str, cards: Sequence[_Card]
) -> None:
    """409 when PostgreSQL records the batch or any of its cards: a batch that stands."""
    if await conn.fetchval("SELECT 1 FROM pin_batches WHERE id = $1", batch_id):
        raise OcsError(
            Reason.ACCOUNT_EXISTS,
            f"batch {batch_id!r} was created: only an unfinished batch is discarded",
            field="batch",
        )
    recorded = await conn.fetchval(
        "SELECT count(*) FROM accounts WHERE id = ANY($1::text[])",
        [card.account_id for card in cards],
    )
    if recorded:
        raise OcsError(
            Reason.ACCOUNT_EXISTS,
            f"{recorded} cards of batch {batch_id!r} are accounts PostgreSQL records:"
            " not discarded",
            field="batch",
        )


async def _discard(store: BalanceStore, batch_id: str, card: _Card) -> tuple[int, int]:
    """One card: its PIN withdrawn, then the card; (PINs withdrawn, written off)."""
    withdrawn = 0
    if card.pin is not None and await store.release_pin(card.pin, card.account_id):
        withdrawn = 1
    outcome, amount = await store.discard_card(
        card.account_id, card.created, f"discarded:{batch_id}"
    )
    if outcome == "BUSY":
        raise OcsError(
            Reason.FUNDS_HELD_BY_LIVE_CALLS,
            f"card {card.account_id!r} holds a call or reserved funds: not discarded",
            field="batch",
        )
    return withdrawn, amount


async def discard_unfinished_batch(
    redis: RedisClient, pool: asyncpg.Pool, store: BalanceStore, batch_id: str
) -> Discarded:
    """Remove from Redis the cards, PINs and claim of batch ``batch_id``, whose creation
    failed and will not be finished. 409 when PostgreSQL records the batch (or one of
    its cards), 404 when Redis holds nothing of it."""
    validate_batch_id(batch_id)
    async with pool.acquire() as conn, conn.transaction():
        # Waits for a creation of this batch in flight; one that starts meanwhile waits.
        await lock_batch(conn, batch_id)
        cards = await _cards_in_redis(redis, batch_id)
        await _refuse_if_recorded(conn, batch_id, cards)
        claimed = await redis.exists(keys.card_batch(batch_id))
        if not cards and not claimed:
            raise OcsError(
                Reason.NOT_FOUND, f"Redis holds no card of batch {batch_id!r}", field="batch"
            )
        withdrawn = written_off = 0
        for start in range(0, len(cards), _CHUNK):
            outcomes = await asyncio.gather(
                *(_discard(store, batch_id, card) for card in cards[start : start + _CHUNK])
            )
            withdrawn += sum(pins for pins, _ in outcomes)
            written_off += sum(amount for _, amount in outcomes)
        await store.drop_batch_claim(batch_id)
    currency = next((card.currency for card in cards if card.currency), None)
    log.warning(
        "unfinished card batch discarded",
        extra={
            "batch": batch_id,
            "cards": len(cards),
            "pins_withdrawn": withdrawn,
            "written_off": written_off,
            "currency": currency,
        },
    )
    return Discarded(batch_id, len(cards), withdrawn, written_off, currency)
