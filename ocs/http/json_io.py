"""Reading JSON request bodies and fields with errors that name the field."""

import json
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
        value = json.loads(text, parse_float=_refuse_float)
    except _FloatInBody as exc:
        raise invalid(
            str(exc) or "body", 'amounts must be decimal strings such as "1.50"'
        ) from None
    except ValueError as exc:
        raise invalid("body", f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid("body", "expected a JSON object")
    return value


class _FloatInBody(ValueError):
    pass


def _refuse_float(text: str) -> Any:
    # JSON numbers with a fraction would be parsed as floats; no float may carry money
    # or a duration into ocs, so they are refused before anything reads them.
    raise _FloatInBody("body")


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
        raise invalid(name, "expected an integer")
    if not minimum <= value <= maximum:
        raise invalid(name, f"expected {minimum} to {maximum}")
    return value


def amount_field(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(name, "is required")
        return None
    try:
        return parse_amount(value)
    except MoneyError as exc:
        raise invalid(name, str(exc)) from None


def money(micro: int) -> str:
    return format_amount(micro)
