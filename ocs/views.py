"""How accounts, plans and deck imports are shown: the same view for the HTTP API and the CLI.

msgspec Structs, so the HTTP answers are encoded and documented from them
(``ocs.http``) and the CLI prints the same fields (``msgspec.to_builtins``).
Amounts are decimal strings, as everywhere ocs shows money.
"""

import msgspec

from ocs.balances.store import AccountState
from ocs.catalog.snapshot import Plan
from ocs.catalog.store import DeckImport
from ocs.money import format_amount


class AccountView(msgspec.Struct, kw_only=True):
    """An account's state: balance, what live calls hold, its limits and lock."""

    id: str
    plan: str
    currency: str
    status: str
    balance: str
    credit_limit: str
    reserved: str
    available: str
    max_lines: int
    lines_in_use: int
    min_balance: str
    critical_balance: str | None
    committed: str
    locked_by: str | None
    member_max_lines: int
    expires_at: int | None


def account_view(state: AccountState) -> AccountView:
    """An account's state as ocs shows it (amounts as decimal strings)."""
    return AccountView(
        id=state.account_id,
        plan=state.plan_id,
        currency=state.currency,
        status=state.status,
        balance=format_amount(state.balance),
        credit_limit=format_amount(state.credit_limit),
        reserved=format_amount(state.reserved),
        available=format_amount(state.available),
        max_lines=state.max_lines,
        lines_in_use=state.lines_in_use,
        min_balance=format_amount(state.min_balance),
        critical_balance=(
            None if state.critical_balance is None else format_amount(state.critical_balance)
        ),
        committed=format_amount(state.committed),
        locked_by=state.lock or None,
        member_max_lines=state.member_lines,
        expires_at=state.expires_at or None,
    )


class PlanView(msgspec.Struct, kw_only=True):
    """A plan's limits and how its calls hold funds."""

    id: str
    name: str
    currency: str
    credit_limit: str
    min_balance: str
    max_lines: int
    max_call_duration: int
    reservation_policy: str
    slice_seconds: int


def plan_view(plan: Plan) -> PlanView:
    """A plan as ocs shows it (amounts as decimal strings)."""
    return PlanView(
        id=plan.id,
        name=plan.name,
        currency=plan.currency,
        credit_limit=format_amount(plan.credit_limit),
        min_balance=format_amount(plan.min_balance),
        max_lines=plan.max_lines,
        max_call_duration=plan.max_call_duration,
        reservation_policy=plan.reservation_policy,
        slice_seconds=plan.slice_seconds,
    )


class DeckImportView(msgspec.Struct, kw_only=True):
    """What a deck import did: the deck's size, and its prefixes new to the plan, moved
    to another zone and gone, against the deck it replaced."""

    plan: str
    prefixes: int
    zones: int
    added: int
    changed: int
    removed: int


def deck_import_view(result: DeckImport) -> DeckImportView:
    """A deck import's outcome as ocs shows it."""
    return DeckImportView(
        plan=result.plan_id,
        prefixes=result.prefixes,
        zones=result.zones,
        added=result.added,
        changed=result.changed,
        removed=result.removed,
    )
