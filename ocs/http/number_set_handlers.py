"""The number sets' endpoints: create and list sets, import their numbers (CSV), assign
them to plans with a priority, and the numbers an account takes and gives back.

A thin adapter over ``ocs.billing.number_sets`` (decision 0030): each endpoint's
parameters and answer are declared below (``ENDPOINTS``).
"""

from datetime import date
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ocs.balances.accounts import validate_account_id
from ocs.billing import number_sets
from ocs.catalog.store import validate_plan_id
from ocs.http.context import caller_may, services_of
from ocs.http.endpoint import Answer, Endpoint, ObjectId, Params, Reply, Role
from ocs.http.json_io import read_text

SetId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9_.-]{1,64}(?!\n)$",
        description="1 to 64 letters, digits, '.', '_' or '-'",
        examples=["did-london"],
    ),
]
Number = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\+?[0-9]{1,32}(?!\n)$",
        description="1 to 32 digits, an optional leading +",
        examples=["442079460001"],
    ),
]


class CreateNumberSet(Params):
    """A new, empty number set of DIDs or toll-free numbers."""

    id: SetId
    kind: Literal["did", "toll_free"]
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class SetPlanView(Answer):
    """A plan a set serves, its priority (highest first) and the charge it names."""

    plan: str
    priority: int
    charge: str | None


class NumberSetView(Answer):
    """A number set: its kind, its numbers and how many are free, the plans it serves."""

    id: str
    kind: str
    name: str
    numbers: int
    free: int
    plans: list[SetPlanView]


def set_view(found: number_sets.NumberSet) -> NumberSetView:
    """A number set as the API (and the CLI) shows it."""
    return NumberSetView(
        id=found.id,
        kind=found.kind,
        name=found.name,
        numbers=found.numbers,
        free=found.free,
        plans=[
            SetPlanView(plan=p.plan_id, priority=p.priority, charge=p.charge_id)
            for p in found.plans
        ],
    )


async def create_number_set(request: web.Request, params: CreateNumberSet) -> NumberSetView:
    """POST /v1/number-sets."""
    made = await number_sets.create_set(
        services_of(request).pool, params.id, params.kind, params.name
    )
    return set_view(made)


class NumberSetList(Answer):
    """Every number set, by id."""

    number_sets: list[NumberSetView]


async def list_number_sets(request: web.Request, params: None) -> NumberSetList:
    """GET /v1/number-sets."""
    found = await number_sets.list_sets(services_of(request).pool)
    return NumberSetList(number_sets=[set_view(s) for s in found])


class NumbersImported(Answer):
    """How many numbers an import added to its set."""

    number_set: str
    added: int


async def import_numbers(request: web.Request, params: None) -> NumbersImported:
    """POST /v1/number-sets/{number_set_id}/numbers, the CSV as the body."""
    set_id = number_sets.validate_set_id(request.match_info["number_set_id"], "number_set_id")
    text = await read_text(request, "numbers")
    added = await number_sets.import_numbers(
        services_of(request).pool, set_id, text, on_net_allowed=caller_may(request, "admin")
    )
    return NumbersImported(number_set=set_id, added=added)


class AssignNumberSet(Params):
    """A plan the set serves, and its priority among the plan's sets."""

    priority: Annotated[
        int,
        msgspec.Meta(ge=0, le=number_sets.MAX_PRIORITY, description="higher: drawn from first"),
    ]
    charge: ObjectId | None = msgspec.field(default=None)


async def assign_number_set(request: web.Request, params: AssignNumberSet) -> SetPlanView:
    """PUT /v1/number-sets/{number_set_id}/plans/{plan_id}."""
    set_id = number_sets.validate_set_id(request.match_info["number_set_id"], "number_set_id")
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    done = await number_sets.assign_to_plan(
        services_of(request).pool, set_id, plan_id, params.priority, params.charge
    )
    return SetPlanView(plan=done.plan_id, priority=done.priority, charge=done.charge_id)


class TakeNumber(Params):
    """The number to take (left out: the next free one of the plan's sets), from a day,
    once per ``take_id``."""

    number: Number | None = None
    on: (
        Annotated[
            date,
            msgspec.Meta(
                description="from this day (default: today where the plan bills); not after"
                " today, not before the account's first day nor the day its previous holder"
                " gave it back (charged or free of charge)"
            ),
        ]
        | None
    ) = None
    take_id: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=128,
                description="printable; a repeat of a take with this id (the answer lost)"
                " answers 200 with the number it took, taking no other",
            ),
        ]
        | None
    ) = None


class AccountNumberView(Answer):
    """A number an account holds: its set, kind, since when, and the charge it triggers."""

    account: str
    number: str
    number_set: str
    kind: str
    on_net: bool
    assigned_on: date
    charge: str | None


class TakenNumberView(AccountNumberView):
    """A take's answer: the number, and whether the take repeated one that stood."""

    repeated: bool


def number_view(taken: number_sets.TakenNumber) -> AccountNumberView:
    """An account's number as the API (and the CLI) shows it."""
    return AccountNumberView(
        account=taken.account_id,
        number=taken.number,
        number_set=taken.number_set_id,
        kind=taken.kind,
        on_net=taken.on_net,
        assigned_on=taken.assigned_on,
        charge=taken.charge_id,
    )


