"""Reading request bodies (UTF-8 text, JSON objects) and JSON fields, with errors that
name the field: no body, however malformed, gets past here as anything but a 4xx."""

import json
from datetime import datetime
from typing import Any

from aiohttp import web

from ocs.errors import OcsError, Reason, body_too_large, invalid
from ocs.money import MoneyError, format_amount, parse_amount

MAX_BODY = 1 << 20
# Charsets a body may declare: ocs reads every body as UTF-8 (RFC 8259 for JSON).
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def refuse_foreign_charset(request: web.Request) -> None:
    """415 naming Content-Type when the body declares a charset other than UTF-8."""
    charset = request.charset
    if charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
        raise OcsError(
            Reason.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type: ocs reads bodies as UTF-8 only, not {charset[:40]!r}",
            field="Content-Type",
        )


async def read_text(request: web.Request, field: str = "body") -> str:
    """The request body as UTF-8 text, whatever charset the client declares.

    400 naming ``field`` when it is not UTF-8 or holds a NUL character (PostgreSQL
    text cannot store one); 415 when the Content-Type declares another charset. The
    JSON readers and the CSV imports (decks, code lists) all read their body here.
    """
    refuse_foreign_charset(request)
    data = await request.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(field, f"not UTF-8 text (byte {exc.start} of the body)") from None
    if "\x00" in text:
        raise invalid(field, f"contains a NUL byte (byte {data.index(0)} of the body)")
    return text


async def read_object(request: web.Request, *, required: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; 400 naming ``body`` otherwise.

    An empty body reads as ``{}`` unless ``required``: an endpoint whose every field
    is optional but whose effect is wide (resetting every account's counters) wants
    the caller to say ``{}`` on purpose. Every string in the object, keys included,
    is checked here, so that no NUL character or lone surrogate reaches Redis or
    PostgreSQL: the error names the field that holds it.
    """
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise body_too_large("larger than 1 MiB")
    text = await read_text(request)
    if len(text) > MAX_BODY:
        raise body_too_large("larger than 1 MiB")
    if not text.strip():
        if required:
            raise invalid("body", "is required: a JSON object")
        return {}
    try:
        value = json.loads(text, parse_float=Fraction, parse_constant=_no_constant)
    except ValueError as exc:
        raise invalid("body", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid("body", "not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise invalid("body", "expected a JSON object")
    check_strings(value)
    return value


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python's json would make floats of them.
    raise ValueError(f"{name} is not a JSON value")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as text by Redis clients and PostgreSQL, or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which ocs cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (such as \\ud800): not valid Unicode"
    return None


def check_strings(body: dict[str, Any]) -> None:
    """400 naming the field (``tiers[0].flat``) of the first string, key or value, that
    PostgreSQL could not store; iterative, as deep JSON must not exhaust the stack."""
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                raise invalid(path or "body", problem)
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = text_problem(key)
                if problem is not None:
                    raise invalid(path or "body", f"a member name {problem}")
                pending.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            pending.extend((f"{path}[{n}]", item) for n, item in enumerate(value))


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
    """A string field of a body, 1 to ``max_len`` characters; None when absent and not required."""
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
    """An integer field of a body, in [minimum, maximum]; None when absent and not required."""
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
    """An amount field (a decimal string) in micro-units; None when absent and not required."""
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
    """An amount in micro-units as the API writes it (a decimal string)."""
    return format_amount(micro)
