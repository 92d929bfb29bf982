"""Accounts: created in PostgreSQL (system of record) and Redis (real-time state) together.

PostgreSQL holds who the account is (plan, currency, limits, status); Redis
holds its live money (balance, reservations, lines). The opening balance and
every top-up are ledger entries, so the PostgreSQL ledger always sums to the
Redis balance.

Redis is written inside the PostgreSQL transaction. Its script may have run when
its reply is lost, or the COMMIT may fail after it: Redis then holds an account
PostgreSQL does not. The script keeps a token of the request that made it, so
the same request again finishes that creation instead of being refused for ever
(decision 0042); ``ocs reconcile`` reports such an account until then.
"""

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ocs.balances.card_ids import is_card_account, may_be_pin
from ocs.balances.digests import Digests, legacy_pin_digest
from ocs.balances.identity_names import (
    hold_name,
    refuse_member_as_account_id,
    refuse_taken_caller,
    refuse_taken_member,
)
from ocs.balances.store import AccountState, BalanceStore, TopupResult
from ocs.errors import OcsError, Reason, account_not_found, invalid
from ocs.limits import MAX_LINES

log = logging.getLogger("ocs.accounts")

STATUSES = ("active", "locked", "suspended")
# The Redis lock of an on-demand account with no billing session open: authorize.lua
# refuses its calls with no_open_session. An account has it from its creation on such a
# plan, or from its plan's cycle becoming on_demand; the billing sessions lift it and put
# it back, and an operator's "active" leaves it while no session is open (decision 0020).
SESSION_LOCK = "session"
# Whether the account is billed on demand and has no session open: then it may call only
# once one opens. Read under the account row's lock, which opening and closing a session
# take too, so that a session opened or closed meanwhile is seen.
_NEEDS_SESSION_SQL = """
SELECT b.cycle = 'on_demand' AND NOT EXISTS (
    SELECT 1 FROM billing_sessions s WHERE s.account_id = a.id AND s.closed_at IS NULL)
FROM accounts a JOIN plan_billing b ON b.plan_id = a.plan_id WHERE a.id = $1
"""
# Top-up results are kept this long to answer a repeated top-up with the same id.
TOPUP_DEDUPE_TTL = 30 * 24 * 3600
# 64 bits: enough to tell two requests for one account id apart (the token is no
# secret: only an admin creates accounts), and kept in every account hash.
CREATION_TOKEN_CHARS = 16


def validate_expiry(expires_at: datetime | None) -> None:
    """An account's (or card's) expiry: an aware time within the years 1970 to 2999,
    which every store holds, from the epoch's second second on (Redis's 0 is "never");
    else 400 naming ``expires_at``."""
    if expires_at is None:
        return
    if expires_at.tzinfo is None:
        raise invalid("expires_at", "needs a time zone, e.g. 2027-01-31T23:59:59Z")
    if not 1970 <= expires_at.year <= 2999:
        raise invalid("expires_at", "expected a time within the years 1970 to 2999")
    # Redis keeps whole seconds after the epoch, 0 meaning "never": a time in the first
    # second of 1970 (or before it in UTC, given in a zone east of it) would never expire.
    if expires_at.timestamp() < 1:
        raise invalid("expires_at", "expected a time after 1970-01-01T00:00:00Z")


def creation_token(*request: object) -> str:
    """The token of a creation request: every value it makes the account with (the
    plan's defaults resolved), digested. The same request made again has the same
    token, so its retry recognises the account its lost first try made in Redis;
    a request that differs in any value does not."""
    canonical = json.dumps(request, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:CREATION_TOKEN_CHARS]


def utc_text(moment: datetime | None) -> str | None:
    """An aware time as one text whatever its zone (None stays None): for a token."""
    return None if moment is None else moment.astimezone(UTC).isoformat()


class Unset:
    """Marks a keyword left out, where None means "no limit"."""


UNSET = Unset()


# A member's name (SIP user, extension): what account_members.member holds, and so what
# an imported record's member may be (a longer one names no member).
MAX_MEMBER_CHARS = 64


def validate_member(member: object, field: str = "member") -> str:
    """A member name as given, or 400 naming ``field``: 1 to 64 printable characters, no spaces."""
    if not isinstance(member, str) or not 1 <= len(member) <= MAX_MEMBER_CHARS:
        raise invalid(field, f"expected a string of 1 to {MAX_MEMBER_CHARS} characters")
    if not member.isprintable() or any(c.isspace() for c in member):
        raise invalid(field, "must be printable, without spaces")
    return member


