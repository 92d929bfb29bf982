"""/openapi.json is generated from the endpoints' declarations: it documents exactly the
routes the app serves, with the limits the handlers enforce and the answers they give."""

import re
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from tests.conftest import RunningApp, account, add_plan


async def document_of(app: RunningApp) -> dict[str, Any]:
    status, document = await app.get("/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.1"), document
    return document


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Validator:
    """A validator of ``schema`` that resolves the document's component references."""
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


async def test_every_route_is_documented_and_nothing_else(app: RunningApp) -> None:
    document = await document_of(app)
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.client.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    assert served == documented
    for operations in document["paths"].values():
        for operation in operations.values():
            assert operation["summary"] and operation["responses"]


async def test_every_path_parameter_is_declared_and_its_errors_documented(
    app: RunningApp,
) -> None:
    document = await document_of(app)
    problems = []
    for path, operations in document["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            if declared != names:
                problems.append(f"{where}: path parameters {sorted(declared)}, not {sorted(names)}")
            if (names or operation.get("parameters")) and "400" not in operation["responses"]:
                problems.append(f"{where}: no 400 documented")
            if names and "404" not in operation["responses"]:
                problems.append(f"{where}: no 404 documented")
            if "requestBody" in operation and "415" not in operation["responses"]:
                problems.append(f"{where}: no 415 documented")
            if operation["security"] and not {"401", "403"} <= set(operation["responses"]):
                problems.append(f"{where}: takes a token but documents no 401 and 403")
    assert not problems, "\n".join(problems)


async def test_the_documented_limits_are_the_ones_enforced(app: RunningApp) -> None:
    # The drift the review found: destination unbounded, quota without its maximum,
    # the authorize answer a sentence. Each limit is now read from the same type.
    document = await document_of(app)
    schemas = document["components"]["schemas"]
    authorize = document["paths"]["/v1/calls"]["post"]
    body = authorize["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    fields = schemas[body.rsplit("/", 1)[1]]
    assert fields["properties"]["destination"]["maxLength"] == 64
    quota = fields["properties"]["quota"]["anyOf"][0]
    assert (quota["minimum"], quota["maximum"]) == (1, 7 * 24 * 3600)
    assert fields["additionalProperties"] is False
    answer = authorize["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    granted = schemas[answer.rsplit("/", 1)[1]]
    assert set(granted["required"]) == {
        "call_id", "account", "destination", "zone", "max_duration", "reserved",
        "currency", "repeated", "carriers", "counter_seconds", "final", "direction",
    }  # fmt: skip

    await add_plan(app.services)
    status, refused = await app.post(
        "/v1/accounts", {"id": "1001", "plan": "retail", "balance": "1.00"}
    )
    assert status == 201, refused
    too_long = {"account": "1001", "destination": "4" * 65}
    status, refused = await app.post("/v1/calls", too_long)
    assert status == 400 and refused["error"]["field"] == "destination", refused
    too_much = {"account": "1001", "destination": "4420", "quota": 7 * 24 * 3600 + 1}
    status, refused = await app.post("/v1/calls", too_much)
    assert status == 400 and refused["error"]["field"] == "quota", refused


async def test_a_typo_in_a_field_is_refused_and_holds_nothing(app: RunningApp) -> None:
    await add_plan(app.services)
    status, created = await app.post(
        "/v1/accounts", {"id": "1001", "plan": "retail", "balance": "1.00", "max_lines": 1}
    )
    assert status == 201, created
    for _ in range(2):
        status, refused = await app.post(
            "/v1/calls", {"account": "1001", "destination": "4420", "callid": "x"}
        )
        assert status == 400, refused
        assert refused["error"]["reason"] == "invalid_field"
        assert refused["error"]["field"] == "callid"
    shown = await account(app, "1001")
    assert (shown["lines_in_use"], shown["reserved"]) == (0, "0.000000")
    # The line is free: a well-formed request is granted.
    status, grant = await app.post("/v1/calls", {"account": "1001", "destination": "4420"})
    assert status == 201, grant


async def test_a_json_body_needs_a_json_content_type(app: RunningApp) -> None:
    await add_plan(app.services)
    response = await app.client.post(
        "/v1/calls",
        data='{"account": "1001", "destination": "4420"}',
        headers={"Content-Type": "text/plain"},
    )
    assert response.status == 415
    error = (await response.json())["error"]
    assert (error["reason"], error["field"]) == ("unsupported_media_type", "Content-Type")


async def test_answers_match_their_documented_schemas(app: RunningApp) -> None:
    document = await document_of(app)
    await add_plan(app.services)
    status, created = await app.post(
        "/v1/accounts", {"id": "1001", "plan": "retail", "balance": "1.00"}
    )
    assert status == 201, created
    status, grant = await app.post(
        "/v1/calls", {"account": "1001", "destination": "447700900123", "call_id": "c-1"}
    )
    assert status == 201, grant
    status, stopped = await app.post("/v1/calls/c-1/stop", {"duration": 45})
    assert status == 200, stopped
    paths = document["paths"]
    answers = [
        (paths["/v1/accounts"]["post"]["responses"]["201"], created),
        (paths["/v1/calls"]["post"]["responses"]["201"], grant),
        (paths["/v1/calls/{call_id}/stop"]["post"]["responses"]["200"], stopped),
    ]
    for documented, answer in answers:
        schema = documented["content"]["application/json"]["schema"]
        validator(document, schema).validate(answer)
    assert stopped["cost"] == "0.198000"


async def test_pin_queries_take_the_pin_in_the_body_and_the_url_forms_are_deprecated(
    app: RunningApp,
) -> None:
    # A PIN in the URL is in every proxy's access log: the body forms are the ones to use.
    document = await document_of(app)
    paths, schemas = document["paths"], document["components"]["schemas"]
    for path, replacement in (
        ("/v1/pins/{pin}", "/v1/pins/lookup"),
        ("/v1/pins/{pin}/time", "/v1/pins/time"),
    ):
        old, new = paths[path]["get"], paths[replacement]["post"]
        assert old["deprecated"] is True and "deprecated" not in new
        assert f"POST {replacement}" in old["description"]
        assert old["x-ocs-role"] == new["x-ocs-role"] == "switch"
        body = new["requestBody"]
        assert body["required"] is True
        fields = schemas[body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
        assert "pin" in fields["required"]
        # Every query parameter of the URL form is a field of the body form.
        assert {p["name"] for p in old["parameters"] if p["in"] == "query"} < set(
            fields["properties"]
        )
        assert {"403", "404"} <= set(new["responses"])
        assert old["responses"]["200"]["content"] == new["responses"]["200"]["content"]
