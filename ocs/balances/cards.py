"""Calling cards: PIN batches, each PIN an account, and finding a card by its PIN.

A card is an account whose id (``card-<batch>-<n>``) says nothing about its
PIN; the PIN reaches the account through a digest keyed by the server's pepper
(decision 0054), so neither PostgreSQL, Redis nor the logs ever hold a PIN, and a
copy of them does not give one away. A batch is all or nothing in PostgreSQL: its
accounts, PIN digests and opening balances are written in one transaction, with
Redis written inside it. A card opens by its PIN only: its id, sequential and
printed beside the PIN, names no account to an end user (decision 0042).

Redis cannot roll back: a batch that fails part-way (Redis lost, the COMMIT
refused) leaves cards in Redis that PostgreSQL does not know. The same request
again (same batch id and settings) finishes the batch: it takes those cards over
and deals every card a new PIN and password, the ones it hands out; the PINs of
the failed try, never handed out, are withdrawn then, and already at its failure
where Redis still answers (decision 0042).
"""

import asyncio
import csv
import io
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from redis.exceptions import RedisError

from ocs.balances.accounts import (
    creation_token,
    pin_length_lock,
    starting_state,
    utc_text,
    validate_expiry,
)
from ocs.balances.card_ids import card_account_id
from ocs.balances.digests import Digests, legacy_pin_digest
from ocs.balances.old_forms import OldForms
from ocs.balances.rekey import open_by_legacy_pin
from ocs.balances.store import BalanceStore
from ocs.errors import OcsError, Reason, invalid
from ocs.money import format_amount

log = logging.getLogger("ocs.cards")

MAX_BATCH = 1_000_000
_REDIS_CHUNK = 2_000
# Draws of fresh PINs before a batch is refused: with at most one PIN in 1000 taken,
# a draw leaves about one in 1000 of its PINs to draw again, so 20 never run out.
_UNIQUE_ROUNDS = 20


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


def validate_batch_id(batch_id: str) -> None:
    """Refuse (400, field ``batch``) an id that is not 1 to 32 ASCII letters, digits, - or _:
    its cards' ids must be ones the HTTP API's account paths accept (``café`` would make
    cards no one could view, lock or top up)."""
    if (
        not batch_id
        or len(batch_id) > 32
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in batch_id)
    ):
        raise invalid("batch", "expected 1 to 32 ASCII letters, digits, '-' or '_'")


async def check_pin_space(conn: asyncpg.Connection, count: int, length: int) -> None:
    """Refuse (400, field ``length``) ``count`` more PINs of ``length`` digits when, with
    the cards of that length already live, more than one in 1000 PINs would open a card.

    The live cards of batches made before migration 0063 (no recorded length: only
    digests of their PINs are kept) count against every length, since any may be theirs;
    the refusal says how many there are.

    Holds the length until ``conn``'s transaction ends, so two batches of one length
    never both count the space before either has written its PINs (no batch of unknown
    length is made any more: their count only falls), and no account whose id has that
    length is created meanwhile (``accounts.hold_pin_length``, shared): the batch sees
    every such account committed before it, and such an account every PIN it deals."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", pin_length_lock(length))
    # pins rows are the live cards: a discarded card's row is gone with its account.
    live, unknown = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE b.pin_length = $1),"
        " count(*) FILTER (WHERE b.pin_length IS NULL)"
        " FROM pins JOIN pin_batches b ON b.id = pins.batch_id"
        " WHERE b.pin_length = $1 OR b.pin_length IS NULL",
        length,
    )
    if (live + unknown + count) * 1000 > 10**length:
        older = (
            f" and {unknown} of batches made before PIN lengths were recorded (counted"
            " against every length),"
            if unknown
            else ""
        )
        raise invalid(
            "length",
            f"{length} digits are too few for {count} more cards: {live} cards of that"
            f" length are live,{older} and at most {10**length // 1000} may be;"
            " choose a longer length",
        )


async def lock_batch(conn: asyncpg.Connection, batch_id: str) -> None:
    """Hold the batch id until ``conn``'s transaction ends: a batch's creation and the
    discarding of its unfinished cards (ocs.balances.card_orphans) never run at once."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"ocs-pin-batch:{batch_id}")


