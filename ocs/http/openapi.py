"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Written by hand next to the routes; a test checks that every route of the app
is documented here and nothing else, so the two cannot drift apart.
"""

import re
from typing import Any

from ocs.errors import sip_status_table

_AMOUNT = {"type": "string", "pattern": r"^-?\d+(\.\d{1,6})?$", "examples": ["1.50"]}


def _sip_description() -> str:
    table = ", ".join(f"{reason} {status}" for reason, status in sip_status_table().items())
    return (
        "The SIP final response a switch should give its caller for this refusal, so that"
        " it needs no mapping table of its own: 402 no funds, 403 not allowed, 404 unknown,"
        " 481 call already ended, 486 no free line (Busy Here), 503 ocs or a backend"
        " unavailable (or the switch's own token refused), 400 a request the switch built"
        f" wrong, 500 anything else. By reason: {table}."
    )


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "reason", "message", "sip_status"],
            "properties": {
                "code": {"type": "integer", "description": "the HTTP status"},
                "reason": {
                    "type": "string",
                    "examples": ["insufficient_funds"],
                    "description": "stable, machine-readable reason code",
                },
                "message": {"type": "string"},
                "sip_status": {
                    "type": "integer",
                    "minimum": 400,
                    "maximum": 699,
                    "examples": [402, 486],
                    "description": _sip_description(),
                },
                "field": {
                    "type": "string",
                    "description": "the field, path or query parameter, or header to blame",
                },
                "problems": {
                    "type": "array",
                    "description": "a CSV import's bad lines",
                    "items": {
                        "type": "object",
                        "properties": {
                            "line": {"type": "integer"},
                            "column": {"type": ["string", "null"]},
                            "message": {"type": "string"},
                        },
                    },
                },
                "more_problems": {"type": "integer", "description": "bad lines not listed"},
            },
        }
    },
}

# What each error status means where an operation lists it.
_ERROR_MEANING = {
    400: "bad input: a field, path or query parameter, or a body that is not UTF-8 JSON"
    " (or CSV) ocs can store; ``field`` names it",
    401: "no token, or not one of ours",
    402: "no funds",
    403: "not allowed",
    404: "unknown",
    409: "conflicts with what exists",
    413: "body larger than ocs takes",
    415: "body in a charset other than UTF-8",
    503: "a backend (Redis, PostgreSQL) is unavailable; retry",
}


def _body(
    properties: dict[str, Any], required: list[str], *, optional: bool = False
) -> dict[str, Any]:
    """A JSON object body; ``optional``: the body may be left out (it reads as {})."""
    return {
        "required": not optional,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": properties, "required": required}
            }
        },
    }


def _answer(description: str, *errors: int) -> dict[str, Any]:
    responses: dict[str, Any] = {"2XX": {"description": description}}
    for code in errors:
        responses[str(code)] = _refused(code)
    return responses


def _refused(code: int) -> dict[str, Any]:
    return {
        "description": _ERROR_MEANING.get(code, "refused"),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _op(
    summary: str,
    description: str,
    *errors: int,
    body: dict[str, Any] | None = None,
    query: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": _answer(description, *errors)}
    if body is not None:
        operation["requestBody"] = body
    if query:
        operation["parameters"] = query
    return operation


def _query(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    """A query parameter."""
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string", "maxLength": 64, **schema},
    }


# The forms the handlers accept, as patterns: generated requests (schemathesis) then
# get past validation to the work itself.
_ID: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9._-]{1,64}$",
    "examples": ["retail"],
}
_ACCOUNT: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9._@+-]{1,64}$",
    "examples": ["1001"],
}
_CALL: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9._@:-]{1,128}$",
    "examples": ["c-1"],
}
_MEMBER: dict[str, Any] = {"type": "string", "pattern": r"^[!-~]{1,64}$", "examples": ["sip:alice"]}
_DIGITS: dict[str, Any] = {
    "type": "string",
    "pattern": r"^\+?[0-9]{1,32}$",
    "examples": ["447700900123"],
}
_CURRENCY: dict[str, Any] = {"type": "string", "pattern": "^[A-Z]{3}$", "examples": ["EUR"]}

# Each path parameter's name: what it is and its form (what the handlers check).
_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "account_id": {
        "description": "an account id: letters, digits and - _ . @ +",
        "schema": _ACCOUNT,
    },
    "plan_id": {
        "description": "a plan id: letters, digits, '-', '_' or '.'",
        "schema": _ID,
    },
    "carrier_id": {
        "description": "a carrier id: letters, digits, '-', '_' or '.'",
        "schema": _ID,
    },
    "route_set_id": {
        "description": "a route set id: letters, digits, '-', '_' or '.'",
        "schema": _ID,
    },
    "call_id": {
        "description": "a call id: printable, without '|'",
        "schema": _CALL,
    },
    "member": {
        "description": "a member (SIP user, extension, caller id): printable, no spaces",
        "schema": _MEMBER,
    },
    "counter_id": {
        "description": "a usage counter of the account's plan",
        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    },
    "zone": {
        "description": "a zone of the plan's deck",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    },
    "pin": {
        "description": "a calling card's PIN",
        "schema": {"type": "string", "minLength": 1, "maxLength": 32},
    },
}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    """The path template's parameters, each declared (OpenAPI requires it)."""
    return [
        {"name": name, "in": "path", "required": True, **_PATH_PARAMETERS[name]}
        for name in re.findall(r"{(\w+)}", path)
    ]


