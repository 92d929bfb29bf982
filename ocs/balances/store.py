"""Typed calls into the balance scripts: the only code that changes real-time account state.

``BalanceStore`` turns each Lua script's reply into a small result object; it
knows nothing of rating or protocols. Amounts are micro-units.
"""

import time
from dataclasses import dataclass
from typing import Any

import msgpack

from ocs.balances import keys, scripts
from ocs.balances.autopipeline import AutoPipeline


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account's real-time state as Redis holds it."""

    account_id: str
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
        """Funds a new call may use: balance + credit limit - reservations."""
        return self.balance + self.credit_limit - self.reserved


@dataclass(frozen=True, slots=True)
class Reserved:
    reserved: int
    available_before: int
    balance: int


@dataclass(frozen=True, slots=True)
class AlreadyLive:
    """The call id is live already; this is its existing grant."""

    reserved: int
    record: bytes


@dataclass(frozen=True, slots=True)
class AlreadyStopped:
    pass


@dataclass(frozen=True, slots=True)
class PlanMismatch:
    actual_plan: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


AuthorizeOutcome = Reserved | AlreadyLive | AlreadyStopped | PlanMismatch | Refused


@dataclass(frozen=True, slots=True)
class StopResult:
    charged: int
    rated: int
    balance: int
    duration: int
    ledger_entry: str
    repeated: bool


@dataclass(frozen=True, slots=True)
class TopupResult:
    amount: int
    balance: int
    ledger_entry: str
    repeated: bool


def split_live_entry(entry: bytes) -> tuple[int, bytes]:
    """A live-calls hash value is ``<reserved>|<record>``."""
    held, _, record = entry.partition(b"|")
    return int(held), record


class BalanceStore:
    """Runs the balance scripts through the auto-pipeline and decodes their replies."""

    def __init__(self, pipeline: AutoPipeline) -> None:
        self._pipe = pipeline

    async def create_account(
        self,
        account_id: str,
        *,
        plan_id: str,
        currency: str,
        credit_limit: int,
        max_lines: int,
        status: str,
        opening_balance: int,
    ) -> bool:
        """Create the account's real-time state; False if it exists already."""
        bucket = keys.bucket_of(account_id)
        reply = await self._pipe.run_script(
            scripts.CREATE_ACCOUNT,
            [keys.account(account_id), keys.ledger(bucket)],
            [
                plan_id,
                currency,
                credit_limit,
                max_lines,
                status,
                opening_balance,
                now_ms(),
                account_id,
            ],
        )
        return _text(reply[0]) == "OK"

    async def get_account(self, account_id: str) -> AccountState | None:
        fields_future = self._pipe.execute("HGETALL", keys.account(account_id))
        lines_future = self._pipe.execute("HLEN", keys.live_calls(account_id))
        raw, lines = await fields_future, await lines_future
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}
        return AccountState(
            account_id=account_id,
            plan_id=data["plan"],
            currency=data["currency"],
            status=data["status"],
            balance=int(data["balance"]),
            credit_limit=int(data["credit_limit"]),
            reserved=int(data["reserved"]),
            max_lines=int(data["max_lines"]),
            lines_in_use=int(lines),
        )

    async def account_plan(self, account_id: str) -> str | None:
        plan = await self._pipe.execute("HGET", keys.account(account_id), "plan")
        return None if plan is None else _text(plan)

    async def authorize(
        self,
        *,
        account_id: str,
        call_id: str,
        plan_id: str,
        first_block_cost: int,
        min_balance: int,
        cap_cost: int,
        record: bytes,
        expires_at: int,
        ref_ttl: int,
    ) -> AuthorizeOutcome:
        """Reserve a line and funds; the call reference is written in the same round trip."""
        bucket = keys.bucket_of(account_id)
        outcome = self._pipe.run_script(
            scripts.AUTHORIZE,
            [
                keys.account(account_id),
                keys.live_calls(account_id),
                keys.call_expiry(bucket),
                keys.stopped_call(account_id, call_id),
            ],
            [
                call_id,
                plan_id,
                first_block_cost,
                min_balance,
                cap_cost,
                record,
                expires_at,
                keys.expiry_member(account_id, call_id),
            ],
        )
        # The reference lets a stop that names only the call id find the account.
        # Written unconditionally: a refused call's reference points at no live
        # call and expires on its own.
        ref = self._pipe.execute("SET", keys.call_ref(call_id), record, "EX", ref_ttl)
        reply = await outcome
        await ref
        status = _text(reply[0])
        if status == "OK":
            return Reserved(int(reply[1]), int(reply[2]), int(reply[3]))
        if status == "DUP":
            held, stored = split_live_entry(reply[1])
            return AlreadyLive(held, stored)
        if status == "DONE":
            return AlreadyStopped()
        if status == "PLAN":
            return PlanMismatch(_text(reply[1]))
        return Refused(_text(reply[1]))

    async def call_reference(self, call_id: str) -> bytes | None:
        return await self._pipe.execute("GET", keys.call_ref(call_id))

    async def stop(
        self,
        *,
        account_id: str,
        call_id: str,
        rated_cost: int,
        duration: int,
        cdr: bytes,
        result_ttl: int,
    ) -> StopResult | None:
        """Charge and close a live call; None if no such call is live or was stopped."""
        bucket = keys.bucket_of(account_id)
        reply = await self._pipe.run_script(
            scripts.STOP,
            [
                keys.account(account_id),
                keys.live_calls(account_id),
                keys.call_expiry(bucket),
                keys.stopped_call(account_id, call_id),
                keys.ledger(bucket),
            ],
            [
                call_id,
                rated_cost,
                keys.expiry_member(account_id, call_id),
                result_ttl,
                cdr,
                now_ms(),
                duration,
                account_id,
            ],
        )
        status = _text(reply[0])
        if status == "NOCALL":
            return None
        result = msgpack.unpackb(reply[1])
        return StopResult(
            charged=int(result["charged"]),
            rated=int(result["rated"]),
            balance=int(result["balance"]),
            duration=int(result["duration"]),
            ledger_entry=_text(result["entry"]),
            repeated=status == "DONE",
        )

    async def topup(
        self, account_id: str, amount: int, topup_id: str, result_ttl: int, kind: str = "topup"
    ) -> TopupResult | None:
        """Credit the account once per ``topup_id``; None for an unknown account."""
        bucket = keys.bucket_of(account_id)
        reply = await self._pipe.run_script(
            scripts.TOPUP,
            [keys.account(account_id), keys.ledger(bucket), keys.topup_done(account_id, topup_id)],
            [amount, topup_id, result_ttl, now_ms(), account_id, kind],
        )
        status = _text(reply[0])
        if status == "NOACCT":
            return None
        result = msgpack.unpackb(reply[1])
        return TopupResult(
            amount=int(result["amount"]),
            balance=int(result["balance"]),
            ledger_entry=_text(result["entry"]),
            repeated=status == "DONE",
        )
