"""A plan's account-policy defaults: copied to each new account, which may override them."""

from dataclasses import dataclass

import asyncpg

from ocs.catalog.snapshot import CATALOG_CHANNEL
from ocs.catalog.store import validate_reservation_policy
from ocs.errors import OcsError, Reason, invalid

LANGUAGE_MAX = 16


@dataclass(frozen=True, slots=True)
class PlanPolicy:
    """A plan's account-policy defaults: limits, lock threshold, recurring fee, language."""

    max_members: int | None = None  # None: no limit
    member_max_lines: int = 0  # 0: no per-member limit
    critical_balance: int | None = None  # None: no lock
    recurring_fee: int = 0
    lock_prorated: bool = False  # the next recurring fee is not available for calls
    language: str = "en"
    # How the plan's calls reserve funds (ocs.catalog.snapshot.Plan): whole, slice, share.
    reservation_policy: str = "whole"
    slice_seconds: int = 60


def validate_plan_policy(policy: PlanPolicy) -> PlanPolicy:
    """The policy itself when every field is in range; else the error names the field."""
    if policy.max_members is not None and not 0 <= policy.max_members <= 1_000_000:
        raise invalid("max_members", "expected 0 to 1000000, or null for no limit")
    if not 0 <= policy.member_max_lines <= 10_000:
        raise invalid("member_max_lines", "expected 0 (no limit) to 10000")
    if policy.recurring_fee < 0:
        raise invalid("recurring_fee", "must not be negative")
    if not 1 <= len(policy.language) <= LANGUAGE_MAX or not policy.language.isprintable():
        raise invalid("language", f"expected a language tag of 1 to {LANGUAGE_MAX} characters")
    validate_reservation_policy(policy.reservation_policy, policy.slice_seconds)
    return policy


async def set_plan_policy(pool: asyncpg.Pool, plan_id: str, policy: PlanPolicy) -> PlanPolicy:
    """Set a plan's defaults; accounts created later copy them, existing ones keep theirs.

    The reservation policy is the plan's own (not copied): every process reloads the
    plan and applies it to the calls authorized from then on.
    """
    validate_plan_policy(policy)
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetchval(
            "UPDATE plans SET max_members = $2, member_max_lines = $3, critical_balance = $4,"
            " recurring_fee = $5, lock_prorated = $6, language = $7, reservation_policy = $8,"
            " slice_seconds = $9 WHERE id = $1 RETURNING 1",
            plan_id,
            policy.max_members,
            policy.member_max_lines,
            policy.critical_balance,
            policy.recurring_fee,
            policy.lock_prorated,
            policy.language,
            policy.reservation_policy,
            policy.slice_seconds,
        )
        if found is not None:
            await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"plan:{plan_id}")
    if found is None:
        raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id")
    return policy


async def plan_policy(pool: asyncpg.Pool, plan_id: str) -> PlanPolicy:
    """The stored policy of a plan; PLAN_NOT_FOUND when there is no such plan."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM plans WHERE id = $1", plan_id)
    if row is None:
        raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id")
    return PlanPolicy(
        max_members=row["max_members"],
        member_max_lines=row["member_max_lines"],
        critical_balance=row["critical_balance"],
        recurring_fee=row["recurring_fee"],
        lock_prorated=row["lock_prorated"],
        language=row["language"],
        reservation_policy=row["reservation_policy"],
        slice_seconds=row["slice_seconds"],
    )
