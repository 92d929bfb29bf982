"""Admin writes of number handling: a plan's access numbers and the operator's on-net ranges.

Each change commits and NOTIFYs the catalog channel, so every serving process
rates with it at once.
"""

import asyncpg

from ocs.catalog.snapshot import CATALOG_CHANNEL
from ocs.errors import OcsError, Reason, invalid

MAX_ACCESS_NUMBERS = 10_000
MAX_ONNET_PREFIXES = 1_000_000


def _digits(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise invalid(field, "expected a string of digits")
    digits = value.strip().removeprefix("+")
    if not digits.isascii() or not digits.isdigit() or not 1 <= len(digits) <= 32:
        raise invalid(field, "expected 1 to 32 digits, optionally with a leading '+'")
    return digits


def validate_access_numbers(raw: object) -> dict[str, str]:
    """``{number: rating plan}`` from an API body, each entry checked by name."""
    if not isinstance(raw, dict) or len(raw) > MAX_ACCESS_NUMBERS:
        raise invalid("numbers", f"expected an object of at most {MAX_ACCESS_NUMBERS} numbers")
    numbers: dict[str, str] = {}
    for number, plan in raw.items():
        digits = _digits(number, f"numbers.{number}")
        if not isinstance(plan, str) or not plan:
            raise invalid(f"numbers.{number}", "expected the id of the plan that rates it")
        numbers[digits] = plan
    return numbers


def validate_onnet(raw: object) -> list[str]:
    """The on-net prefixes of an API body, sorted and distinct; refused unless a list of digits."""
    if not isinstance(raw, list) or len(raw) > MAX_ONNET_PREFIXES:
        raise invalid("prefixes", f"expected a list of at most {MAX_ONNET_PREFIXES} prefixes")
    return sorted({_digits(p, f"prefixes[{n}]") for n, p in enumerate(raw)})


async def set_access_numbers(pool: asyncpg.Pool, plan_id: str, numbers: dict[str, str]) -> None:
    """Replace a plan's access numbers: calls through each are rated by its rating plan."""
    async with pool.acquire() as conn, conn.transaction():
        # FOR SHARE: a plan's currency cannot change under the check before the commit.
        currency_of: dict[str, str] = {
            r["id"]: r["currency"]
            for r in await conn.fetch(
                "SELECT id, currency FROM plans WHERE id = ANY($1::text[]) FOR SHARE",
                [plan_id, *numbers.values()],
            )
        }
        if plan_id not in currency_of:
            raise OcsError(
                Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id"
            )
        currency = currency_of[plan_id]
        for number, rating_plan in numbers.items():
            if rating_plan not in currency_of:
                raise OcsError(
                    Reason.PLAN_NOT_FOUND,
                    f"rating plan {rating_plan!r} of access number {number} does not exist",
                    field=f"numbers.{number}",
                )
            # A call through the number is charged the rating plan's amounts in the
            # account plan's currency: another currency would bill USD micro-units as EUR.
            if currency_of[rating_plan] != currency:
                raise invalid(
                    f"numbers.{number}",
                    f"rating plan {rating_plan!r} is in {currency_of[rating_plan]},"
                    f" plan {plan_id!r} in {currency}",
                )
        await conn.execute("DELETE FROM access_numbers WHERE plan_id = $1", plan_id)
        await conn.executemany(
            "INSERT INTO access_numbers (plan_id, number, rating_plan) VALUES ($1, $2, $3)",
            [(plan_id, number, rating) for number, rating in numbers.items()],
        )
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, f"plan:{plan_id}")


async def set_onnet_prefixes(pool: asyncpg.Pool, prefixes: list[str]) -> None:
    """Replace the operator's own number ranges."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM onnet_prefixes")
        await conn.copy_records_to_table(
            "onnet_prefixes", columns=["prefix"], records=[(p,) for p in prefixes]
        )
        await conn.execute("SELECT pg_notify($1, $2)", CATALOG_CHANNEL, "onnet:")
