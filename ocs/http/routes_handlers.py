"""The routing endpoints: carriers, their cost decks (CSV), route sets and a plan's routing.

A thin adapter over ``ocs.catalog.routes_store``: each endpoint's parameters and
answer are declared below (``ENDPOINTS``); the store checks what the types cannot
(a carrier that exists, a carrier given twice) and writes.
"""

import asyncio
import csv
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ocs.catalog import routes_store
from ocs.catalog import store as catalog_store
from ocs.decks import cost_deck
from ocs.errors import invalid
from ocs.http.context import services_of
from ocs.http.endpoint import Answer, Endpoint, ObjectId, Params, Reply, Role
from ocs.http.json_io import read_text

CarrierName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=routes_store.MAX_NAME_CHARS,
        description="the carrier's name (printable); its id when left out",
        examples=["Carrier A"],
    ),
]


# Taken as a plan's currency is: any case, stored upper-cased.
CarrierCurrency = Annotated[
    str,
    msgspec.Meta(
        pattern="^[A-Za-z]{3}(?!\n)$",
        description="ISO 4217 code its cost deck is priced in (stored upper-cased): needed"
        " for a new carrier; an existing one keeps its own (one of unknown currency may be"
        " given it once)",
        examples=["EUR"],
    ),
]


class CreateCarrier(Params):
    """A carrier to create, or to rename when its id exists."""

    id: ObjectId
    name: CarrierName | None = None
    currency: CarrierCurrency | None = None


class CarrierSaved(Answer):
    """A carrier as stored; ``currency`` null: not known (no plan is offered it)."""

    id: str
    name: str
    currency: str | None


async def create_carrier(request: web.Request, params: CreateCarrier) -> Reply[CarrierSaved]:
    """POST /v1/carriers: 201 for a new carrier, 200 renaming an existing one (or giving
    one of unknown currency its currency)."""
    carrier_id = routes_store.validate_id(params.id, "id")
    carrier, created = await routes_store.create_carrier(
        services_of(request).pool, carrier_id, params.name or carrier_id, params.currency
    )
    return Reply(
        CarrierSaved(id=carrier.id, name=carrier.name, currency=carrier.currency),
        201 if created else 200,
    )


class CarrierRatesImported(Answer):
    """What a cost deck import stored: its prefixes, and how many distinct rates they use."""

    carrier: str
    prefixes: int
    rates: int


async def import_carrier_rates(request: web.Request, params: None) -> CarrierRatesImported:
    """PUT /v1/carriers/{carrier_id}/rates, the cost deck CSV as the body."""
    carrier_id = routes_store.validate_id(request.match_info["carrier_id"], "carrier_id")
    text = await read_text(request, "deck")
    try:
        # A large deck is seconds of CPU: off the event loop.
        deck = await asyncio.to_thread(cost_deck.parse_carrier_deck, text)
    except csv.Error as exc:
        # What the parser itself does not word (a CR inside a field): still the
        # caller's CSV, a 400, never a 500.
        raise invalid("deck", f"not valid CSV: {exc}") from None
    result = await routes_store.import_carrier_rates(services_of(request).pool, carrier_id, deck)
    return CarrierRatesImported(
        carrier=result.carrier_id, prefixes=result.prefixes, rates=result.rates
    )


class SetRouteSet(Params):
    """A route set's carriers, in the order to try them."""

    carriers: Annotated[
        list[ObjectId],
        msgspec.Meta(
            max_length=routes_store.MAX_ROUTE_SET_CARRIERS,
            description="carrier ids, each once, in the order to try them",
            examples=[["A", "B"]],
        ),
    ]


class RouteSetSaved(Answer):
    """A route set as stored."""

    id: str
    carriers: list[str]


async def set_route_set(request: web.Request, params: SetRouteSet) -> RouteSetSaved:
    """PUT /v1/route-sets/{route_set_id}: creates or replaces it."""
    route_set_id = routes_store.validate_id(request.match_info["route_set_id"], "route_set_id")
    # The store refuses a carrier given twice or unknown, naming its place (carriers[1]).
    stored = await routes_store.set_route_set(
        services_of(request).pool, route_set_id, params.carriers
    )
    return RouteSetSaved(id=route_set_id, carriers=list(stored))


class SetPlanRouting(Params):
    """A plan's route set and negative-margin policy."""

    route_set: (
        Annotated[
            ObjectId,
            msgspec.Meta(
                description="the route set; null (or left out): the plan is not routed",
                examples=["rs"],
            ),
        ]
        | None
    ) = None
    allow_negative_margin: (
        Annotated[
            bool,
            msgspec.Meta(
                description="offer carriers costing more than the price when none costs"
                " less (null or left out: false)"
            ),
        ]
        | None
    ) = None


class PlanRoutingSaved(Answer):
    """A plan's routing as stored."""

    plan: str
    route_set: str | None
    allow_negative_margin: bool


async def set_plan_routing(request: web.Request, params: SetPlanRouting) -> PlanRoutingSaved:
    """PUT /v1/plans/{plan_id}/routing: ``route_set`` null (or absent) takes the plan off
    routing; ``allow_negative_margin`` defaults to false."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    route_set = params.route_set
    if route_set is not None:
        route_set = routes_store.validate_id(route_set, "route_set")
    allow = bool(params.allow_negative_margin)
    await routes_store.set_plan_routing(services_of(request).pool, plan_id, route_set, allow)
    return PlanRoutingSaved(plan=plan_id, route_set=route_set, allow_negative_margin=allow)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/routing",
        Role.ADMIN,
        "Set a plan's route set and negative-margin policy (route_set null: no routing)",
        set_plan_routing,
        SetPlanRouting,
        PlanRoutingSaved,
        answer_description="the plan's routing",
    ),
    Endpoint(
        "POST",
        "/v1/carriers",
        Role.ADMIN,
        "Create a carrier priced in a currency (or rename an existing one: 200)",
        create_carrier,
        CreateCarrier,
        CarrierSaved,
        status=201,
        body_required=True,
        answer_description="the carrier (200: an existing one renamed)",
    ),
    Endpoint(
        "PUT",
        "/v1/carriers/{carrier_id}/rates",
        Role.ADMIN,
        "Replace a carrier's cost deck (CSV body: prefix,connect_fee,first_block,"
        "increment,price_per_minute)",
        import_carrier_rates,
        None,
        CarrierRatesImported,
        body="csv",
        description="All or nothing: a deck with a bad line changes nothing, and the 400"
        " lists the bad lines (``problems``).",
        answer_description="its prefixes and distinct rates",
    ),
    Endpoint(
        "PUT",
        "/v1/route-sets/{route_set_id}",
        Role.ADMIN,
        "Create or replace a route set: its carriers in the order to try them",
        set_route_set,
        SetRouteSet,
        RouteSetSaved,
        body_required=True,
        answer_description="the route set",
    ),
)
