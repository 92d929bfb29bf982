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
    "/v1/accounts/{account_id}": {"get": _op("Show an account", "balance, reserved, lines", 404)},
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
                },
                ["account", "destination"],
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
            body={"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
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
                },
                ["name", "address", "secret"],
            ),
        ),
        "get": _op("List RADIUS clients", "the clients, without secrets"),
    },
    "/healthz": {"get": _op("Health of the backends", "ok", 503)},
    "/metrics": {"get": _op("Prometheus metrics", "text exposition")},
    "/openapi.json": {"get": _op("This document", "OpenAPI 3.1")},
}


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ocs",
            "version": version,
            "description": "Online charging: amounts are decimal strings of the account's "
            "currency, durations whole seconds; every refusal has a reason code.",
        },
        "paths": PATHS,
        "components": {"schemas": {"Error": _ERROR}},
    }