# How a plan's calls hold funds (ocs.catalog.snapshot.Plan), on POST /v1/plans and the policy.
_RESERVATION = {
    "reservation_policy": {
        "enum": ["whole", "slice", "share"],
        "default": "whole",
        "description": "what a call holds of the balance: its longest call's worth (whole),"
        " slice_seconds at a time, extended by updates (slice), or at most the available"
        " funds divided by the free lines (share)",
    },
    "slice_seconds": {
        "type": "integer",
        "minimum": 1,
        "maximum": 86_400,
        "default": 60,
        "description": "seconds per slice (reservation_policy slice)",
    },
}

_CSV_BODY = {
    "required": True,
    "content": {"text/csv": {"schema": {"type": "string"}}},
    "description": "UTF-8 CSV with a header line",
}

PATHS: dict[str, dict[str, Any]] = {
    "/v1/accounts": {
        "post": _op(
            "Create an account",
            "the account",
            400,
            404,
            409,
            body=_body(
                {
                    "id": _ACCOUNT,
                    "plan": _ID,
                    "balance": _AMOUNT,
                    "credit_limit": _AMOUNT,
                    "max_lines": {"type": "integer"},
                    "status": {"enum": ["active", "locked", "suspended"]},
                    "password": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time"},
                },
                ["id", "plan"],
            ),
        ),
    },
    "/v1/accounts/{account_id}": {
        "get": _op("Show an account", "balance, reserved, lines", 404),
        "patch": _op(
            "Override an account's limits (null removes critical_balance / max_members)",
            "the account",
            400,
            404,
            body=_body(
                {
                    "credit_limit": _AMOUNT,
                    "max_lines": {"type": "integer"},
                    "min_balance": _AMOUNT,
                    "critical_balance": {"oneOf": [_AMOUNT, {"type": "null"}]},
                    "member_max_lines": {"type": "integer"},
                    "max_members": {"type": ["integer", "null"]},
                    "status": {"enum": ["active", "locked", "suspended"]},
                },
                [],
                optional=True,
            ),
        ),
    },
    "/v1/accounts/{account_id}/members": {
        "get": _op("List an account's members", "the members", 404),
        "post": _op(
            "Add a member (SIP user, extension, caller id), within the plan's max members",
            "added",
            400,
            404,
            409,
            body=_body({"member": _MEMBER, "max_lines": {"type": "integer"}}, ["member"]),
        ),
    },
    "/v1/accounts/{account_id}/members/{member}": {
        "delete": _op("Remove a member", "removed", 404),
    },
    "/v1/accounts/{account_id}/counters": {
        "get": _op("An account's usage counters this cycle", "limit, used, held, left", 404),
        "post": _op(
            "Buy an optional counter of the account's plan",
            "the counter",
            400,
            404,
            body=_body({"counter": {"type": "string"}}, ["counter"]),
        ),
    },
    "/v1/accounts/{account_id}/counters/{counter_id}": {
        "delete": _op("Cancel an optional counter", "cancelled", 404),
    },
    "/v1/counters/reset": {
        "post": _op(
            "Start a new counter cycle (all accounts, a plan's, or one account's); the body"
            " is required: {} on purpose resets every account",
            "accounts and counters reset",
            400,
            body=_body({"plan": _ID, "account": _ACCOUNT, "cycle": {"type": "string"}}, []),
        ),
    },
    "/v1/plans/{plan_id}/counters": {
        "post": _op(
            "Define a usage counter (bundle of seconds) of a plan",
            "the counter",
            400,
            404,
            409,
            body=_body(
                {
                    "id": {"type": "string"},
                    "seconds": {"type": "integer"},
                    "zones": {"type": "array", "items": {"type": "string"}},
                    "price_per_minute": _AMOUNT,
                    "increment": {"type": "integer"},
                    "reject_on_threshold": {"type": "boolean"},
                    "carryover": {"type": "boolean"},
                    "mandatory": {"type": "boolean"},
                    "recurring_fee": _AMOUNT,
                    "active": {"type": "boolean"},
                    "taxes_follow_counter": {"type": "boolean"},
                },
                ["id", "seconds", "zones"],
            ),
        ),
    },
    "/v1/plans/{plan_id}/policy": {
        "put": _op(
            "Set a plan's account defaults (copied to new accounts)",
            "the policy",
            400,
            404,
            body=_body(
                {
                    "max_members": {"type": ["integer", "null"]},
                    "member_max_lines": {"type": "integer"},
                    "critical_balance": _AMOUNT,
                    "recurring_fee": _AMOUNT,
                    "lock_prorated": {"type": "boolean"},
                    "language": {"type": "string"},
                    **_RESERVATION,
                },
                [],
                optional=True,
            ),
        ),
    },
    "/v1/pin-batches": {
        "post": _op(
            "Generate a batch of calling cards; the answer is its CSV (the PINs appear only here)",
            "text/csv: pin, password, account, value, currency, expires",
            400,
            404,
            409,
            body=_body(
                {
                    "batch": {"type": "string"},
                    "plan": _ID,
                    "count": {"type": "integer"},
                    "length": {"type": "integer"},
                    "value": _AMOUNT,
                    "password_length": {"type": "integer"},
                    "expires_at": {"type": "string", "format": "date-time"},
                    "expire_days": {"type": "integer"},
                },
                ["batch", "plan", "count", "value"],
            ),
        ),
    },
    "/v1/pins/{pin}": {
        "get": _op(
            "A card's balance, currency, language, expiry (IVR)",
            "the card",
            403,
            404,
            query=[_query("caller", "the caller asking (PIN guesses count per caller)")],
        ),
    },
    "/v1/pins/{pin}/time": {
        "get": _op(
            "Seconds a card buys to a destination (query: destination, access_number)",
            "seconds",
            400,
            403,
            404,
            query=[
                _query("destination", "the number dialled", required=True, **_DIGITS),
                _query("access_number", "the access number (DNIS) called", **_DIGITS),
                _query("caller", "the caller asking (PIN guesses count per caller)"),
            ],
        ),
    },
    "/v1/accounts/{account_id}/topups": {
        "post": _op(
            "Top up",
            "the new balance",
            400,
            404,
            body=_body({"amount": _AMOUNT, "topup_id": {"type": "string"}}, ["amount"]),
        ),
    },
    "/v1/accounts/{account_id}/callers": {
        "post": _op(
            "Add a caller id (pinless)",
            "added",
            400,
            404,
            409,
            body=_body({"caller": _DIGITS}, ["caller"]),
        ),
    },
    "/v1/calls": {
        "post": _op(
            "Authorize a call",
            "call_id, max_duration, reserved, zone",
            400,
            402,
            403,
            404,
            409,
            body=_body(
                {
                    "account": _ACCOUNT,
                    "destination": _DIGITS,
                    "caller": _DIGITS,
                    "call_id": _CALL,
                    "member": _MEMBER,
                    "direction": {"enum": ["outbound", "inbound"]},
                    "quota": {"type": "integer", "minimum": 1},
                    "access_number": {"type": "string"},
                },
                ["destination"],
            ),
        ),
    },
    "/v1/usage": {
        "post": _op(
            "Rate and debit a usage event (MB, kWh, messages), once per event_id",
            "cost, balance",
            400,
            402,
            403,
            404,
            body=_body(
                {
                    "account": _ACCOUNT,
                    "event_id": _CALL,
                    "service": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 0},
                },
                ["account", "event_id", "service", "quantity"],
            ),
        ),
    },
    "/v1/calls/{call_id}": {
        "delete": _op(
            "Cut a live call: charge it to now; its NAS gets a Disconnect-Request (RFC 5176)",
            "duration, cost, balance, disconnect outcome",
            404,
        ),
    },
    "/v1/calls/{call_id}/start": {
        "post": _op(
            "Start a call (answered): its time runs from now; the body may be empty",
            "progress",
            404,
            409,
            body=_body({}, [], optional=True),
        )
    },
    "/v1/calls/{call_id}/update": {
        "post": _op(
            "Report progress",
            "progress",
            400,
            404,
            409,
            body=_body({"used": {"type": "integer", "minimum": 0}}, ["used"]),
        ),
    },
    "/v1/calls/{call_id}/stop": {
        "post": {
            **_op(
                "Stop and charge a call; a repeated stop is answered with the first charge",
                "",
                400,
                404,
                body=_body(
                    {
                        "duration": {
                            "type": "number",
                            "minimum": 0,
                            "examples": [45, 45.5],
                            "description": "seconds the call lasted, a decimal number"
                            " (a started second counts whole: 12.01 is 13); absent: the time"
                            " since the call started",
                        }
                    },
                    [],
                    optional=True,
                ),
            ),
            "responses": {
                "2XX": {
                    "description": "cost, balance; a repeated stop says whether its duration"
                    " differs from the charged one",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "cost": _AMOUNT,
                                    "balance": _AMOUNT,
                                    "repeated": {"type": "boolean"},
                                    "duration_differs": {
                                        "type": "boolean",
                                        "description": "a repeated stop: its duration is"
                                        " not the one charged",
                                    },
                                    "charged_duration": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "the duration charged, in whole"
                                        " seconds: a repeated stop's is the first stop's",
                                    },
                                },
                            }
                        }
                    },
                },
                "400": _refused(400),
                "404": _refused(404),
            },
        },
    },
    "/v1/plans": {
        "post": _op(
            "Create a plan",
            "the plan",
            400,
            409,
            body=_body(
                {
                    "id": _ID,
                    "currency": _CURRENCY,
                    "name": {"type": "string"},
                    "credit_limit": _AMOUNT,
                    "min_balance": _AMOUNT,
                    "max_lines": {"type": "integer"},
                    "max_call_duration": {"type": "integer"},
                    **_RESERVATION,
                },
                ["id", "currency"],
            ),
        ),
        "get": _op("List plans", "the plans"),
    },
    "/v1/plans/{plan_id}/tariffs": {
        "post": _op(
            "Replace a plan's rate deck (CSV body)",
            "prefixes and zones",
            400,
            404,
            body=_CSV_BODY,
        ),
    },
    "/v1/plans/{plan_id}/tariffs/{zone}/shape": {
        "put": _op(
            "Give a zone's tariff graduated tiers and a max cost",
            "the shape",
            400,
            404,
            body=_body(
                {
                    "tiers": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "from_second": {"type": "integer", "minimum": 1},
                                "price_per_minute": _AMOUNT,
                                "increment": {"type": "integer"},
                                "flat": _AMOUNT,
                            },
                        },
                    },
                    "max_cost": _AMOUNT,
                    "max_cost_mode": {"enum": ["free", "cut"]},
                    "surcharge_percent": {"type": "string", "examples": ["2.5"]},
                    "surcharge_flat": _AMOUNT,
                    "band_prices": {"type": "object", "additionalProperties": _AMOUNT},
                    "per": {"type": "integer", "minimum": 1},
                },
                [],
                optional=True,
            ),
        ),
    },
    "/v1/plans/{plan_id}/bands": {
        "put": _op(
            "Set a plan's time bands (weekly rules and holidays in its time zone)",
            "the schedule",
            400,
            404,
            body=_body(
                {
                    "time_zone": {"type": "string", "examples": ["Europe/London"]},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "band": {"type": "string"},
                                "days": {"type": "array", "items": {"type": "integer"}},
                                "start": {"type": "string", "examples": ["08:00"]},
                                "end": {"type": "string", "examples": ["18:00"]},
                            },
                        },
                    },
                    "holidays": {"type": "array", "items": {"type": "string", "format": "date"}},
                },
                ["rules"],
            ),
        ),
    },
    "/v1/plans/{plan_id}/translation": {
        "put": _op(
            "Set a plan's translation set (ordered regex rules to E.164)",
            "the rules",
            400,
            404,
            body=_body(
                {
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "match": {"type": "string"},
                                "replace": {"type": "string"},
                            },
                        },
                    }
                },
                ["rules"],
            ),
        ),
    },
    "/v1/nas-clients": {
        "post": _op(
            "Add a RADIUS client",
            "the client, without its secret",
            400,
            body=_body(
                {
                    "name": {"type": "string"},
                    "address": {"type": "string"},
                    "secret": {"type": "string"},
                    "require_message_authenticator": {"type": "boolean"},
                    "coa_port": {"type": "integer"},
                    "translation": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "match": {"type": "string"},
                                "replace": {"type": "string"},
                            },
                        },
                    },
                },
                ["name", "address", "secret"],
            ),
        ),
        "get": _op("List RADIUS clients", "the clients, without secrets"),
    },
    "/v1/plans/{plan_id}/routing": {
        "put": _op(
            "Set a plan's route set and negative-margin policy (route_set null: no routing)",
            "the routing",
            400,
            404,
            body=_body(
                {
                    "route_set": {"type": ["string", "null"], "maxLength": 64},
                    "allow_negative_margin": {"type": "boolean", "default": False},
                },
                [],
                optional=True,
            ),
        ),
    },
    "/v1/carriers": {
        "post": _op(
            "Create a carrier (or rename an existing one: 200)",
            "the carrier",
            400,
            body=_body({"id": _ID, "name": {"type": "string", "maxLength": 200}}, ["id"]),
        ),
    },
    "/v1/carriers/{carrier_id}/rates": {
        "put": _op(
            "Replace a carrier's cost deck (CSV body: prefix,connect_fee,first_block,"
            "increment,price_per_minute)",
            "prefixes and distinct rates",
            400,
            404,
            body=_CSV_BODY,
        ),
    },
    "/v1/route-sets/{route_set_id}": {
        "put": _op(
            "Create or replace a route set: its carriers in the order to try them",
            "the route set",
            400,
            404,
            body=_body({"carriers": {"type": "array", "items": _ID, "maxItems": 64}}, ["carriers"]),
        ),
    },
    "/v1/plans/{plan_id}/access-numbers": {
        "put": _op(
            "Replace a plan's access numbers (DNIS): calls through each are rated by its plan",
            "the numbers",
            400,
            404,
            body=_body(
                {"numbers": {"type": "object", "additionalProperties": {"type": "string"}}},
                ["numbers"],
            ),
        ),
    },
    "/v1/on-net": {
        "put": _op(
            "Replace the operator's own ranges: destinations in them rate in zone On-net",
            "how many prefixes",
            400,
            body=_body({"prefixes": {"type": "array", "items": {"type": "string"}}}, ["prefixes"]),
        ),
    },
    "/v1/plans/{plan_id}/lookup": {
        "get": _op(
            "How the plan rates a number (query: number, direction, access_number): the"
            " matched prefix, zone and rate, and the area-code name, from the serving catalog",
            "the match",
            400,
            403,
            404,
            query=[
                _query("number", "the number to rate", required=True, **_DIGITS),
                _query("direction", "outbound (default) or inbound", enum=["outbound", "inbound"]),
                _query("access_number", "the access number (DNIS) called", **_DIGITS),
            ],
        ),
    },
    "/v1/area-codes": {
        "put": _op(
            "Replace the standard area-code table (CSV body: prefix,name): destination"
            " names for CDRs and IVRs, never rates",
            "how many prefixes it names",
            400,
            body=_CSV_BODY,
        ),
        "delete": _op("Drop the standard area-code table", "removed", 404),
    },
    "/v1/plans/{plan_id}/area-codes": {
        "put": _op(
            "Replace a plan's custom code list (CSV body: prefix,name): it replaces the"
            " standard area-code table for the plan whole",
            "how many prefixes it names",
            400,
            404,
            body=_CSV_BODY,
        ),
        "delete": _op(
            "Drop a plan's custom code list: the plan goes back to the standard table",
            "removed",
            404,
        ),
    },
    "/healthz": {"get": _op("Liveness, and each backend's check", "ok", 503)},
    "/readyz": {
        "get": _op(
            "Readiness for traffic: 200 {ready: true} when Redis and PostgreSQL answer,"
            " else 503 {ready: false, backends: {...}} (not an Error body)",
            "ready",
        )
    },
    "/metrics": {"get": _op("Prometheus metrics", "text exposition")},
    "/openapi.json": {"get": _op("This document", "OpenAPI 3.1")},
}


