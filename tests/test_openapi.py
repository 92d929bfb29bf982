"""/openapi.json documents exactly the routes the app serves, with every path
parameter declared and every error answer (400 included) described."""

import re

from tests.conftest import RunningApp


async def test_every_route_is_documented_and_nothing_else(app: RunningApp) -> None:
    status, document = await app.get("/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.1")
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


async def test_every_path_parameter_is_declared_and_its_400_documented(app: RunningApp) -> None:
    status, document = await app.get("/openapi.json")
    assert status == 200, document
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


async def test_the_new_fields_of_the_field_trials_are_documented(app: RunningApp) -> None:
    status, document = await app.get("/openapi.json")
    assert status == 200, document
    paths = document["paths"]
    policy = paths["/v1/plans/{plan_id}/policy"]["put"]["requestBody"]
    fields = policy["content"]["application/json"]["schema"]["properties"]
    assert fields["reservation_policy"]["enum"] == ["whole", "slice", "share"]
    assert fields["slice_seconds"]["type"] == "integer"
    assert paths["/v1/calls/{call_id}/start"]["post"]["requestBody"]["required"] is False
    stop = paths["/v1/calls/{call_id}/stop"]["post"]
    assert stop["requestBody"]["required"] is False
    duration = stop["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert duration["duration"]["type"] == "number"
    answer = stop["responses"]["2XX"]["content"]["application/json"]["schema"]["properties"]
    assert {"duration_differs", "charged_duration"} <= set(answer)
    reset = paths["/v1/counters/reset"]["post"]["requestBody"]
    assert reset["required"] is True
    assert set(paths["/readyz"]["get"]["responses"]) >= {"2XX", "503"}
