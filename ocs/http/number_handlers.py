"""The number-handling endpoints: a plan's access numbers, the on-net ranges, the
area-code tables (the standard one and plans' custom code lists), and what the
serving catalog makes of a number.

A thin adapter over ``ocs.catalog.number_plan`` and ``ocs.catalog.store``: each
endpoint's parameters and answer are declared below (``ENDPOINTS``).
"""

import asyncio
import csv
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ocs.catalog import number_plan
from ocs.catalog import store as catalog_store
from ocs.catalog.store import validate_plan_id
from ocs.charging.lifecycle import tariff_of
from ocs.decks.code_lists import STANDARD, parse_code_list
from ocs.errors import OcsError, Reason, invalid
from ocs.http.context import services_of
from ocs.http.endpoint import (
    Answer,
    Digits,
    Direction,
    Endpoint,
    ObjectId,
    Params,
    Role,
    amount_text,
)
from ocs.http.json_io import read_text


class SetAccessNumbers(Params):
    """A plan's access numbers (DNIS), each with the plan that rates calls through it."""

    numbers: Annotated[
        dict[str, ObjectId],
        msgspec.Meta(
            max_length=number_plan.MAX_ACCESS_NUMBERS,
            description="{number: rating plan}: each number 1 to 32 digits, an optional +;"
            " each plan an existing plan's id",
            examples=[{"+18005550100": "tollfree"}],
        ),
    ]


class AccessNumbersSaved(Answer):
    """A plan's access numbers as stored (the numbers without their +)."""

    plan: str
    numbers: dict[str, str]


async def set_access_numbers(request: web.Request, params: SetAccessNumbers) -> AccessNumbersSaved:
    """PUT a plan's access numbers: each number's calls are rated by the plan it names."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    # The keys' form is checked here, where a bad one is named (numbers.44x).
    numbers = number_plan.validate_access_numbers(params.numbers)
    await number_plan.set_access_numbers(services_of(request).pool, plan_id, numbers)
    return AccessNumbersSaved(plan=plan_id, numbers=numbers)


class SetOnNet(Params):
    """The operator's own ranges: destinations in them rate in zone On-net."""

    prefixes: Annotated[
        list[Digits],
        msgspec.Meta(
            max_length=number_plan.MAX_ONNET_PREFIXES,
            description="the on-net prefixes; they replace the ones before",
            examples=[["4477009", "+44207946"]],
        ),
    ]


class OnNetSaved(Answer):
    """How many distinct on-net prefixes are stored."""

    prefixes: int


async def set_onnet(request: web.Request, params: SetOnNet) -> OnNetSaved:
    """PUT the on-net prefixes: calls to them count as on-net."""
    prefixes = number_plan.validate_onnet(params.prefixes)
    await number_plan.set_onnet_prefixes(services_of(request).pool, prefixes)
    return OnNetSaved(prefixes=len(prefixes))


class CodeListImported(Answer):
    """How many prefixes a list names; ``plan`` null: the standard table."""

    plan: str | None
    codes: int


class CodeListRemoved(Answer):
    """A list dropped; ``plan`` null: the standard table."""

    plan: str | None
    removed: bool


async def import_code_list(request: web.Request, list_id: str) -> CodeListImported:
    """Replace the standard area-code table (``STANDARD``) or a plan's custom code list
    with the CSV body."""
    text = await read_text(request, "codes")
    try:
        entries = await asyncio.to_thread(parse_code_list, text)
    except csv.Error as exc:
        # What the parser itself does not word (a CR inside a field): still the
        # caller's CSV, a 400, never a 500.
        raise invalid("codes", f"not valid CSV: {exc}") from None
    count = await catalog_store.import_code_list(services_of(request).pool, entries, list_id)
    return CodeListImported(plan=list_id or None, codes=count)


async def remove_code_list(request: web.Request, list_id: str) -> CodeListRemoved:
    """Drop the standard table (``STANDARD``) or a plan's custom code list; 404 when
    there is none."""
    if not await catalog_store.remove_code_list(services_of(request).pool, list_id):
        what = f"plan {list_id!r} has no custom code list" if list_id else "no standard table"
        raise OcsError(Reason.NOT_FOUND, what)
    return CodeListRemoved(plan=list_id or None, removed=True)


async def import_area_codes(request: web.Request, params: None) -> CodeListImported:
    """PUT /v1/area-codes: replace the standard area-code table (CSV body)."""
    return await import_code_list(request, STANDARD)


async def remove_area_codes(request: web.Request, params: None) -> CodeListRemoved:
    """DELETE /v1/area-codes: drop the standard area-code table."""
    return await remove_code_list(request, STANDARD)


async def import_plan_code_list(request: web.Request, params: None) -> CodeListImported:
    """PUT /v1/plans/{plan_id}/area-codes: replace a plan's custom code list (CSV body)."""
    return await import_code_list(
        request, validate_plan_id(request.match_info["plan_id"], "plan_id")
    )


