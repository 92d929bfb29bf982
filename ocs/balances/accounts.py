"""Accounts: created in PostgreSQL (system of record) and Redis (real-time state) together.

PostgreSQL holds who the account is (plan, currency, limits, status); Redis
holds its live money (balance, reservations, lines). The opening balance and
every top-up are ledger entries, so the PostgreSQL ledger always sums to the
Redis balance.
"""

import uuid
from dataclasses import dataclass

import asyncpg

from ocs.balances.store import BalanceStore, TopupResult
from ocs.errors import OcsError, Reason, invalid

STATUSES = ("active", "locked", "suspended")
MAX_LINES = 10_000
# Top-up results are kept this long to answer a repeated top-up with the same id.
TOPUP_DEDUPE_TTL = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AccountView:
    id: str
    plan_id: str
    currency: str
    status: str
    balance: int
    credit_limit: int
    reserved: int
    max_lines: int
    lines_in_use: int

    @property
    def available(self) -> int:
        return self.balance + self.credit_limit - self.reserved


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
    ) -> AccountView:
        validate_account_id(account_id)
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
                "INSERT INTO accounts (id, plan_id, currency, credit_limit, max_lines, status)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING RETURNING 1",
                account_id,
                plan_id,
                plan["currency"],
                limit,
                lines,
                status,
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
            )
            if not created:
                raise OcsError(
                    Reason.ACCOUNT_EXISTS,
                    f"account {account_id!r} exists already in Redis",
                    field="id",
                )
        return await self.show(account_id)

    async def show(self, account_id: str) -> AccountView:
        state = await self._store.get_account(account_id)
        if state is None:
            raise OcsError(
                Reason.ACCOUNT_NOT_FOUND,
                f"account {account_id!r} does not exist",
                field="account_id",
            )
        return AccountView(
            id=account_id,
            plan_id=state.plan_id,
            currency=state.currency,
            status=state.status,
            balance=state.balance,
            credit_limit=state.credit_limit,
            reserved=state.reserved,
            max_lines=state.max_lines,
            lines_in_use=state.lines_in_use,
        )

    async def topup(self, account_id: str, amount: int, topup_id: str | None = None) -> TopupResult:
        if amount <= 0:
            raise invalid("amount", "a top-up must be greater than zero")
        if topup_id is not None and not 1 <= len(topup_id) <= 128:
            raise invalid("topup_id", "expected 1 to 128 characters")
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