def caller_digits_of(caller: str, field: str = "caller") -> str:
    """A caller id's digits, without a leading '+'; 400 naming ``field`` unless 1 to 32."""
    digits = caller.strip().removeprefix("+")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 32:
        raise invalid(field, "expected 1 to 32 digits, optionally with a leading '+'")
    return digits


def validate_policy(
    *,
    min_balance: int | None = None,
    member_max_lines: int | None = None,
    max_members: int | None = None,
    expire_days: int = 0,
) -> None:
    """Refuse (400, naming the field) account policy values out of range."""
    if min_balance is not None and min_balance < 0:
        raise invalid("min_balance", "must not be negative")
    if member_max_lines is not None and not 0 <= member_max_lines <= MAX_LINES:
        raise invalid("member_max_lines", f"expected 0 (no limit) to {MAX_LINES}")
    if max_members is not None and not 0 <= max_members <= 1_000_000:
        raise invalid("max_members", "expected 0 to 1000000")
    if not 0 <= expire_days <= 36_600:
        raise invalid("expire_days", "expected 0 to 36600 days")


# The ids of credits ocs makes itself in the top-up key space (``payments.credit_reference``,
# ``posting``'s invoice credit lines): refused as a top-up's own id.
RESERVED_TOPUP_PREFIXES = ("pay:", "inv:")


def validate_account_id(account_id: object, field: str = "id") -> str:
    """An account id as given, or 400 naming ``field``: 1 to 64 of letters, digits and - _ . @ +."""
    if account_id is None:
        raise invalid(field, "is required")
    if not isinstance(account_id, str):
        raise invalid(field, "expected a string")
    if not account_id or len(account_id) > 64:
        raise invalid(field, "expected 1 to 64 characters")
    if not all(c.isascii() and (c.isalnum() or c in "-_.@+") for c in account_id):
        raise invalid(field, "only letters, digits and - _ . @ + are allowed")
    return account_id


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """A new account as an operator asks for it: every limit left out (None) is the
    plan's default, copied onto the account when it is created.

    Amounts are micro-units. ``password``: the account's (or card's) password, kept
    only as its digest. ``expires_at``: when the account stops working (aware time).
    ``expire_days``: days a card lasts after its first use (0: no such expiry).
    """

    account_id: str
    plan_id: str
    opening_balance: int = 0
    credit_limit: int | None = None
    max_lines: int | None = None
    status: str = "active"
    password: str | None = None
    expires_at: datetime | None = None
    min_balance: int | None = None
    critical_balance: int | None = None
    member_max_lines: int | None = None
    max_members: int | None = None
    expire_days: int = 0
    language: str | None = None

    def validate(self) -> None:
        """Refuse (400, naming the field) what no plan could make valid."""
        validate_account_id(self.account_id)
        if is_card_account(self.account_id):
            # Such an id would name no account over RADIUS (decision 0042), and would
            # clash with the cards of a later batch.
            raise invalid("id", "card-<batch>-<seven digits> is kept for calling cards")
        if self.password is not None and not 1 <= len(self.password) <= 128:
            raise invalid("password", "expected 1 to 128 characters")
        validate_expiry(self.expires_at)
        if self.status not in STATUSES:
            raise invalid("status", f"expected one of {', '.join(STATUSES)}")
        if self.opening_balance < 0:
            raise invalid("balance", "an opening balance must not be negative")
        if self.credit_limit is not None and self.credit_limit < 0:
            raise invalid("credit_limit", "must not be negative")
        if self.max_lines is not None and not 1 <= self.max_lines <= MAX_LINES:
            raise invalid("max_lines", f"expected 1 to {MAX_LINES}")
        validate_policy(
            min_balance=self.min_balance,
            member_max_lines=self.member_max_lines,
            max_members=self.max_members,
            expire_days=self.expire_days,
        )


