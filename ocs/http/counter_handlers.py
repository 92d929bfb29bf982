"""The usage counters' endpoints: a plan's counters (free or discounted seconds per
cycle), an account's counters, buying and cancelling optional ones, and a new cycle.

A thin adapter over ``ocs.counters``: each endpoint declares what it takes and
answers (``ENDPOINTS``); every decision is the counter service's, and the cycle a
reset opens when it names none is the plan's billing period's
(``ocs.billing.counter_cycles``).
"""

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ocs.balances.accounts import validate_account_id
from ocs.billing import counter_cycles
from ocs.catalog.store import validate_plan_id
from ocs.counters.service import MAX_SECONDS
from ocs.http.context import services_of
from ocs.http.endpoint import (
    ZERO_AMOUNT,
    AccountId,
    Amount,
    Answer,
    Endpoint,
    Params,
    Role,
    amount_text,
)
from ocs.rating.counter_rules import CounterDef

CounterId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        description="a counter's id: printable ASCII, without ':' or ','",
        examples=["de-600"],
    ),
]
ZoneName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["Germany"])]


class DefineCounter(Params):
    """A usage counter of a plan: ``seconds`` free (or at the counter's own price) per
    cycle, for calls to its zones. Defining an existing id redefines it."""

    id: CounterId
    seconds: Annotated[
        int, msgspec.Meta(ge=1, le=MAX_SECONDS, description="seconds the counter holds a cycle")
    ]
    zones: Annotated[
        list[ZoneName], msgspec.Meta(min_length=1, description="the zones whose calls it covers")
    ]
    price_per_minute: Annotated[
        Amount, msgspec.Meta(description="the counter's own price; 0: free seconds")
    ] = ZERO_AMOUNT
    increment: Annotated[
        int, msgspec.Meta(ge=1, le=3600, description="seconds the counter's price counts by")
    ] = 1
    reject_on_threshold: Annotated[
        bool, msgspec.Meta(description="once used up, its calls are refused, not charged")
    ] = False
    carryover: Annotated[
        bool, msgspec.Meta(description="unused seconds move on to the next cycle")
    ] = False
    mandatory: Annotated[
        bool, msgspec.Meta(description="every account of the plan has it; else bought")
    ] = True
    recurring_fee: Annotated[Amount, msgspec.Meta(description="charged each cycle")] = ZERO_AMOUNT
    active: bool = True
    taxes_follow_counter: bool = False


class CounterView(Answer):
    """A usage counter's definition."""

    id: str
    plan: str
    seconds: int
    zones: list[str]
    price_per_minute: str
    increment: int
    reject_on_threshold: bool
    carryover: bool
    mandatory: bool
    recurring_fee: str
    active: bool
    taxes_follow_counter: bool


def counter_view(counter: CounterDef) -> CounterView:
    """A usage counter's definition as the API shows it (zones sorted)."""
    return CounterView(
        id=counter.id,
        plan=counter.plan_id,
        seconds=counter.seconds,
        zones=sorted(counter.zones),
        price_per_minute=amount_text(counter.price_per_minute),
        increment=counter.increment,
        reject_on_threshold=counter.reject_on_threshold,
        carryover=counter.carryover,
        mandatory=counter.mandatory,
        recurring_fee=amount_text(counter.recurring_fee),
        active=counter.active,
        taxes_follow_counter=counter.taxes_follow_counter,
    )


async def define_counter(request: web.Request, params: DefineCounter) -> CounterView:
    """POST /v1/plans/{id}/counters: define a usage counter of a plan."""
    plan_id = validate_plan_id(request.match_info["plan_id"], "plan_id")
    counter = await services_of(request).counters.create(
        CounterDef(
            id=params.id,
            plan_id=plan_id,
            seconds=params.seconds,
            zones=frozenset(params.zones),
            # Plain ints: the Redis client packs exact ints only, not Amount.
            price_per_minute=int(params.price_per_minute),
            increment=params.increment,
            reject_on_threshold=params.reject_on_threshold,
            carryover=params.carryover,
            mandatory=params.mandatory,
            recurring_fee=int(params.recurring_fee),
            active=params.active,
            taxes_follow_counter=params.taxes_follow_counter,
        )
    )
    return counter_view(counter)


class CounterCycle(Answer):
    """One counter of an account in this cycle, in seconds."""

    counter: str
    limit: int
    used: int
    held: Annotated[int, msgspec.Meta(description="held by live calls")]
    left: int


class AccountCounters(Answer):
    """An account's counters in this cycle, by id."""

    account: str
    counters: list[CounterCycle]


