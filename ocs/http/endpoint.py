"""One declaration per endpoint: method, path, role, and its parameter and answer types.

Each handler module declares its ``ENDPOINTS`` (``Endpoint`` values) beside its
handlers. From those declarations, and nothing else, come:

* the routes (``ocs.http.app``);
* who may call each one (``Endpoint.role``, read by ``ocs.http.admin_auth``);
* the validation of what a request sends (``read_params`` here): a JSON body
  (POST, PUT, PATCH) or the query string (GET, DELETE) decoded by msgspec into
  the endpoint's ``params`` Struct, with unknown fields, wrong types and limits
  answered 400 naming the field, and a body that is not ``application/json``
  answered 415;
* /openapi.json (``ocs.http.openapi``), from msgspec's JSON Schema of the same
  types. A field's limits are stated once, in its type, for both.

Answers are msgspec Structs too: a handler returns one (or a ``Reply`` with
another status), and it is encoded by msgspec here, so what /openapi.json says
an endpoint answers is the type the handler must return (checked by mypy).
"""

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import (
    Annotated,
    Any,
    Generic,
    Literal,
    TypeVar,
    cast,
    get_args,
    get_type_hints,
)

import msgspec
from aiohttp import web

from ocs.errors import OcsError, Reason, body_too_large, invalid
from ocs.http.json_io import MAX_BODY, check_strings, read_text
from ocs.money import MoneyError, format_amount, parse_amount


class Role(StrEnum):
    """Who may call an endpoint (docs/decisions/0011-secure-defaults.md)."""

    OPEN = "open"  # nobody needs a token: the probes and the API's description
    SWITCH = "switch"  # switches and IVRs: a switch token, or a source in switch_networks
    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # the day-to-day work on accounts
    ADMIN = "admin"  # everything else


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of what an endpoint takes (a JSON body or the query string): unknown fields
    are refused, never ignored: a typo (``callid``) must not read as an absent field."""


class Answer(msgspec.Struct, kw_only=True):
    """Base of what an endpoint answers: encoded by msgspec, documented from its type."""


class NoParams(Params):
    """An endpoint that takes nothing: any field sent is an unknown field."""


# --- field types: the form a field must have, stated once for validation and the schema ---


class Amount(int):
    """An amount in micro-units, written as a decimal string (``"1.50"``) or a whole
    number of currency units; never a JSON fraction (a float has lost the value)."""


class SignedAmount(int):
    """An ``Amount`` that may be negative (an adjustment, a credit)."""


# No money, as a field's default: a plain 0 typed as an amount (an Amount instance
# would not encode into the schema's "default").
ZERO_AMOUNT = cast(Amount, 0)

AMOUNT_PATTERN = r"^[+-]?(\d+(\.\d{0,6})?|\.\d{1,6})$"
AMOUNT_UNSIGNED = r"^[+]?(\d+(\.\d{0,6})?|\.\d{1,6})$"


def amount_text(micro: int) -> str:
    """An amount in micro-units as the API writes it (a decimal string)."""
    return format_amount(micro)


AccountId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9._@+-]{1,64}(?!\n)$",
        description="an account id: letters, digits and - _ . @ +",
        examples=["1001"],
    ),
]
ObjectId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9._-]{1,64}(?!\n)$",
        description="an id: letters, digits, '-', '_' or '.'",
        examples=["retail"],
    ),
]
CallId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[^|\x00-\x1f\x7f]{1,128}(?!\n)$",
        description="a call id: printable, without '|'",
        examples=["c-1"],
    ),
]
Member = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\S{1,64}(?!\n)$",
        description="a member (SIP user, extension, caller id): printable, no spaces",
        examples=["sip:alice"],
    ),
]
Digits = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\+?[0-9]{1,32}(?!\n)$",
        description="a number: digits, an optional +",
        examples=["447700900123"],
    ),
]
Currency = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Z]{3}(?!\n)$", description="ISO 4217 code", examples=["EUR"])
]
Direction = Literal["outbound", "inbound"]
Seconds = Annotated[int, msgspec.Meta(ge=0, le=7 * 24 * 3600, description="whole seconds")]


def _decode_custom(kind: type, value: Any) -> Any:
    """msgspec's hook for the field types it does not know: the amounts."""
    if kind is Amount or kind is SignedAmount:
        try:
            return kind(parse_amount(value, allow_negative=kind is SignedAmount))
        except MoneyError as exc:
            # msgspec adds "- at `$.field`": the field is named from it.
            raise ValueError(str(exc)) from None
    raise NotImplementedError(kind)