async def starting_state(conn: asyncpg.Connection, plan_id: str, status: str) -> tuple[str, str]:
    """The (status, Redis lock reason) a new account on ``plan_id`` starts in when
    ``status`` is asked for: ``active`` on a plan billed on demand is ``locked`` with the
    session lock, since no session is open yet (decision 0020); an operator's lock or a
    suspension is kept as asked. The caller holds the plan row (``FOR SHARE``), which a
    change of the plan's billing cycle takes too, so no such change slips in between."""
    if status != "active":
        return status, ""
    on_demand = await conn.fetchval(
        "SELECT cycle = 'on_demand' FROM plan_billing WHERE plan_id = $1", plan_id
    )
    return ("locked", SESSION_LOCK) if on_demand else ("active", "")


async def starting_commitment(conn: asyncpg.Connection, plan: asyncpg.Record) -> int:
    """What a new account on ``plan`` (its row) has committed (decision 0020, addendum
    "the committed amount is kept current"): what its next invoice bills for the plan's
    charges. A plan that does not lock, or is billed by hand or on demand, commits
    nothing. On a plan with a billing cycle, a new account has no subscription yet, so
    its next invoice bills none of the plan's charges: nothing either; subscribing it
    (over the API or the CLI) commits what that invoice will then bill
    (``commitments.refresh``), as the billing worker does at each cycle start. A plan
    locking without billing settings has no invoice to dry-run: its fee is committed."""
    if not plan["lock_prorated"]:
        return 0
    billed = await conn.fetchval("SELECT 1 FROM plan_billing WHERE plan_id = $1", plan["id"])
    return 0 if billed else int(plan["recurring_fee"])


async def _needs_session(conn: asyncpg.Connection, account_id: str) -> bool:
    """Under the account row's lock (taken here): whether it is billed on demand with no
    billing session open, so that only the session lock is its usable state."""
    if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account_id) is None:
        return False  # the update that follows reports it missing
    return bool(await conn.fetchval(_NEEDS_SESSION_SQL, account_id))


# How long the creation of an account whose id has a PIN's form waits for a batch of
# PINs of that length to end. A batch holds its length from its count of the PIN space
# to its COMMIT (cards.check_pin_space): about 2 s for 10,000 cards and 9 s for 50,000
# (benchmarks/RESULTS.md), minutes for the largest (1,000,000). Waiting longer would
# hold a pool connection, and the operator's HTTP request, for those minutes.
PIN_LENGTH_WAIT_MS = 10_000


class PinTakenAsId(OcsError):
    """An account id that is a live card's PIN, refused exactly as an existing account's
    id is (409 ``account_exists`` naming ``id``, the same message): the answer tells no
    PIN. A class of its own only so that the HTTP layer counts it against the PIN guard
    of whoever asked (decision 0042)."""

    def __init__(self, account_id: str) -> None:
        super().__init__(Reason.ACCOUNT_EXISTS, account_exists_message(account_id), field="id")


def account_exists_message(account_id: str) -> str:
    """The refusal of an id an account has already (or a card's PIN, told alike)."""
    return f"account {account_id!r} exists already"


async def hold_pin_length(conn: asyncpg.Connection, length: int) -> None:
    """Hold PINs of ``length`` digits, shared, until ``conn``'s transaction ends: a batch
    of such PINs (which holds them alone, ``cards.check_pin_space``) neither runs beside
    the creation of an account whose id has that length, so each sees what the other
    wrote, nor is the creation of such accounts serialized among themselves.

    Waits at most ``PIN_LENGTH_WAIT_MS`` for a batch to end; refused (503
    ``unavailable``, naming ``id``) when it does not, to try again."""
    previous = await conn.fetchval("SELECT current_setting('lock_timeout')")
    await conn.execute("SELECT set_config('lock_timeout', $1, true)", f"{PIN_LENGTH_WAIT_MS}ms")
    try:
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared(hashtext($1))", pin_length_lock(length)
        )
    except asyncpg.LockNotAvailableError:
        raise OcsError(
            Reason.UNAVAILABLE,
            f"a batch of calling cards with {length}-digit PINs is being made: an account"
            f" id of {length} digits can be created once it ends; try again later",
            field="id",
        ) from None
    await conn.execute("SELECT set_config('lock_timeout', $1, true)", previous)


def pin_length_lock(length: int) -> str:
    """The advisory lock's name that holds PINs of ``length`` digits (hashed by
    PostgreSQL's ``hashtext``): a batch takes it alone, an account's creation shared."""
    return f"ocs-pin-length:{length}"


