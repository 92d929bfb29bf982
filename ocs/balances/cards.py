"""Calling cards: PIN batches, each PIN an account, and finding a card by its PIN.

A card is an account whose id (``card-<batch>-<n>``) says nothing about its
PIN; the PIN reaches the account through a digest, so neither PostgreSQL,
Redis nor the logs ever hold a PIN. A batch is all or nothing: its accounts,
PIN digests and opening balances are written in one PostgreSQL transaction,
with Redis written inside it. A card opens by its PIN only: its id, sequential
and printed beside the PIN, names no account to an end user (decision 0042).
"""

import asyncio
import csv
import hashlib
import io
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ocs.balances.accounts import password_digest, validate_expiry
from ocs.balances.card_ids import card_account_id
from ocs.balances.store import BalanceStore
from ocs.errors import OcsError, Reason, invalid
from ocs.money import format_amount

MAX_BATCH = 1_000_000
_REDIS_CHUNK = 2_000


def pin_digest(pin: str) -> str:
    """The key a PIN is found by; the PIN itself is never stored."""
    return hashlib.sha256(b"ocs-pin\x00" + pin.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Card:
    """One generated card: its PIN, optional password and the account it opens."""

    pin: str
    password: str | None
    account_id: str


@dataclass(frozen=True, slots=True)
class Batch:
    """A generated batch of cards, as handed to the operator once (PINs are not kept)."""

    id: str
    plan_id: str
    currency: str
    value: int
    expires_at: datetime | None
    expire_days: int
    cards: tuple[Card, ...]

    def csv(self) -> str:
        """The batch as the printer gets it: one card per line."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["pin", "password", "account", "value", "currency", "expires"])
        if self.expires_at is not None:
            expires = self.expires_at.isoformat()
        elif self.expire_days:
            expires = f"{self.expire_days} days after first use"
        else:
            expires = "never"
        for card in self.cards:
            writer.writerow(
                [
                    card.pin,
                    card.password or "",
                    card.account_id,
                    format_amount(self.value),
                    self.currency,
                    expires,
                ]
            )
        return out.getvalue()


def _validate(batch_id: str, count: int, length: int, password_length: int | None) -> None:
    if not batch_id or len(batch_id) > 32 or not all(c.isalnum() or c in "-_" for c in batch_id):
        raise invalid("batch", "expected 1 to 32 letters, digits, '-' or '_'")
    if not 1 <= count <= MAX_BATCH:
        raise invalid("count", f"expected 1 to {MAX_BATCH}")
    if not 6 <= length <= 20:
        raise invalid("length", "expected 6 to 20 digits")
    # Keep PINs sparse: a guess must almost never hit a card.
    if count * 1000 > 10**length:
        raise invalid("length", f"{length} digits are too few for {count} cards")
    if password_length is not None and not 4 <= password_length <= 32:
        raise invalid("password_length", "expected 4 to 32 digits")


def _digits(length: int) -> str:
    return f"{secrets.randbelow(10**length):0{length}d}"


class CardService:
    """Generates card batches and finds the account a PIN opens."""

    def __init__(self, pool: asyncpg.Pool, store: BalanceStore) -> None:
        self._pool = pool
        self._store = store

    async def generate(
        self,
        *,
        batch_id: str,
        plan_id: str,
        count: int,
        length: int,
        value: int,
        password_length: int | None = None,
        expires_at: datetime | None = None,
        expire_days: int = 0,
    ) -> Batch:
        """Create ``count`` cards worth ``value`` each; the PINs are returned once, here."""
        _validate(batch_id, count, length, password_length)
        if value < 0:
            raise invalid("value", "must not be negative")
        validate_expiry(expires_at)
        if expires_at is not None and expire_days:
            raise invalid("expire_days", "give a fixed expiry or days after first use, not both")
        if not 0 <= expire_days <= 36_600:
            raise invalid("expire_days", "expected 0 to 36600 days")
        async with self._pool.acquire() as conn, conn.transaction():
            plan = await conn.fetchrow("SELECT * FROM plans WHERE id = $1", plan_id)
            if plan is None:
                raise OcsError(
                    Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan"
                )
            inserted = await conn.fetchval(
                "INSERT INTO pin_batches (id, plan_id, count, value) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                batch_id,
                plan_id,
                count,
                value,
            )
            if inserted is None:
                raise OcsError(
                    Reason.ACCOUNT_EXISTS, f"batch {batch_id!r} exists already", field="batch"
                )
            cards = await self._unique_cards(conn, batch_id, count, length, password_length)
            await conn.copy_records_to_table(
                "accounts",
                columns=[
                    "id", "plan_id", "currency", "credit_limit", "max_lines", "status",
                    "password_digest", "expires_at", "min_balance", "critical_balance",
                    "member_max_lines", "expire_days", "language",
                ],
                records=[
                    (
                        card.account_id, plan_id, plan["currency"], 0, plan["max_lines"],
                        "active",
                        None if card.password is None
                        else password_digest(card.account_id, card.password),
                        expires_at, plan["min_balance"], plan["critical_balance"],
                        plan["member_max_lines"], expire_days, plan["language"],
                    )
                    for card in cards
                ],
            )  # fmt: skip
            await conn.copy_records_to_table(
                "pins",
                columns=["pin_digest", "account_id", "batch_id"],
                records=[(pin_digest(c.pin), c.account_id, batch_id) for c in cards],
            )
            # Redis inside the transaction: if it fails, PostgreSQL keeps nothing.
            for start in range(0, len(cards), _REDIS_CHUNK):
                chunk = cards[start : start + _REDIS_CHUNK]
                await asyncio.gather(
                    *(
                        self._create_card(card, plan, value, expires_at, expire_days)
                        for card in chunk
                    )
                )
        return Batch(
            id=batch_id,
            plan_id=plan_id,
            currency=plan["currency"],
            value=value,
            expires_at=expires_at,
            expire_days=expire_days,
            cards=tuple(cards),
        )

    async def _unique_cards(
        self,
        conn: asyncpg.Connection,
        batch_id: str,
        count: int,
        length: int,
        password_length: int | None,
    ) -> list[Card]:
        pins: set[str] = set()
        while len(pins) < count:
            fresh = {_digits(length) for _ in range(count - len(pins))} - pins
            taken = await conn.fetch(
                "SELECT pin_digest FROM pins WHERE pin_digest = ANY($1::text[])",
                [pin_digest(p) for p in fresh],
            )
            clash = {r["pin_digest"] for r in taken}
            pins |= {p for p in fresh if pin_digest(p) not in clash}
        # Serial numbers say nothing about PINs: the PINs are dealt in random order.
        dealt = list(pins)
        secrets.SystemRandom().shuffle(dealt)
        return [
            Card(
                pin=pin,
                password=None if password_length is None else _digits(password_length),
                account_id=card_account_id(batch_id, n),
            )
            for n, pin in enumerate(dealt, start=1)
        ]

    async def _create_card(
        self,
        card: Card,
        plan: asyncpg.Record,
        value: int,
        expires_at: datetime | None,
        expire_days: int,
    ) -> None:
        created = await self._store.create_account(
            card.account_id,
            plan_id=plan["id"],
            currency=plan["currency"],
            credit_limit=0,
            max_lines=plan["max_lines"],
            status="active",
            opening_balance=value,
            password_digest=""
            if card.password is None
            else password_digest(card.account_id, card.password),
            expires_at=0 if expires_at is None else int(expires_at.timestamp()),
            min_balance=plan["min_balance"],
            critical_balance=plan["critical_balance"],
            member_lines=plan["member_max_lines"],
            expire_days=expire_days,
        )
        if not created:
            raise OcsError(
                Reason.ACCOUNT_EXISTS, f"account {card.account_id!r} exists already in Redis"
            )
        await self._store.set_pin(pin_digest(card.pin), card.account_id)

    async def account_for_pin(self, pin: str) -> str | None:
        """The card a PIN opens, if any."""
        if not pin.isascii() or not pin.isdigit() or not 6 <= len(pin) <= 20:
            return None
        return await self._store.pin_account(pin_digest(pin))

    async def language(self, account_id: str) -> str:
        """The language of a card's account prompts (``en`` when unset)."""
        async with self._pool.acquire() as conn:
            return (
                await conn.fetchval("SELECT language FROM accounts WHERE id = $1", account_id)
                or "en"
            )