def taken_view(taken: number_sets.TakenNumber) -> TakenNumberView:
    """A take's answer as the API (and the CLI) shows it."""
    shown = number_view(taken)
    return TakenNumberView(**msgspec.structs.asdict(shown), repeated=taken.repeated)


async def take_number(request: web.Request, params: TakeNumber) -> Reply[TakenNumberView]:
    """POST /v1/accounts/{account_id}/numbers: 201, or 200 for a repeat of a take that
    stood (``number_sets.take_number``)."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    services = services_of(request)
    taken = await number_sets.take_number(
        services.pool, services.store, account_id, params.number, params.on, params.take_id
    )
    return Reply(taken_view(taken), 200 if taken.repeated else 201)


class AccountNumberList(Answer):
    """The numbers an account holds."""

    numbers: list[AccountNumberView]


async def account_numbers(request: web.Request, params: None) -> AccountNumberList:
    """GET /v1/accounts/{account_id}/numbers."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    found = await number_sets.numbers_of(services_of(request).pool, account_id)
    return AccountNumberList(numbers=[number_view(t) for t in found])


class ReleaseNumber(Params):
    """The first day without the number (the query string; default today where the plan
    bills; not after today, nor before the day it was taken)."""

    on: (
        Annotated[
            date,
            msgspec.Meta(
                description="its first day without the number (default: today where the plan"
                " bills); not after today (the number is freed at once), nor before the day"
                " it was taken"
            ),
        ]
        | None
    ) = None


class NumberReleased(Answer):
    """A number an account gave back."""

    account: str
    number: str


async def release_number(request: web.Request, params: ReleaseNumber) -> NumberReleased:
    """DELETE /v1/accounts/{account_id}/numbers/{number}."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    number = number_sets.validate_number(request.match_info["number"], "number")
    services = services_of(request)
    await number_sets.release(services.pool, services.store, account_id, number, params.on)
    return NumberReleased(account=account_id, number=number)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/number-sets",
        Role.OPERATOR,
        "Create a number set: a pool of DIDs or toll-free numbers",
        create_number_set,
        CreateNumberSet,
        NumberSetView,
        status=201,
        body_required=True,
    ),
    Endpoint(
        "GET",
        "/v1/number-sets",
        Role.VIEWER,
        "Every number set: its numbers, how many are free, the plans it serves",
        list_number_sets,
        None,
        NumberSetList,
    ),
    Endpoint(
        "POST",
        "/v1/number-sets/{number_set_id}/numbers",
        Role.OPERATOR,
        "Add numbers to a set (CSV body: number[,on_net])",
        import_numbers,
        None,
        NumbersImported,
        body="csv",
        errors=(404,),
        description="All or nothing: a file with a bad line (or a number in a set already)"
        " adds nothing, and the 400 lists the bad lines (``problems``). An on-net number"
        " (on_net true) rates in every plan's On-net zone, that number exactly (not the"
        " longer numbers starting with it); as for PUT /v1/on-net, only an admin may import"
        " one: an operator's file with one is refused whole, 403 naming on_net.",
    ),
    Endpoint(
        "PUT",
        "/v1/number-sets/{number_set_id}/plans/{plan_id}",
        Role.OPERATOR,
        "Let a plan's accounts take the set's numbers, with a priority among its sets",
        assign_number_set,
        AssignNumberSet,
        SetPlanView,
        body_required=True,
        errors=(404,),
        description="charge: the triggered charge its numbers trigger; left out, the plan's"
        " 'Number Recurring Charge' (did) or 'Toll-Free Number Recurring Charge' (toll_free).",
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/numbers",
        Role.OPERATOR,
        "Give an account a number: the next free one of its plan's sets, or the one named",
        take_number,
        TakeNumber,
        TakenNumberView,
        status=201,
        errors=(404, 409),
        answer_description="taken (200: a repeat, the number the account holds already)",
        description="404 when the plan's sets have no free number left; 409 for a number"
        " another account holds. The number triggers its charge and identifies the account"
        " for inbound calls, from `on`: not after today where the plan bills, nor before the"
        " account's first day or the day its previous holder gave it back, charged or free"
        " of charge (400 naming on). A repeat is answered 200 with the assignment that stands"
        " (repeated true), nothing taken or charged again: a named number the account holds"
        " already (from the same day when on is given), or a take_id an earlier take of the"
        " account carried. A take of the next free number without take_id takes another"
        " each time. 503 outcome_unknown: the take's COMMIT was sent, its answer lost, and"
        " PostgreSQL could not be read back; it may stand: retry with the same take_id (or"
        " read the account's numbers first).",
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/numbers",
        Role.VIEWER,
        "The numbers an account holds",
        account_numbers,
        None,
        AccountNumberList,
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/numbers/{number}",
        Role.OPERATOR,
        "An account gives a number back: its charge stops (prorated) and it is free again",
        release_number,
        ReleaseNumber,
        NumberReleased,
        errors=(404,),
        description="The number is free at once, so `on` may not be after today where the"
        " plan bills (400 naming on): a later day would leave its charge running to that day"
        " while another account takes and pays for it. 503 outcome_unknown: the release's"
        " COMMIT was sent, its answer lost,"
        " and PostgreSQL could not be read back; it may stand (a retry then answers 404).",
    ),
)
