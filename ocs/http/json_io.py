"""Reading JSON request bodies and fields with errors that name the field."""

import json
from datetime import datetime
from typing import Any

from aiohttp import web

from ocs.errors import invalid
from ocs.money import MoneyError, format_amount, parse_amount

MAX_BODY = 1 << 20


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 naming ``body`` otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise invalid("body", "larger than 1 MiB")
    text = await request.text()
    if not text.strip():
        return {}
    try:
        value = json.loads(text, parse_float=Fraction)
    except ValueError as exc:
        raise invalid("body", f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid("body", "expected a JSON object")
    return value


class Fraction:
    """A JSON number with a fraction or exponent, kept as its text.

    Parsed as a float it would have lost the value the caller meant; no float
    may carry money or a duration into ocs, so the field readers refuse it by name.
    Not a str: no reader may take it for an id either.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def string_field(
    body: dict[str, Any], name: str, *, required: bool = True, max_len: int = 256
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(name, "is required")
        return None
    if not isinstance(value, str):
        raise invalid(name, "expected a string")
    if not value or len(value) > max_len:
        raise invalid(name, f"expected 1 to {max_len} characters")
    return value


def int_field(
    body: dict[str, Any],
    name: str,
    *,
    required: bool = True,
    minimum: int = 0,
    maximum: int = 2**31,
) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(name, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, "expected an integer, without a fraction")
    if not minimum <= value <= maximum:
        raise invalid(name, f"expected {minimum} to {maximum}")
    return value


def amount_field(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(name, "is required")
        return None
    if isinstance(value, Fraction):
        raise invalid(name, 'amounts must be decimal strings such as "1.50", not JSON numbers')
    try:
        return parse_amount(value)
    except MoneyError as exc:
        raise invalid(name, str(exc)) from None


def timestamp_field(body: dict[str, Any], name: str) -> datetime | None:
    """An optional ISO 8601 time with a zone, e.g. ``2027-01-31T23:59:59Z``."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(name, "expected an ISO 8601 time such as 2027-01-31T23:59:59Z")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(name, "expected an ISO 8601 time such as 2027-01-31T23:59:59Z") from None
    if parsed.tzinfo is None:
        raise invalid(name, "needs a time zone, e.g. 2027-01-31T23:59:59Z")
    return parsed


def money(micro: int) -> str:
    return format_amount(micro)