def _validate(batch_id: str, count: int, length: int, password_length: int | None) -> None:
    validate_batch_id(batch_id)
    if not 1 <= count <= MAX_BATCH:
        raise invalid("count", f"expected 1 to {MAX_BATCH}")
    if not 6 <= length <= 20:
        raise invalid("length", "expected 6 to 20 digits")
    # Keep PINs sparse: a guess must almost never hit a card. The cards already live
    # of this length count too (check_pin_space, inside the batch's transaction).
    if count * 1000 > 10**length:
        raise invalid("length", f"{length} digits are too few for {count} cards")
    if password_length is not None and not 4 <= password_length <= 32:
        raise invalid("password_length", "expected 4 to 32 digits")


def draw_digits(length: int) -> str:
    """A random string of ``length`` decimal digits (a PIN or a password); a module
    function so a test can make every draw collide."""
    return f"{secrets.randbelow(10**length):0{length}d}"


class CardService:
    """Generates card batches and finds the account a PIN opens."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: BalanceStore,
        digests: Digests,
        old_forms: OldForms | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._digests = digests
        # Whether a PIN may still open by its old-form digest (decision 0054).
        self._old_forms = OldForms() if old_forms is None else old_forms

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
        dealt: list[Card] = []  # the cards whose PINs this try may have given to Redis
        adopted = 0  # cards a failed try of this request had made, taken over
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await lock_batch(conn, batch_id)
                # FOR SHARE: a change of the plan's billing cycle waits for the batch.
                plan = await conn.fetchrow("SELECT * FROM plans WHERE id = $1 FOR SHARE", plan_id)
                if plan is None:
                    raise OcsError(
                        Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan"
                    )
                # A card on a plan billed on demand calls only in a session, as an account.
                state = await starting_state(conn, plan_id, "active")
                inserted = await conn.fetchval(
                    "INSERT INTO pin_batches (id, plan_id, count, value, pin_length)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                    batch_id,
                    plan_id,
                    count,
                    value,
                    length,
                )
                if inserted is None:
                    raise OcsError(
                        Reason.ACCOUNT_EXISTS, f"batch {batch_id!r} exists already", field="batch"
                    )
                await check_pin_space(conn, count, length)
                cards = await self._unique_cards(conn, batch_id, count, length, password_length)
                # The request, the plan's values resolved: not the PINs and passwords,
                # which each try deals anew.
                token = creation_token(
                    "card batch", batch_id, plan_id, plan["currency"], count, length, value,
                    password_length, utc_text(expires_at), expire_days, plan["max_lines"],
                    plan["min_balance"], plan["critical_balance"], plan["member_max_lines"],
                    plan["language"], *state,
                )  # fmt: skip
                await self._claim(batch_id, token)
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
                            state[0],
                            None if card.password is None
                            else self._digests.password(card.account_id, card.password),
                            expires_at, plan["min_balance"], plan["critical_balance"],
                            plan["member_max_lines"], expire_days, plan["language"],
                        )
                        for card in cards
                    ],
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "pins",
                    columns=["pin_digest", "account_id", "batch_id"],
                    records=[(self._digests.pin(c.pin), c.account_id, batch_id) for c in cards],
                )
                # Redis inside the transaction: if it fails, PostgreSQL keeps nothing.
                for start in range(0, len(cards), _REDIS_CHUNK):
                    chunk = cards[start : start + _REDIS_CHUNK]
                    dealt = cards[: start + len(chunk)]
                    outcomes = await asyncio.gather(
                        *(
                            self._create_card(
                                card, plan, state, value, expires_at, expire_days, token
                            )
                            for card in chunk
                        ),
                        # Every card's writes are over before a failure is raised: none
                        # may deal its PIN after the PINs of a failed try are withdrawn.
                        return_exceptions=True,
                    )
                    for outcome in outcomes:
                        if isinstance(outcome, BaseException):
                            raise outcome
                        adopted += outcome
        except Exception:
            if not await self._stands_after_failure(batch_id, dealt):
                raise
        if adopted:
            log.warning(
                "card batch finished by its retry: Redis had made some of its cards,"
                " PostgreSQL had not recorded them; they have new PINs",
                extra={"batch": batch_id, "cards_taken_over": adopted},
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

    async def _claim(self, batch_id: str, token: str) -> None:
        """Claim the batch id in Redis for this request (``token``): refused when a try
        with other settings began it there, unrecorded by PostgreSQL."""
        if not await self._store.claim_batch(batch_id, token):
            # Checked before any card is made: a try with other settings would
            # add cards to the half-made batch that neither request could finish.
            raise OcsError(
                Reason.ACCOUNT_EXISTS,
                f"batch {batch_id!r} was begun in Redis by a request PostgreSQL never"
                " recorded, with other settings: send that request again as it was"
                " to finish it, or give this one another batch id",
                field="batch",
            )

    async def _stands_after_failure(self, batch_id: str, dealt: Sequence[Card]) -> bool:
        """After a try failed: True when its COMMIT went through all the same (only its
        answer lost), the batch standing; otherwise the PINs it dealt are withdrawn."""
        if not await self._committed(batch_id, dealt):
            await self._withdraw_pins(dealt)
            return False
        # The COMMIT's answer was lost, not the COMMIT: the batch stands, and its
        # PINs are handed out as if it had been answered.
        log.warning("card batch committed though its COMMIT failed", extra={"batch": batch_id})
        return True

    async def _unique_cards(
        self,
        conn: asyncpg.Connection,
        batch_id: str,
        count: int,
        length: int,
        password_length: int | None,
    ) -> list[Card]:
        """``count`` cards with PINs no card has yet and no account has as its id;
        refused (400, field ``length``) when _UNIQUE_ROUNDS draws still leave some PINs
        taken: the space is too full, and drawing on would hold the batch's transaction
        and lock for ever."""
        pins: set[str] = set()
        for _ in range(_UNIQUE_ROUNDS):
            if len(pins) >= count:
                break
            fresh = {draw_digits(length) for _ in range(count - len(pins))} - pins
            # A PIN is taken whichever form its digest is stored in: a card stored before
            # decision 0054 and not re-keyed yet still opens by its old-form digest.
            forms = {p: (self._digests.pin(p), legacy_pin_digest(p)) for p in fresh}
            taken = await conn.fetch(
                "SELECT pin_digest FROM pins WHERE pin_digest = ANY($1::text[])",
                [digest for pair in forms.values() for digest in pair],
            )
            clash = {r["pin_digest"] for r in taken}
            # A PIN that is an account's id is taken too: a RADIUS User-Name names the
            # account before any card (decision 0053), so that card's holder would call
            # on the account's money.
            accounts = await conn.fetch(
                "SELECT id FROM accounts WHERE id = ANY($1::text[])", list(forms)
            )
            named = {r["id"] for r in accounts}
            pins |= {p for p, pair in forms.items() if p not in named and clash.isdisjoint(pair)}
        if len(pins) < count:
            raise invalid(
                "length",
                f"the PINs of {length} digits are too full: {count - len(pins)} of {count}"
                f" still collided after {_UNIQUE_ROUNDS} draws; choose a longer length",
            )
        # Serial numbers say nothing about PINs: the PINs are dealt in random order.
        dealt = list(pins)
        secrets.SystemRandom().shuffle(dealt)
        return [
            Card(
                pin=pin,
                password=None if password_length is None else draw_digits(password_length),
                account_id=card_account_id(batch_id, n),
            )
            for n, pin in enumerate(dealt, start=1)
        ]

    async def _create_card(
        self,
        card: Card,
        plan: asyncpg.Record,
        state: tuple[str, str],
        value: int,
        expires_at: datetime | None,
        expire_days: int,
        token: str,
    ) -> bool:
        """Make the card in Redis, in ``state`` (status, lock reason), and let its PIN open
        it; True when it was there already, made by a failed try of the same request, and
        is taken over."""
        digest = self._digests.pin(card.pin)
        password = (
            "" if card.password is None else self._digests.password(card.account_id, card.password)
        )
        created = await self._store.create_account(
            card.account_id,
            plan_id=plan["id"],
            currency=plan["currency"],
            credit_limit=0,
            max_lines=plan["max_lines"],
            status=state[0],
            lock=state[1],
            opening_balance=value,
            password_digest=password,
            expires_at=0 if expires_at is None else int(expires_at.timestamp()),
            min_balance=plan["min_balance"],
            critical_balance=plan["critical_balance"],
            member_lines=plan["member_max_lines"],
            expire_days=expire_days,
            token=token,
            pin_digest=digest,
        )
        if created is None:
            raise OcsError(
                Reason.ACCOUNT_EXISTS,
                f"account {card.account_id!r} exists already in Redis, made by a batch"
                " request PostgreSQL never recorded, with other settings: send that request"
                " again as it was to finish it (ocs reconcile lists such accounts)",
                field="batch",
            )
        if created.adopted:
            # The failed try's PIN and password never reached the operator: its PIN is
            # withdrawn before the card names its new one, so that whatever fails next,
            # the PIN the card names is the only one that may still open it.
            if created.pin_digest and created.pin_digest != digest:
                await self._store.release_pin(created.pin_digest, card.account_id)
            await self._store.set_policy(card.account_id, {"pw": password, "pin": digest})
        await self._store.set_pin(digest, card.account_id)
        return created.adopted

    async def _committed(self, batch_id: str, dealt: Sequence[Card]) -> bool:
        """Whether PostgreSQL holds the batch with the PINs this try dealt: its COMMIT
        went through though the batch failed (its answer lost). False when it cannot
        tell (PostgreSQL unreachable): the PINs are then withdrawn, as for a batch that
        failed, since the operator receives none of them."""
        if not dealt:
            return False
        try:
            async with self._pool.acquire() as conn:
                found = await conn.fetchval(
                    "SELECT count(*) FROM pins WHERE batch_id = $1"
                    " AND pin_digest = ANY($2::text[])",
                    batch_id,
                    [self._digests.pin(card.pin) for card in dealt],
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        return bool(found == len(dealt))

    async def _withdraw_pins(self, cards: Sequence[Card]) -> None:
        """After a failed try: stop the PINs it dealt opening its cards, none of which
        the operator received. Best effort: where Redis does not answer, the request's
        retry withdraws them (each card names its PIN)."""
        for start in range(0, len(cards), _REDIS_CHUNK):
            chunk = cards[start : start + _REDIS_CHUNK]
            outcomes = await asyncio.gather(
                *(self._store.release_pin(self._digests.pin(c.pin), c.account_id) for c in chunk),
                return_exceptions=True,
            )
            if any(isinstance(outcome, RedisError) for outcome in outcomes):
                return

    async def account_for_pin(self, pin: str) -> str | None:
        """The card a PIN opens, if any."""
        if not pin.isascii() or not pin.isdigit() or not 6 <= len(pin) <= 20:
            return None
        account = await self._store.pin_account(self._digests.pin(pin))
        if account is None and self._old_forms.may_be_left():
            # Only a PIN no new-form digest opens pays for this look (decision 0054), and
            # none once no old form is left.
            account = await open_by_legacy_pin(self._store, self._digests, pin)
        return account

    async def language(self, account_id: str) -> str:
        """The language of a card's account prompts (``en`` when unset)."""
        async with self._pool.acquire() as conn:
            return (
                await conn.fetchval("SELECT language FROM accounts WHERE id = $1", account_id)
                or "en"
            )