def _holds_amounts(kind: Any, seen: frozenset[Any] = frozenset()) -> bool:
    """Whether a params type has an amount anywhere (fields, lists, dicts, nested Structs)."""
    if kind is Amount or kind is SignedAmount:
        return True
    if kind in seen:
        return False
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        hints = get_type_hints(kind, include_extras=True)
        return any(_holds_amounts(hint, seen | {kind}) for hint in hints.values())
    return any(_holds_amounts(arg, seen) for arg in get_args(kind))


def plain_ints(value: Any) -> Any:
    """``value`` with every amount as a plain int: the Redis client packs exact ints only,
    and an amount must be usable wherever micro-units are."""
    if isinstance(value, Amount | SignedAmount):
        return int(value)
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            item = getattr(value, name)
            converted = plain_ints(item)
            if converted is not item:
                setattr(value, name, converted)
        return value
    if isinstance(value, list):
        return [plain_ints(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_ints(item) for item in value)
    if isinstance(value, dict):
        return {key: plain_ints(item) for key, item in value.items()}
    return value


def schema_of_custom(kind: type) -> dict[str, Any]:
    """The JSON Schema of the field types msgspec does not know (for /openapi.json)."""
    if kind is Amount or kind is SignedAmount:
        signed = kind is SignedAmount
        return {
            "anyOf": [
                {"type": "string", "pattern": AMOUNT_PATTERN if signed else AMOUNT_UNSIGNED},
                {"type": "integer"} if signed else {"type": "integer", "minimum": 0},
            ],
            "description": "an amount: a decimal string with up to 6 places, such as"
            ' "1.50" (a JSON number with a fraction is refused)',
            "examples": ["1.50"],
        }
    raise NotImplementedError(kind)


# --- the declaration -------------------------------------------------------------------

P = TypeVar("P", bound=Params | None)
A = TypeVar("A", bound=msgspec.Struct | None)


@dataclass(frozen=True, slots=True)
class Reply(Generic[A]):
    """An answer with a status other than the endpoint's usual one (201 vs 200 for a repeat)."""

    value: A
    status: int


# What a handler may return: its answer type, a Reply of it, or a response it built itself
# (the CSV and text endpoints, the probes' own bodies).
Handler = Callable[[web.Request, P], Awaitable[A | Reply[A] | web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[P, A]):
    """One endpoint of the HTTP API, declared once.

    ``params`` is the JSON body's type for POST, PUT and PATCH, the query string's for
    GET and DELETE; None: the endpoint takes none (its handler gets None). ``body`` says
    how a body is read: "json" (decoded into ``params``), "csv" (the handler reads the
    text itself; ``params`` then comes from the query string), or "none". ``answer`` is
    what a 2xx carries; ``status`` its usual code. ``deprecated``: kept for the clients
    built on it, marked so in /openapi.json; its description names what replaces it.
    """

    method: str
    path: str
    role: Role
    summary: str
    handler: Handler[P, A]
    params: type[P] | None = None
    answer: type[A] | None = None
    status: int = 200
    body: str = "json"
    body_required: bool = False
    errors: tuple[int, ...] = ()
    description: str = ""
    answer_description: str = ""
    deprecated: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """(method, path template): what the router and the role table know it by."""
        return (self.method, self.path)

    @property
    def takes_body(self) -> bool:
        """Whether a request body carries its parameters (rather than the query string)."""
        return self.method in ("POST", "PUT", "PATCH") and self.body != "none"


# --- reading the parameters ------------------------------------------------------------

_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}
_WITH_AMOUNTS: dict[type, bool] = {}
_ENCODER = msgspec.json.Encoder()

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(unknown|required) field `(?P<name>[^`]*)`")


def _with_amounts(kind: type) -> bool:
    """Whether ``plain_ints`` has work to do on params of this type (cached)."""
    flag = _WITH_AMOUNTS.get(kind)
    if flag is None:
        flag = _WITH_AMOUNTS[kind] = _holds_amounts(kind)
    return flag


def _decimal(text: str) -> Decimal:
    """A JSON number with a fraction or an exponent, as the Decimal of its text."""
    try:
        return Decimal(text)
    except ArithmeticError:
        # An exponent past what Decimal holds (1E+99999999999999999999999): msgspec turns
        # a ValueError into a validation error naming the field, not a server error.
        raise ValueError("a number ocs cannot read: its exponent is too large") from None


def _decoder(kind: type) -> msgspec.json.Decoder[Any]:
    """The cached decoder of a params type. A number in an untyped field (a stop's
    ``duration``) is read as a Decimal from its text, never as a float."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(
            kind, dec_hook=_decode_custom, float_hook=_decimal
        )
    return decoder


def _standard_json(text: str) -> Any:
    """``text`` read by the standard library, which names a lone surrogate's field or says
    what is wrong with the JSON; 400 naming ``body`` when it cannot read it either."""
    try:
        return json.loads(text)
    except ValueError as bad:
        raise invalid("body", f"not valid JSON: {bad}") from None
    except RecursionError:
        raise invalid("body", "not valid JSON: nested too deeply") from None


def field_error(error: msgspec.ValidationError) -> OcsError:
    """A msgspec validation error as a 400 naming the field (``tiers[0].flat``)."""
    message = str(error)
    path = ""
    at = _AT.search(message)
    if at is not None:
        path = at.group("path").lstrip(".")
        message = message[: at.start()]
    named = _NAMED.search(message)
    if named is not None:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
        message = (
            "unknown field: nothing of that name is taken here"
            if (named.group(1) == "unknown")
            else "is required"
        )
    return invalid(path or "body", message[:1].lower() + message[1:])


def is_json(content_type: str) -> bool:
    """Whether a Content-Type names JSON (``application/json`` or ``application/*+json``)."""
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def read_params(endpoint: "Endpoint[Any, Any]", request: web.Request) -> Any:
    """The endpoint's parameters from the request, decoded and validated; 4xx otherwise."""
    kind = endpoint.params
    # A CSV body leaves the query string to the parameters (``?format=astpp``).
    if not endpoint.takes_body or endpoint.body == "csv":
        if kind is None:
            return None
        try:
            query = msgspec.convert(
                dict(request.query), kind, strict=False, dec_hook=_decode_custom
            )
        except msgspec.ValidationError as exc:
            raise field_error(exc) from None
        return plain_ints(query) if _with_amounts(kind) else query
    if endpoint.body != "json":
        return None
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise body_too_large("larger than 1 MiB")
    text = await read_text(request)
    if len(text) > MAX_BODY:
        raise body_too_large("larger than 1 MiB")
    if not text.strip():
        if endpoint.body_required:
            raise invalid("body", "is required: a JSON object")
        text = "{}"
    elif not is_json(request.content_type):
        raise OcsError(
            Reason.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type: a JSON body needs Content-Type: application/json, not"
            f" {request.content_type[:60]!r}",
            field="Content-Type",
        )
    if kind is None:
        kind = NoParams
    try:
        params = _decoder(kind).decode(text)
    except msgspec.ValidationError as exc:
        if "\\u" in text:
            # A NUL or lone surrogate escaped in a name must not reach the error message.
            # msgspec stops at the first wrong field: the rest may not even be JSON.
            value = _standard_json(text)
            if isinstance(value, dict):
                check_strings(value)
        raise field_error(exc) from None
    except msgspec.DecodeError as exc:
        # The standard library names a lone surrogate's field, or says what is wrong.
        value = _standard_json(text)
        if isinstance(value, dict):
            check_strings(value)
        raise invalid("body", f"not valid JSON: {exc}") from None
    except RecursionError:
        # Deep arrays in an untyped field (a stop's ``duration``) exhaust msgspec's stack.
        raise invalid("body", "not valid JSON: nested too deeply") from None
    if "\\u" in text:
        # An escape may hide a NUL or a lone surrogate: rare, so the walk is paid only then.
        value = _standard_json(text)
        if isinstance(value, dict):
            check_strings(value)
    if endpoint.params is None:
        return None
    return plain_ints(params) if _with_amounts(kind) else params


def encode_answer(value: object, status: int) -> web.Response:
    """An answer Struct as the JSON response."""
    return web.Response(body=_ENCODER.encode(value), status=status, content_type="application/json")


def route_handler(
    endpoint: "Endpoint[Any, Any]",
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of an endpoint: read its parameters, call it, encode its answer."""
    handler = endpoint.handler
    status = endpoint.status

    async def handle(request: web.Request) -> web.StreamResponse:
        params = await read_params(endpoint, request)
        result = await handler(request, params)
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, Reply):
            return encode_answer(result.value, result.status)
        return encode_answer(result, status)

    return handle