# The probes answer 503 with their own body, not an Error; the two documents need no backend.
_PROBES = {"/healthz", "/readyz"}
_NO_BACKEND = {"/metrics", "/openapi.json"}


def _probe_503(path: str) -> dict[str, Any]:
    properties = (
        {"ready": {"const": False}, "backends": {"type": "object"}}
        if path == "/readyz"
        else {"status": {"const": "unavailable"}, "checks": {"type": "object"}}
    )
    return {
        "description": "a backend does not answer",
        "content": {"application/json": {"schema": {"type": "object", "properties": properties}}},
    }


def _complete(path: str, method: str, operation: dict[str, Any]) -> dict[str, Any]:
    """An operation with its path parameters declared and every error it can answer
    documented: 400 (any parameter or body), 404 (an unknown resource in the path),
    413 and 415 (a body), 503 (a backend down), 401 and 403 (a token needed: see
    ``_security``). The operation's own responses win."""
    from ocs.http.admin_auth import needed_role

    parameters = _path_parameters(path) + operation.get("parameters", [])
    errors = [400]
    if _path_parameters(path):
        errors.append(404)
    if "requestBody" in operation:
        errors += [413, 415]
    if path not in _PROBES | _NO_BACKEND:
        errors.append(503)
    extra: dict[str, Any] = {}
    needed = needed_role(method.upper(), path)
    switch = needed is None and needed_role(method.upper(), path, switch_token=True)
    if switch:
        errors += [401, 403]
        extra = {
            "security": [{}, {"bearer": []}],
            "description": "For switches and IVRs: a switch (or admin) token, or a source"
            " address in switch_networks (a token always with switch_token_required).",
        }
    elif needed is None:
        extra = {"security": []}
    else:
        errors += [401, 403]
        extra = {
            "security": [{"bearer": []}],
            "description": f"Needs a {needed} token (or better).",
        }
    responses = {str(code): _refused(code) for code in sorted(errors)}
    if path in _PROBES:
        responses["503"] = _probe_503(path)
    completed = {**operation, **extra, "responses": {**responses, **operation["responses"]}}
    if parameters:
        completed["parameters"] = parameters
    return completed


def _documented(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every operation of ``paths`` completed (``_complete``)."""
    return {
        path: {method: _complete(path, method, op) for method, op in operations.items()}
        for path, operations in paths.items()
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document, for /openapi.json."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ocs",
            "version": version,
            "description": "Online charging: amounts are decimal strings of the account's "
            "currency, durations whole seconds; every refusal has a reason code and a "
            "sip_status for switches. Bodies are UTF-8; a NUL character is refused in any "
            "string, path or query parameter (400 naming it).",
        },
        "paths": _documented(PATHS),
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
