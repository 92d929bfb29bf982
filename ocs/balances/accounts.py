"""Accounts: created in PostgreSQL (system of record) and Redis (real-time state) together.

PostgreSQL holds who the account is (plan, currency, limits, status); Redis
holds its live money (balance, reservations, lines). The opening balance and
every top-up are ledger entries, so the PostgreSQL ledger always sums to the
Redis balance.
"""

import hashlib
import hmac
import uuid
from datetime import datetime

import asyncpg

from ocs.balances.store import AccountState, BalanceStore, TopupResult
from ocs.errors import OcsError, Reason, invalid

STATUSES = ("active", "locked", "suspended")
MAX_LINES = 10_000
# Top-up results are kept this long to answer a repeated top-up with the same id.
TOPUP_DEDUPE_TTL = 30 * 24 * 3600


def password_digest(account_id: str, password: str) -> str:
    """The stored form of an account's password (or card PIN password).

    HMAC-SHA256 keyed by the account id, so equal passwords on two accounts
    differ; Redis and PostgreSQL never hold the password itself.
    """
    return hmac.new(account_id.encode(), password.encode(), hashlib.sha256).hexdigest()


def validate_account_id(account_id: object, field: str = "id") -> str:
    if account_id is None:
        raise invalid(field, "is required")
    if not isinstance(account_id, str):
        raise invalid(field, "expected a string")
    if not account_id or len(account_id) > 64:
        raise invalid(field, "expected 1 to 64 characters")
    if not all(c.isascii() and (c.isalnum() or c in "-_.@+") for c in account_id):
        raise invalid(field, "only letters, digits and - _ . @ + are allowed")
    return account_id


class AccountService:
    def __init__(self, pool: asyncpg.Pool, store: BalanceStore) -> None:
        self._pool = pool
        self._store = store

    async def create(
        self,
        account_id: str,
        *,
        plan_id: str,
        opening_balance: int = 0,
        credit_limit: int | None = None,
        max_lines: int | None = None,
        status: str = "active",
        password: str | None = None,
        expires_at: datetime | None = None,
    ) -> AccountState:
        validate_account_id(account_id)
        if password is not None and not 1 <= len(password) <= 128:
            raise invalid("password", "expected 1 to 128 characters")
        if expires_at is not None and expires_at.tzinfo is None:
            raise invalid("expires_at", "needs a time zone, e.g. 2027-01-31T23:59:59Z")
        digest = None if password is None else password_digest(account_id, password)
        if status not in STATUSES:
            raise invalid("status", f"expected one of {', '.join(STATUSES)}")
        if opening_balance < 0:
            raise invalid("balance", "an opening balance must not be negative")
        if credit_limit is not None and credit_limit < 0:
            raise invalid("credit_limit", "must not be negative")
        if max_lines is not None and not 1 <= max_lines <= MAX_LINES:
            raise invalid("max_lines", f"expected 1 to {MAX_LINES}")
        async with self._pool.acquire() as conn, conn.transaction():
            plan = await conn.fetchrow(
                "SELECT currency, credit_limit, max_lines FROM plans WHERE id = $1", plan_id
            )
            if plan is None:
                raise OcsError(
                    Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan"
                )
            limit = plan["credit_limit"] if credit_limit is None else credit_limit
            lines = plan["max_lines"] if max_lines is None else max_lines
            inserted = await conn.fetchval(
                "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status,"
                " password_digest, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING RETURNING 1",
                account_id,
                plan_id,
                plan["currency"],
                limit,
                lines,
                status,
                digest,
                expires_at,
            )
            if inserted is None:
                raise OcsError(
                    Reason.ACCOUNT_EXISTS, f"account {account_id!r} exists already", field="id"
                )
            # Redis is written inside the PostgreSQL transaction: if Redis refuses,
            # the row is rolled back and nothing half-exists.
            created = await self._store.create_account(
                account_id,
                plan_id=plan_id,
                currency=plan["currency"],
                credit_limit=limit,
                max_lines=lines,
                status=status,
                opening_balance=opening_balance,
                password_digest=digest or "",
                expires_at=0 if expires_at is None else int(expires_at.timestamp()),
            )
            if not created:
                raise OcsError(
                    Reason.ACCOUNT_EXISTS,
                    f"account {account_id!r} exists already in Redis",
                    field="id",
                )
        return await self.show(account_id)

    async def add_caller(self, account_id: str, caller: str) -> None:
        """Let calls from ``caller`` (Calling-Station-Id) identify the account (pinless)."""
        digits = caller.strip().removeprefix("+")
        if not digits.isascii() or not digits.isdigit() or len(digits) > 32:
            raise invalid("caller", "expected 1 to 32 digits, optionally with a leading '+'")
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id) is None:
                raise OcsError(
                    Reason.ACCOUNT_NOT_FOUND,
                    f"account {account_id!r} does not exist",
                    field="account_id",
                )
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

    async def show(self, account_id: str) -> AccountState:
        state = await self._store.get_account(account_id)
        if state is None:
            raise OcsError(
                Reason.ACCOUNT_NOT_FOUND,
                f"account {account_id!r} does not exist",
                field="account_id",
            )
        return state

    async def topup(self, account_id: str, amount: int, topup_id: str | None = None) -> TopupResult:
        if amount <= 0:
            raise invalid("amount", "a top-up must be greater than zero")
        if topup_id is not None and (not 1 <= len(topup_id) <= 128 or not topup_id.isprintable()):
            raise invalid("topup_id", "expected 1 to 128 printable characters")
        result = await self._store.topup(
            account_id, amount, topup_id or uuid.uuid4().hex, TOPUP_DEDUPE_TTL
        )
        if result is None:
            raise OcsError(
                Reason.ACCOUNT_NOT_FOUND,
                f"account {account_id!r} does not exist",
                field="account_id",
            )
        return result