async def remove_plan_code_list(request: web.Request, params: None) -> CodeListRemoved:
    """DELETE /v1/plans/{plan_id}/area-codes: the plan goes back to the standard table."""
    return await remove_code_list(
        request, validate_plan_id(request.match_info["plan_id"], "plan_id")
    )


class LookUpNumber(Params):
    """A number to rate as authorize would (the query string)."""

    number: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=64,
            description="the number to rate, as a switch would send it (translated first)",
            examples=["447700900123"],
        ),
    ]
    direction: Annotated[Direction, msgspec.Meta(description="outbound (default) or inbound")] = (
        "outbound"
    )
    # A query parameter is never null: empty (or left out) is no access number.
    access_number: Annotated[
        str,
        msgspec.Meta(
            max_length=33,
            description="the access number (DNIS) called: its plan rates the call",
            examples=["18005550100"],
        ),
    ] = ""


class NumberRated(Answer):
    """How a plan rates a number: the matched prefix, zone and rate, and the area-code
    name of the number (null: no table names it)."""

    plan: str
    number: str
    rating_plan: str
    prefix: str
    zone: str
    connect_fee: str
    first_block: int
    increment: int
    price_per_minute: str
    destination_name: str | None


async def lookup_number(request: web.Request, params: LookUpNumber) -> NumberRated:
    """How a plan rates a number, from the serving snapshot, as authorize would find
    it (translation, access number, on-net, longest prefix), and its area-code name:
    the operator's "which zone is this?" without reading a deck."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    access_number = params.access_number.lstrip("+") or None
    snapshot = services_of(request).catalog.snapshot
    plan = snapshot.plan(plan_id)
    if plan is None:
        raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan")
    digits, rating_plan, prefix, tariff = tariff_of(
        snapshot, plan_id, plan.translation.apply(params.number), access_number, params.direction
    )
    rate = tariff.rate
    return NumberRated(
        plan=plan_id,
        number=digits,
        rating_plan=rating_plan,
        prefix=prefix,
        zone=tariff.zone,
        connect_fee=amount_text(rate.connect_fee),
        first_block=rate.first_block,
        increment=rate.increment,
        price_per_minute=amount_text(rate.price_per_minute),
        destination_name=snapshot.destination_name(plan_id, digits),
    )


_CSV_CODES = "CSV body: prefix,name (other columns are ignored)"

ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/access-numbers",
        Role.ADMIN,
        "Replace a plan's access numbers (DNIS): calls through each are rated by its plan",
        set_access_numbers,
        SetAccessNumbers,
        AccessNumbersSaved,
        body_required=True,
        answer_description="the numbers",
    ),
    Endpoint(
        "PUT",
        "/v1/on-net",
        Role.ADMIN,
        "Replace the operator's own ranges: destinations in them rate in zone On-net",
        set_onnet,
        SetOnNet,
        OnNetSaved,
        body_required=True,
        answer_description="how many prefixes",
    ),
    Endpoint(
        "GET",
        "/v1/plans/{plan_id}/lookup",
        Role.VIEWER,
        "How the plan rates a number: the matched prefix, zone and rate, and the"
        " area-code name, from the serving catalog",
        lookup_number,
        LookUpNumber,
        NumberRated,
        errors=(403,),
        description="403 destination_not_allowed: the plan has no tariff for the number.",
        answer_description="the match",
    ),
    Endpoint(
        "PUT",
        "/v1/area-codes",
        Role.ADMIN,
        "Replace the standard area-code table: destination names for CDRs and IVRs, never rates",
        import_area_codes,
        None,
        CodeListImported,
        body="csv",
        description=f"{_CSV_CODES}. All or nothing: a list with a bad line changes nothing.",
        answer_description="how many prefixes it names",
    ),
    Endpoint(
        "DELETE",
        "/v1/area-codes",
        Role.ADMIN,
        "Drop the standard area-code table",
        remove_area_codes,
        None,
        CodeListRemoved,
        errors=(404,),
        answer_description="removed",
    ),
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/area-codes",
        Role.ADMIN,
        "Replace a plan's custom code list: it replaces the standard area-code table for"
        " the plan whole",
        import_plan_code_list,
        None,
        CodeListImported,
        body="csv",
        description=f"{_CSV_CODES}. All or nothing: a list with a bad line changes nothing.",
        answer_description="how many prefixes it names",
    ),
    Endpoint(
        "DELETE",
        "/v1/plans/{plan_id}/area-codes",
        Role.ADMIN,
        "Drop a plan's custom code list: the plan goes back to the standard table",
        remove_plan_code_list,
        None,
        CodeListRemoved,
        errors=(404,),
        answer_description="removed",
    ),
)
