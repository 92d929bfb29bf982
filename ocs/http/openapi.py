"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Written by hand next to the routes; a test checks that every route of the app
is documented here and nothing else, so the two cannot drift apart.
"""

from typing import Any

_AMOUNT = {"type": "string", "pattern": r"^-?\d+(\.\d{1,6})?$", "examples": ["1.50"]}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "reason", "message"],
            "properties": {
                "code": {"type": "integer"},
                "reason": {"type": "string", "examples": ["insufficient_funds"]},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }
    },
}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": properties, "required": required}
            }
        },
    }


def _answer(description: str, *errors: int) -> dict[str, Any]:
    responses: dict[str, Any] = {"2XX": {"description": description}}
    for code in errors:
        responses[str(code)] = {
            "description": "refused",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def _op(
    summary: str, description: str, *errors: int, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": _answer(description, *errors)}
    if body is not None:
        operation["requestBody"] = body
    return operation


_ID = {"type": "string", "maxLength": 64}
_CALL = {"type": "string", "maxLength": 128}

_CSV_BODY = {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}

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
                    "id": _ID,
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
            body=_body(
                {"member": {"type": "string"}, "max_lines": {"type": "integer"}}, ["member"]
            ),
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
            "Start a new counter cycle (all accounts, a plan's, or one account's)",
            "accounts and counters reset",
            400,
            body=_body({"plan": _ID, "account": _ID, "cycle": {"type": "string"}}, []),
        ),
    },
    "/v1/plans/{plan_id}/counters": {
        "post": _op(
            "Define a usage counter (bundle of seconds) of a plan",
            "the counter",
            400,
            404,
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
                },
                [],
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
        "get": _op("A card's balance, currency, language, expiry (IVR)", "the card", 403, 404),
    },
    "/v1/pins/{pin}/time": {
        "get": _op(
            "Seconds a card buys to a destination (query: destination, access_number)",
            "seconds",
            400,
            403,
            404,
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
            body=_body({"caller": {"type": "string"}}, ["caller"]),
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
                    "account": _ID,
                    "destination": {"type": "string"},
                    "caller": {"type": "string"},
                    "call_id": _CALL,
                    "member": {"type": "string"},
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
                    "account": _ID,
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
    "/v1/calls/{call_id}/start": {"post": _op("Start a call", "progress", 404, 409)},
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
        "post": _op(
            "Stop and charge a call",
            "cost, balance",
            400,
            404,
            body=_body({"duration": {"type": "integer", "minimum": 0}}, ["duration"]),
        ),
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
                    "currency": {"type": "string"},
                    "name": {"type": "string"},
                    "credit_limit": _AMOUNT,
                    "min_balance": _AMOUNT,
                    "max_lines": {"type": "integer"},
                    "max_call_duration": {"type": "integer"},
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
    "/healthz": {"get": _op("Health of the backends", "ok", 503)},
    "/metrics": {"get": _op("Prometheus metrics", "text exposition")},
    "/openapi.json": {"get": _op("This document", "OpenAPI 3.1")},
}


def _secured(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths with each operation's security (ocs.http.admin_auth): none for the
    probes, an optional bearer token for the switches' and IVRs' endpoints (needed
    with switch_token_required), a bearer token (and its 401 and 403) for the rest."""
    from ocs.http.admin_auth import needed_role

    secured: dict[str, dict[str, Any]] = {}
    for path, operations in paths.items():
        secured[path] = {}
        for method, operation in operations.items():
            needed = needed_role(method.upper(), path)
            if needed is None and needed_role(method.upper(), path, switch_token=True):
                secured[path][method] = {
                    **operation,
                    "security": [{}, {"bearer": []}],
                    "description": "Needs a switch token where switch_token_required is set.",
                }
                continue
            if needed is None:
                secured[path][method] = {**operation, "security": []}
                continue
            responses = {**_answer("", 401, 403), **operation["responses"]}
            secured[path][method] = {
                **operation,
                "security": [{"bearer": []}],
                "responses": responses,
                "description": f"Needs a {needed} token (or better).",
            }
    return secured


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ocs",
            "version": version,
            "description": "Online charging: amounts are decimal strings of the account's "
            "currency, durations whole seconds; every refusal has a reason code.",
        },
        "paths": _secured(PATHS),
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
