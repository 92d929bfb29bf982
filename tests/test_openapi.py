"""/openapi.json documents exactly the routes the app serves."""

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