class AccountService:
    """Accounts in PostgreSQL and Redis together: create, read, top up, change policy."""

    def __init__(self, pool: asyncpg.Pool, store: BalanceStore, digests: Digests) -> None:
        self._pool = pool
        self._store = store
        self._digests = digests

    async def create(self, spec: AccountSpec) -> AccountState:
        """Create an account as ``spec`` asks; every limit left out is the plan's default,
        copied onto the account. ``active`` on a plan billed on demand starts ``locked``
        with the session lock: it calls once a billing session opens."""
        spec.validate()
        account_id, plan_id = spec.account_id, spec.plan_id
        password = spec.password
        digest = None if password is None else self._digests.password(account_id, password)
        async with self._pool.acquire() as conn, conn.transaction():
            # FOR SHARE: a change of the plan's billing cycle waits for this account, and
            # moves it with the plan's others; this one reads the cycle committed before.
            plan = await conn.fetchrow("SELECT * FROM plans WHERE id = $1 FOR SHARE", plan_id)
            if plan is None:
                raise OcsError(
                    Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan"
                )
            await self._refuse_a_cards_pin(conn, account_id)
            # A member by this name would be shadowed by the account (decision 0053).
            await hold_name(conn, account_id)
            await refuse_member_as_account_id(conn, account_id)
            status, lock = await starting_state(conn, plan_id, spec.status)
            limit: int = plan["credit_limit"] if spec.credit_limit is None else spec.credit_limit
            lines: int = plan["max_lines"] if spec.max_lines is None else spec.max_lines
            min_balance: int = plan["min_balance"] if spec.min_balance is None else spec.min_balance
            critical_balance: int | None = (
                plan["critical_balance"] if spec.critical_balance is None else spec.critical_balance
            )
            # Lock on prorated charges: what the next invoice bills for them stays put.
            committed = await starting_commitment(conn, plan)
            member_max_lines: int = (
                plan["member_max_lines"] if spec.member_max_lines is None else spec.member_max_lines
            )
            max_members: int | None = (
                plan["max_members"] if spec.max_members is None else spec.max_members
            )
            language: str | None = spec.language or plan["language"]
            inserted = await conn.fetchval(
                "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status,"
                " password_digest, expires_at, min_balance, critical_balance, committed,"
                " member_max_lines, max_members, expire_days, language)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                " ON CONFLICT (id) DO NOTHING RETURNING 1",
                account_id,
                plan_id,
                plan["currency"],
                limit,
                lines,
                status,
                digest,
                spec.expires_at,
                min_balance,
                critical_balance,
                committed,
                member_max_lines,
                max_members,
                spec.expire_days,
                language,
            )
            if inserted is None:
                raise OcsError(
                    Reason.ACCOUNT_EXISTS, account_exists_message(account_id), field="id"
                )
            token = creation_token(
                "account", account_id, plan_id, plan["currency"], limit, lines, status, lock,
                spec.opening_balance, digest, utc_text(spec.expires_at), min_balance,
                critical_balance, committed, member_max_lines, max_members, spec.expire_days,
                language,
            )  # fmt: skip
            # Redis is written inside the PostgreSQL transaction: if Redis refuses, the
            # row is rolled back. If Redis made the account but its answer, or the
            # COMMIT, was lost, this same request again finds it by its token and
            # finishes the creation: PostgreSQL gets its row, Redis stays as it is.
            created = await self._store.create_account(
                account_id,
                plan_id=plan_id,
                currency=plan["currency"],
                credit_limit=limit,
                max_lines=lines,
                status=status,
                lock=lock,
                opening_balance=spec.opening_balance,
                password_digest=digest or "",
                expires_at=0 if spec.expires_at is None else int(spec.expires_at.timestamp()),
                min_balance=min_balance,
                critical_balance=critical_balance,
                committed=committed,
                member_lines=member_max_lines,
                expire_days=spec.expire_days,
                token=token,
            )
            if created is None:
                raise OcsError(
                    Reason.ACCOUNT_EXISTS,
                    f"account {account_id!r} exists already in Redis, made by a request"
                    " PostgreSQL never recorded, with other settings: send that request"
                    " again as it was to finish it (ocs reconcile lists such accounts)",
                    field="id",
                )
            if created.adopted:
                log.warning(
                    "account creation finished by its retry: Redis had made it, PostgreSQL"
                    " had not recorded it",
                    extra={"account": account_id, "balance": created.balance},
                )
        return await self.show(account_id)

    async def _refuse_a_cards_pin(self, conn: asyncpg.Connection, account_id: str) -> None:
        """Refuse an id that is a live card's PIN: a RADIUS User-Name names an account
        before a card (decision 0053), so the card's holder would call on this account's
        money. Only an id of a PIN's form is looked up, by both forms of its digest
        (decision 0054), as a batch looks its drawn PINs up, and under the lock a batch of
        PINs of that length holds (``hold_pin_length``), so that neither misses the other.

        Refused as an existing account is (``PinTakenAsId``): an operator must not learn
        that a number is a card's PIN from the answer."""
        if not may_be_pin(account_id):
            return
        await hold_pin_length(conn, len(account_id))
        taken = await conn.fetchval(
            "SELECT 1 FROM pins WHERE pin_digest = ANY($1::text[]) LIMIT 1",
            [self._digests.pin(account_id), legacy_pin_digest(account_id)],
        )
        if taken is not None:
            # Not the id: it is a card's PIN, which no log holds.
            log.warning("account creation refused: its id is a live card's PIN")
            raise PinTakenAsId(account_id)

    async def update_policy(
        self,
        account_id: str,
        *,
        credit_limit: int | None = None,
        max_lines: int | None = None,
        min_balance: int | None = None,
        critical_balance: int | Unset | None = UNSET,
        member_max_lines: int | None = None,
        max_members: int | Unset | None = UNSET,
        status: str | None = None,
        expires_at: datetime | Unset | None = UNSET,
    ) -> AccountState:
        """Override an account's limits; what is left out keeps its value.

        ``critical_balance`` and ``max_members`` take None to remove the limit.
        A changed critical balance is judged at once (``set_policy.lua``): a
        critical-balance lock it no longer holds is lifted, and an active account below
        the new one is locked, as a charge would lock it.
        ``expires_at`` (an aware time) moves the account's expiry, None removes it: how an
        expired account is revived. A card whose life runs from its first use
        (``expire_days``) starts a new life at its next use once its expiry is removed.
        A status set here is an operator's decision: it clears a critical-balance lock.
        ``active`` on an on-demand account with no billing session open gives it back
        its session lock (``locked``, lock ``session``) instead: lifting a suspension
        must not let it call outside a session, where no session invoice bills the calls.
        """
        if credit_limit is not None and credit_limit < 0:
            raise invalid("credit_limit", "must not be negative")
        if max_lines is not None and not 1 <= max_lines <= MAX_LINES:
            raise invalid("max_lines", f"expected 1 to {MAX_LINES}")
        if status is not None and status not in STATUSES:
            raise invalid("status", f"expected one of {', '.join(STATUSES)}")
        validate_policy(
            min_balance=min_balance,
            member_max_lines=member_max_lines,
            max_members=None if isinstance(max_members, Unset) else max_members,
        )
        if not isinstance(expires_at, Unset):
            validate_expiry(expires_at)
        columns: dict[str, object] = {}
        redis_fields: dict[str, str | int] = {}
        for column, field, value in (
            ("credit_limit", "credit_limit", credit_limit),
            ("max_lines", "max_lines", max_lines),
            ("min_balance", "min_balance", min_balance),
            ("member_max_lines", "member_lines", member_max_lines),
            ("status", "status", status),
        ):
            if value is not None:
                columns[column] = value
                redis_fields[field] = value
        if status is not None:
            redis_fields["lock"] = ""
        if not isinstance(critical_balance, Unset):
            columns["critical_balance"] = critical_balance
            redis_fields["critical"] = "" if critical_balance is None else critical_balance
        if not isinstance(max_members, Unset):
            columns["max_members"] = max_members
        if not isinstance(expires_at, Unset):
            columns["expires_at"] = expires_at
            # Redis keeps whole epoch seconds, 0 meaning "never" (as create writes it).
            redis_fields["expires"] = 0 if expires_at is None else int(expires_at.timestamp())
        if not columns:
            return await self.show(account_id)
        assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
        async with self._pool.acquire() as conn, conn.transaction():
            if status == "active" and await _needs_session(conn, account_id):
                columns["status"] = redis_fields["status"] = "locked"
                redis_fields["lock"] = SESSION_LOCK
                log.info(
                    "operator's active kept the session lock: no billing session is open",
                    extra={"account": account_id},
                )
            found = await conn.fetchval(
                f"UPDATE accounts SET {assignments} WHERE id = $1 RETURNING 1",
                account_id,
                *columns.values(),
            )
            if found is None or not await self._store.set_policy(account_id, redis_fields):
                raise account_not_found(account_id)
        return await self.show(account_id)

    async def add_member(self, account_id: str, member: str, max_lines: int | None = None) -> None:
        """Add a member (SIP user, extension, caller id); at most the account's max members."""
        validate_member(member)
        if is_card_account(member):
            # A User-Name of this form is taken for a card, never an account (decision
            # 0042): such a member would answer for a card's id. One made before stays.
            raise invalid("member", "card-<batch>-<seven digits> is kept for calling cards")
        if max_lines is not None and not 1 <= max_lines <= MAX_LINES:
            raise invalid("max_lines", f"expected 1 to {MAX_LINES}")
        async with self._pool.acquire() as conn, conn.transaction():
            # The row lock serialises concurrent additions to one account.
            limit = await conn.fetchrow(
                "SELECT max_members FROM accounts WHERE id = $1 FOR UPDATE", account_id
            )
            if limit is None:
                raise account_not_found(account_id)
            # Another account's id or caller id by this name would shadow the member,
            # or be shadowed by it (decision 0053).
            await hold_name(conn, member)
            await refuse_taken_member(conn, account_id, member)
            owner = await conn.fetchval(
                "SELECT account_id FROM account_members WHERE member = $1", member
            )
            if owner is not None and owner != account_id:
                raise OcsError(
                    Reason.ACCOUNT_EXISTS,
                    f"member {member!r} belongs to another account",
                    field="member",
                )
            if owner is None and limit["max_members"] is not None:
                count = await conn.fetchval(
                    "SELECT count(*) FROM account_members WHERE account_id = $1", account_id
                )
                if count >= limit["max_members"]:
                    raise OcsError(
                        Reason.TOO_MANY_MEMBERS,
                        f"account {account_id!r} has its {limit['max_members']} members already",
                        field="member",
                    )
            await conn.execute(
                "INSERT INTO account_members (member, account_id, max_lines) VALUES ($1, $2, $3)"
                " ON CONFLICT (member) DO UPDATE SET max_lines = EXCLUDED.max_lines",
                member,
                account_id,
                max_lines,
            )
            await self._store.set_member(member, account_id, max_lines)

    async def remove_member(self, account_id: str, member: str) -> None:
        """Stop ``member`` identifying the account."""
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM account_members WHERE member = $1 AND account_id = $2 RETURNING 1",
                member,
                account_id,
            )
            if deleted is None:
                raise OcsError(
                    Reason.NOT_FOUND,
                    f"account {account_id!r} has no member {member!r}",
                    field="member",
                )
            await self._store.remove_member(member, account_id)

    async def members(self, account_id: str) -> list[dict[str, object]]:
        """The account's members and their own line limits."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT member, max_lines FROM account_members WHERE account_id = $1"
                " ORDER BY member",
                account_id,
            )
        return [{"member": r["member"], "max_lines": r["max_lines"]} for r in rows]

    async def lift_password_block(self, account_id: str) -> int:
        """Let the account's password be tried again at once (decision 0045): its count of
        wrong passwords is cleared; the wrong passwords its window still counted."""
        cleared = await self._store.lift_password_block(account_id, int(time.time()))
        if cleared is None:
            raise account_not_found(account_id)
        log.info(
            "account password block lifted",
            extra={"account": account_id, "wrong_passwords": cleared},
        )
        return cleared

    async def set_password(self, account_id: str, password: str | None) -> None:
        """Give the account a new password, or none (None): what the help desk does for a
        customer who forgot it. The count of wrong passwords starts again (decision 0045),
        since they were guesses at the old one."""
        if password is not None and not 1 <= len(password) <= 128:
            raise invalid("password", "expected 1 to 128 characters")
        digest = None if password is None else self._digests.password(account_id, password)
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "UPDATE accounts SET password_digest = $2 WHERE id = $1 RETURNING 1",
                account_id,
                digest,
            )
            # Redis last, inside the transaction, as update_policy writes a limit.
            if found is None or not await self._store.set_policy(account_id, {"pw": digest or ""}):
                raise account_not_found(account_id)
        await self._store.lift_password_block(account_id, int(time.time()))
        log.info(
            "account password changed",
            extra={"account": account_id, "has_password": password is not None},
        )

    async def add_caller(self, account_id: str, caller: str) -> None:
        """Let calls from ``caller`` (Calling-Station-Id) identify the account (pinless)."""
        digits = caller_digits_of(caller)
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id) is None:
                raise account_not_found(account_id)
            # Another account's member by this number would take its calls (decision 0053).
            await hold_name(conn, digits)
            await refuse_taken_caller(conn, account_id, digits)
            owner = await conn.fetchval(
                "INSERT INTO account_callers (caller, account_id) VALUES ($1, $2)"
                " ON CONFLICT (caller) DO UPDATE SET caller = EXCLUDED.caller"
                " RETURNING account_id",
                digits,
                account_id,
            )
            if owner != account_id:
                raise OcsError(
                    Reason.ACCOUNT_EXISTS,
                    f"caller {digits} belongs to another account",
                    field="caller",
                )
            await self._store.set_caller(digits, account_id)

    async def remove_caller(self, account_id: str, caller: str) -> None:
        """Stop calls from ``caller`` identifying the account: the number went to another
        customer, who may then be given it. A live call from it goes on, charged to
        this account; 404 for a caller id the account does not have."""
        digits = caller_digits_of(caller)
        told = False  # whether Redis was told: then put back if the removal does not commit
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                deleted = await conn.fetchval(
                    "DELETE FROM account_callers WHERE caller = $1 AND account_id = $2 RETURNING 1",
                    digits,
                    account_id,
                )
                if deleted is None:
                    raise OcsError(
                        Reason.NOT_FOUND,
                        f"account {account_id!r} has no caller id {digits}",
                        field="caller",
                    )
                told = True
                await self._store.set_caller(digits, None)
        except BaseException:
            if told:
                await self._put_back_caller(digits, account_id)
            raise
        log.info("caller id removed", extra={"account": account_id, "caller": digits})

    async def _put_back_caller(self, caller: str, account_id: str) -> None:
        """After a removal that did not commit: the caller id identifies the account in
        Redis again, as PostgreSQL still says (its DEL may have taken effect, reply lost)."""
        try:
            await self._store.set_caller(caller, account_id)
        except Exception:
            log.warning(
                "a caller id's Redis reference could not be put back after a failed removal",
                extra={"account": account_id, "caller": caller},
                exc_info=True,
            )

    async def show(self, account_id: str) -> AccountState:
        """An account's real-time state; 404 for an unknown one."""
        state = await self._store.get_account(account_id)
        if state is None:
            raise account_not_found(account_id)
        return state

    async def topup(self, account_id: str, amount: int, topup_id: str | None = None) -> TopupResult:
        """Credit an account once per ``topup_id`` (a new id is made when none is given).

        An account past its expiry is refused (403 ``account_expired``): it spends
        nothing, so the money would be stuck. A repeat of a top-up made before it expired
        is answered as a repeat; a refused one is not kept, so its id credits once the
        account's ``expires_at`` is moved on (``update_policy``)."""
        if amount <= 0:
            raise invalid("amount", "a top-up must be greater than zero")
        if topup_id is not None and (not 1 <= len(topup_id) <= 128 or not topup_id.isprintable()):
            raise invalid("topup_id", "expected 1 to 128 printable characters")
        if topup_id is not None and topup_id.startswith(RESERVED_TOPUP_PREFIXES):
            # One key space holds every credit's id: a top-up named like a payment's credit
            # would make that payment's credit a repeat of it, and so never made.
            raise invalid(
                "topup_id",
                "ids starting with 'pay:' or 'inv:' are ocs's own (payment credits and"
                " invoice credit lines)",
            )
        # An expired account could spend none of it: refused, nothing credited.
        result = await self._store.topup(
            account_id,
            amount,
            topup_id or uuid.uuid4().hex,
            TOPUP_DEDUPE_TTL,
            refuse_expired=True,
        )
        if result is None:
            raise account_not_found(account_id)
        return result
