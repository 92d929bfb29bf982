"""The OpenAPI 3.1 document of the HTTP API, served at /openapi.json.

Generated from the endpoints' declarations (``ocs.http.endpoint``): each
operation's summary, role, parameters, body and answer come from its
``Endpoint``, and the schemas of bodies and answers are msgspec's JSON Schema of
the very types the handlers decode and return, so the document cannot drift
from the code.
"""

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from ocs.errors import sip_status_table
from ocs.http.endpoint import Endpoint, Role, schema_of_custom


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

# A database serial (bigint) id.
_SERIAL: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "maximum": 2**63 - 1,
    "examples": [1],
}

# Each path parameter's name: what it is and its form (what the handlers check).
_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "run_id": {"description": "an invoice run's id", "schema": _SERIAL},
    "invoice_id": {"description": "an invoice's (or credit note's) id", "schema": _SERIAL},
    "subscription_id": {"description": "a subscription's id", "schema": _SERIAL},
    "payment_id": {"description": "a payment's id", "schema": _SERIAL},
    "event_id": {"description": "a notification event's id", "schema": _SERIAL},
    "webhook_id": {
        "description": "a webhook endpoint's id: letters, digits, '-', '_' or '.'",
        "schema": _ID,
    },
    "number_set_id": {
        "description": "a number set's id: letters, digits, '-', '_' or '.'",
        "schema": _ID,
    },
    "number": {
        "description": "a telephone number (DID or toll-free), digits only",
        "schema": {"type": "string", "pattern": "^[0-9]{1,32}$"},
    },
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
    "caller": {
        "description": "a caller id (Calling-Station-Id): 1 to 32 digits, an optional +",
        "schema": {"type": "string", "pattern": "^\\+?[0-9]{1,32}$"},
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
    "import_id": {"description": "a usage import's id", "schema": _SERIAL},
    "name": {
        "description": "a RADIUS NAS client's name",
        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    },
}


def _path_parameters(path: str) -> list[dict[str, Any]]:
    """The path template's parameters, each declared (OpenAPI requires it)."""
    return [
        {"name": name, "in": "path", "required": True, **_PATH_PARAMETERS[name]}
        for name in re.findall(r"{(\w+)}", path)
    ]


def _refused(code: int) -> dict[str, Any]:
    return {
        "description": _ERROR_MEANING.get(code, "refused"),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


# The probes answer 503 with their own body, not an Error; the two documents need no backend.
# /readyz answers 503 with its own body, not an Error; /healthz (liveness) never answers
# 503, and neither it nor the two documents need a backend.
_PROBES = {"/readyz"}
_NO_BACKEND = {"/healthz", "/metrics", "/openapi.json"}


def _probe_503(path: str) -> dict[str, Any]:
    properties = {
        "ready": {"const": False},
        "backends": {"type": "object"},
        "catalog": {"const": "loading"},
    }
    return {
        "description": "not ready: a backend does not answer, or the catalog is still loading",
        "content": {"application/json": {"schema": {"type": "object", "properties": properties}}},
    }


_REF = "#/components/schemas/{name}"


def _ref(kind: type) -> dict[str, Any]:
    return {"$ref": _REF.format(name=kind.__name__)}


def _query_parameters(endpoint: Endpoint[Any, Any], schemas: dict[str, Any]) -> list[Any]:
    """The query string's parameters, one per field of the endpoint's params type."""
    if (endpoint.takes_body and endpoint.body != "csv") or endpoint.params is None:
        return []
    component = schemas[endpoint.params.__name__]
    required = set(component.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": schema,
            **({"description": schema["description"]} if "description" in schema else {}),
        }
        for name, schema in component.get("properties", {}).items()
    ]


def _request_body(endpoint: Endpoint[Any, Any]) -> dict[str, Any] | None:
    if not endpoint.takes_body:
        return None
    if endpoint.body == "csv":
        return {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "UTF-8 CSV with a header line",
        }
    schema = _ref(endpoint.params) if endpoint.params is not None else {"type": "object"}
    body: dict[str, Any] = {
        "required": endpoint.body_required,
        "content": {"application/json": {"schema": schema}},
    }
    if not endpoint.body_required:
        body["description"] = "may be left out: an empty body reads as {}"
    return body


def _security(role: Role) -> dict[str, Any]:
    if role is Role.OPEN:
        return {"security": []}
    if role is Role.SWITCH:
        return {
            "security": [{}, {"bearer": []}],
            "x-ocs-role": role.value,
            "description": "For switches and IVRs: a switch (or admin) token, or a source"
            " address in switch_networks (a token always with switch_token_required).",
        }
    return {
        "security": [{"bearer": []}],
        "x-ocs-role": role.value,
        "description": f"Needs a {role.value} token (or better).",
    }


def _operation(endpoint: Endpoint[Any, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """One operation, with every error it can answer documented: 400 (any parameter or
    body), 404 (an unknown resource in the path), 413 and 415 (a body), 503 (a backend
    down), 401 and 403 (a token needed), and the endpoint's own."""
    path = endpoint.path
    parameters = _path_parameters(path) + _query_parameters(endpoint, schemas)
    errors = {400, *endpoint.errors}
    if parameters:
        errors.add(404 if _path_parameters(path) else 400)
    body = _request_body(endpoint)
    if body is not None:
        errors |= {413, 415}
    if path not in _PROBES | _NO_BACKEND:
        errors.add(503)
    if endpoint.role is not Role.OPEN:
        errors |= {401, 403}
    responses: dict[str, Any] = {str(code): _refused(code) for code in sorted(errors)}
    if path in _PROBES:
        responses["503"] = _probe_503(path)
    success: dict[str, Any] = {
        "description": endpoint.answer_description or endpoint.summary,
    }
    if endpoint.answer is not None:
        success["content"] = {"application/json": {"schema": _ref(endpoint.answer)}}
    responses[str(endpoint.status)] = success
    if endpoint.status == 201:
        responses["200"] = success  # a repeat of what was already done
    security = _security(endpoint.role)
    description = " ".join(d for d in (endpoint.description, security.pop("description", "")) if d)
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.handler.__name__,
        **security,
        "responses": responses,
    }
    if description:
        operation["description"] = description
    if endpoint.deprecated:
        operation["deprecated"] = True
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    return operation


def _schemas(endpoints: Iterable[Endpoint[Any, Any]]) -> dict[str, Any]:
    """msgspec's JSON Schema of every params and answer type, as components."""
    kinds = {
        kind
        for endpoint in endpoints
        for kind in (endpoint.params, endpoint.answer)
        if kind is not None
    }
    ordered = sorted(kinds, key=lambda kind: kind.__name__)
    _, components = msgspec.json.schema_components(
        ordered, schema_hook=schema_of_custom, ref_template=_REF
    )
    return components


def openapi_document(version: str, endpoints: Iterable[Endpoint[Any, Any]]) -> dict[str, Any]:
    """The whole document, for /openapi.json."""
    endpoints = tuple(endpoints)
    schemas = _schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ocs",
            "version": version,
            "description": "Online charging: amounts are decimal strings of the account's "
            "currency, durations whole seconds; every refusal has a reason code and a "
            "sip_status for switches. Bodies are UTF-8 JSON (Content-Type: application/json;"
            " CSV imports take text/csv); a field no endpoint takes is refused (400 naming"
            " it), and a NUL character is refused in any string, path or query parameter.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR, **schemas},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