async def account_counters(request: web.Request, params: None) -> AccountCounters:
    """GET /v1/accounts/{id}/counters: the account's counters in this cycle."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    state = await services_of(request).counters.state(account_id)
    return AccountCounters(
        account=account_id,
        counters=[
            CounterCycle(
                counter=counter_id,
                limit=cycle["limit"],
                used=cycle["used"],
                held=cycle["held"],
                left=max(cycle["limit"] - cycle["used"] - cycle["held"], 0),
            )
            for counter_id, cycle in sorted(state.items())
        ],
    )


class BuyCounter(Params):
    """An optional counter of the account's plan to buy."""

    counter: CounterId


class CounterBought(CounterView):
    """A counter an account bought: its first cycle starts now (its fee paid)."""

    account: str


async def buy_counter(request: web.Request, params: BuyCounter) -> CounterBought:
    """POST /v1/accounts/{id}/counters: buy an optional counter."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    counter = await services_of(request).counters.buy(account_id, params.counter)
    view = counter_view(counter)
    return CounterBought(account=account_id, **msgspec.structs.asdict(view))


class CounterCancelled(Answer):
    """A counter an account gave up: it stops applying at once."""

    account: str
    counter: str
    cancelled: bool


async def cancel_counter(request: web.Request, params: None) -> CounterCancelled:
    """DELETE /v1/accounts/{id}/counters/{counter}: cancel a counter."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    counter_id = request.match_info["counter_id"]
    await services_of(request).counters.cancel(account_id, counter_id)
    return CounterCancelled(account=account_id, counter=counter_id, cancelled=True)


class ResetCounters(Params):
    """Which accounts start a new counter cycle: all (``{}``), a plan's, or one."""

    plan: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="its accounts only")]
        | None
    ) = None
    account: Annotated[AccountId, msgspec.Meta(description="this account only")] | None = None
    cycle: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=64,
                description="the cycle's label: its fees are charged once per label"
                " (default: each plan's billing period holding now, in the plan's time"
                " zone, the cycle the billing worker opens)",
                examples=["2027-01"],
            ),
        ]
        | None
    ) = None


class CountersReset(Answer):
    """What a new cycle did: accounts and counters reset, recurring fees charged, and the
    cycle label each plan's accounts were reset to."""

    accounts: int
    counters: int
    fees: int
    cycles: dict[str, str]


async def reset_counters(request: web.Request, params: ResetCounters) -> CountersReset:
    """Start a new counter cycle; the body is required, as the schema says: an empty
    request resetting every account's counters would be too easy to send by mistake,
    so all accounts take an explicit ``{}``."""
    services = services_of(request)
    report = await counter_cycles.reset_counters(
        services.pool,
        services.counters,
        params.plan,
        params.account,
        params.cycle,
        datetime.now(UTC),
    )
    return CountersReset(
        accounts=report.accounts, counters=report.counters, fees=report.fees, cycles=report.cycles
    )


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/counters",
        Role.VIEWER,
        "An account's usage counters in this cycle",
        account_counters,
        None,
        AccountCounters,
    ),
    Endpoint(
        "POST",
        "/v1/accounts/{account_id}/counters",
        Role.OPERATOR,
        "Buy an optional counter of the account's plan (its fee pays the first cycle)",
        buy_counter,
        BuyCounter,
        CounterBought,
        status=201,
        body_required=True,
        errors=(402,),
        description="402: the account cannot pay the counter's recurring fee.",
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/counters/{counter_id}",
        Role.OPERATOR,
        "Cancel a bought counter: it stops applying at once",
        cancel_counter,
        None,
        CounterCancelled,
    ),
    Endpoint(
        "POST",
        "/v1/counters/reset",
        Role.ADMIN,
        "Start a new counter cycle: every account's ({}), a plan's or one account's",
        reset_counters,
        ResetCounters,
        CountersReset,
        body_required=True,
        description="The body is required: an empty request resetting every account's"
        " counters would be too easy to send by mistake. Unused seconds move on where a"
        " counter carries over; recurring fees are charged once per cycle label. Without a"
        " cycle, each plan's accounts start the cycle of the plan's billing period holding"
        " now (in its time zone), which the billing worker opens by itself.",
    ),
    Endpoint(
        "POST",
        "/v1/plans/{plan_id}/counters",
        Role.ADMIN,
        "Define (or redefine) a usage counter of a plan",
        define_counter,
        DefineCounter,
        CounterView,
        status=201,
        body_required=True,
        errors=(409,),
        description="Serving processes reload it. 409: the id is a counter of another plan.",
    ),
)
