"""The plans' endpoints: create and list plans, import a plan's tariff deck (CSV), and set
a tariff's shape, a plan's number translation rules and its time bands.

A thin adapter over the catalog store (``ocs.catalog.store``): decode the request,
store what it asks, answer what was stored. The rules a value must follow beyond
its form (a usable regular expression, a time zone, tiers that make a valid rate)
are the rating modules' own, checked by their validators.
"""

import asyncio
import json
from datetime import date
from typing import Annotated, Any, Literal, get_args

import msgspec
from aiohttp import web

from ocs.catalog import store as catalog_store
from ocs.catalog.snapshot import Plan
from ocs.decks.peers import PEER_FORMATS, read_peer_deck
from ocs.decks.rate_deck import Deck, parse_deck
from ocs.errors import invalid
from ocs.http.context import services_of
from ocs.http.endpoint import Amount, Answer, Endpoint, ObjectId, Params, Role, amount_text
from ocs.limits import MAX_CALL_DURATION, MAX_LINES
from ocs.rating.bands import validate_schedule
from ocs.rating.rates import Tier
from ocs.rating.translation import MAX_PATTERN, MAX_RULES, validate_rules
from ocs.views import DeckImportView, PlanView, deck_import_view, plan_view

MAX_TIERS = 32
MAX_BAND_PRICES = 16
MAX_BAND_RULES = 64
MAX_HOLIDAYS = 366

# A currency as the plan endpoint has always taken it: any case, stored upper-cased.
PlanCurrency = Annotated[
    str,
    msgspec.Meta(
        pattern="^[A-Za-z]{3}(?!\n)$",
        description="ISO 4217 code (stored upper-cased)",
        examples=["EUR"],
    ),
]

ReservationPolicy = Literal["whole", "slice", "share"]
if set(get_args(ReservationPolicy)) != set(catalog_store.RESERVATION_POLICIES):  # one list
    raise RuntimeError(f"ReservationPolicy is not {catalog_store.RESERVATION_POLICIES}")


# --- plans -------------------------------------------------------------------------------


class CreatePlan(Params):
    """A new plan: its currency, and the limits its accounts start with."""

    id: ObjectId
    currency: PlanCurrency
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    credit_limit: Amount | None = None
    min_balance: Amount | None = None
    max_lines: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINES)] | None = None
    max_call_duration: (
        Annotated[int, msgspec.Meta(ge=1, le=MAX_CALL_DURATION, description="seconds")] | None
    ) = None
    reservation_policy: ReservationPolicy = "whole"
    slice_seconds: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=catalog_store.SLICE_SECONDS_MAX,
            description="the seconds a slice holds funds for (policy slice)",
        ),
    ] = 60


async def create_plan(request: web.Request, params: CreatePlan) -> PlanView:
    """POST /v1/plans: create a plan (201)."""
    plan_id = catalog_store.validate_plan_id(params.id)
    plan = Plan(
        id=plan_id,
        name=params.name or plan_id,
        currency=catalog_store.validate_currency(params.currency),
        credit_limit=int(params.credit_limit or 0),
        min_balance=int(params.min_balance or 0),
        max_lines=params.max_lines or 1,
        max_call_duration=params.max_call_duration or 14_400,
        reservation_policy=params.reservation_policy,
        slice_seconds=params.slice_seconds,
    )
    await catalog_store.create_plan(services_of(request).pool, plan)
    return plan_view(plan)


class PlanList(Answer):
    """Every plan, by id."""

    plans: list[PlanView]


async def list_plans(request: web.Request, params: None) -> PlanList:
    """GET /v1/plans: every plan."""
    plans = await catalog_store.list_plans(services_of(request).pool)
    return PlanList(plans=[plan_view(plan) for plan in plans])


# What ``POST /v1/plans/{id}/tariffs?format=`` reads: ocs's own deck, or a peer's export.
DECK_FORMATS = ("ocs", *PEER_FORMATS)


class DeckFormat(Params):
    """How a deck sent as the body is written (the query string)."""

    format: Annotated[
        Literal["ocs", "a2billing", "astpp", "magnusbilling"],
        msgspec.Meta(description="ocs's own deck CSV, or another system's rate export"),
    ] = "ocs"


async def import_tariffs(request: web.Request, params: DeckFormat) -> DeckImportView:
    """POST /v1/plans/{id}/tariffs: replace a plan's tariff deck with a CSV, all or nothing."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    deck_format = params.format
    pool = services_of(request).pool
    # Bytes, not text: the parser names each line that is not UTF-8 (the middleware has
    # refused a charset other than UTF-8 already).
    body = await request.read()
    rows: Deck
    if deck_format == "ocs":
        # A million-row deck is most of a second of CPU: off the event loop.
        rows = await asyncio.to_thread(parse_deck, body)
    else:
        # A peer's header may name its currency: it must be the plan's.
        currency = next(
            (p.currency for p in await catalog_store.list_plans(pool) if p.id == plan_id), None
        )
        rows = await asyncio.to_thread(read_peer_deck, deck_format, body, currency=currency)
    result = await catalog_store.import_deck(pool, plan_id, rows)
    return deck_import_view(result)


# --- a tariff's shape ------------------------------------------------------------------


class TariffTier(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A graduated tier: from ``from_second`` of a call on, its own price and increment."""

    # The limits are the handler's (documented here): an error names ``from_second``
    # itself, as the API always has, not its place in the list.
    from_second: Annotated[
        int,
        msgspec.Meta(
            description="the second of the call the tier starts at (1 is the first)",
            extra_json_schema={"minimum": 1, "maximum": MAX_CALL_DURATION},
        ),
    ]
    price_per_minute: Amount | None = None
    increment: Annotated[int, msgspec.Meta(ge=1, le=86_400, description="seconds")] | None = None
    flat: Amount | None = None


# The fields of a rate's shape that a zone's tariff (below) and a rate type's rate
# (mediation_handlers) take alike.
TariffTiers = Annotated[list[TariffTier], msgspec.Meta(max_length=MAX_TIERS)]
MaxCostMode = Annotated[
    Literal["free", "cut"],
    msgspec.Meta(description="past max_cost: free (the rest of the call is free) or cut"),
]
SurchargePercent = Annotated[
    Amount,
    msgspec.Meta(description='a percentage with up to two decimal places, such as "2.5"'),
]


class SetTariffShape(Params):
    """A zone's tiers, max cost, surcharges and band prices (its base rate stays the deck's)."""

    tiers: TariffTiers = msgspec.field(default_factory=list)
    max_cost: Amount | None = None
    max_cost_mode: MaxCostMode | None = None
    surcharge_percent: SurchargePercent | None = None
    surcharge_flat: Amount | None = None
    per: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1, le=1_000_000, description="prices are per this many seconds (or units)"
            ),
        ]
        | None
    ) = None
    band_prices: Annotated[
        dict[str, Amount],
        msgspec.Meta(
            max_length=MAX_BAND_PRICES,
            description="the base price per minute in each time band, by band name",
        ),
    ] = msgspec.field(default_factory=dict)


class TariffTierShown(Answer):
    """A tier as stored."""

    from_second: int
    price_per_minute: str
    increment: int
    flat: str


class TariffShape(Answer):
    """A zone's tariff shape as stored."""

    plan: str
    zone: str
    tiers: list[TariffTierShown]
    max_cost: str | None
    max_cost_mode: str
    surcharge_percent: str
    surcharge_flat: str
    band_prices: dict[str, str]
    per: int


def percent_text(basis_points: int) -> str:
    """Basis points as the percentage the API shows: 250 -> "2.5", 1000 -> "10"."""
    whole, hundredths = divmod(basis_points, 100)
    return f"{whole}.{hundredths:02d}".rstrip("0").rstrip(".")


def surcharge_basis_points(micro: int) -> int:
    """A percentage read as an amount (micro-units of a percent) in basis points;
    400 naming ``surcharge_percent`` past two decimal places."""
    # "2.5" (percent) is 2.5e6 micro-units of a percent, 250 basis points.
    if micro % 10_000:
        raise invalid("surcharge_percent", 'a percentage such as "2.5": at most two decimal places')
    return micro // 10_000


async def set_tariff_shape(request: web.Request, params: SetTariffShape) -> TariffShape:
    """PUT /v1/plans/{id}/tariffs/{zone}/shape: a tariff's tiers, caps and surcharges."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    zone = request.match_info["zone"]
    tiers = []
    for raw in params.tiers:
        if not 1 <= raw.from_second <= MAX_CALL_DURATION:
            raise invalid("from_second", f"expected 1 to {MAX_CALL_DURATION}")
        tiers.append(
            Tier(
                start=raw.from_second,
                price_per_minute=int(raw.price_per_minute or 0),
                increment=raw.increment or 1,
                flat=int(raw.flat or 0),
            )
        )
    mode = params.max_cost_mode or "free"
    # Plain ints from here on, as every amount the catalog holds.
    max_cost = int(params.max_cost or 0)
    percent_bp = surcharge_basis_points(int(params.surcharge_percent or 0))
    surcharge_flat = int(params.surcharge_flat or 0)
    per = params.per or 60
    band_prices = tuple(sorted((band, int(price)) for band, price in params.band_prices.items()))
    await catalog_store.set_tariff_shape(
        services_of(request).pool,
        plan_id,
        zone,
        tuple(tiers),
        max_cost,
        mode == "cut",
        percent_bp,
        surcharge_flat,
        band_prices,
        per,
    )
    return TariffShape(
        plan=plan_id,
        zone=zone,
        tiers=[
            TariffTierShown(
                from_second=t.start,
                price_per_minute=amount_text(t.price_per_minute),
                increment=t.increment,
                flat=amount_text(t.flat),
            )
            for t in tiers
        ],
        max_cost=amount_text(max_cost) if max_cost else None,
        max_cost_mode=mode,
        surcharge_percent=percent_text(percent_bp),
        surcharge_flat=amount_text(surcharge_flat),
        band_prices={band: amount_text(price) for band, price in band_prices},
        per=per,
    )


# --- number translation ----------------------------------------------------------------


class TranslationRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One rule: every match of ``match`` in the number is replaced by ``replace``."""

    match: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_PATTERN,
            description="a regular expression (Python re syntax)",
            examples=["^00"],
        ),
    ]
    replace: Annotated[
        str, msgspec.Meta(description="the replacement (\\1 for a group)", examples=[""])
    ] = ""


# The rules a plan or a NAS client applies, in order, to a dialled number.
TranslationRules = Annotated[list[TranslationRule], msgspec.Meta(max_length=MAX_RULES)]


def rule_dicts(rules: list[TranslationRule]) -> list[dict[str, Any]]:
    """Rules as the rating validator reads them (plain JSON values)."""
    return [{"match": rule.match, "replace": rule.replace} for rule in rules]


class SetTranslation(Params):
    """A plan's number translation rules, replacing the ones it had."""

    rules: TranslationRules


class PlanTranslation(Answer):
    """A plan's number translation rules as stored."""

    plan: str
    rules: list[TranslationRule]


async def set_translation(request: web.Request, params: SetTranslation) -> PlanTranslation:
    """PUT /v1/plans/{id}/translation: a plan's number translation rules."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    rules = validate_rules(rule_dicts(params.rules))
    await catalog_store.set_translation(services_of(request).pool, plan_id, rules)
    return PlanTranslation(
        plan=plan_id,
        rules=[TranslationRule(match=r.match, replace=r.replace) for r in rules.rules],
    )


# --- time bands ------------------------------------------------------------------------

LocalTime = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^([01][0-9]|2[0-4]):[0-5][0-9](?!\n)$",
        description='a local time "HH:MM", 00:00 to 24:00',
        examples=["08:00"],
    ),
]


class BandRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A weekly rule: the band the given weekdays are in from ``start`` to ``end``."""

    band: Annotated[str, msgspec.Meta(min_length=1, examples=["peak"])]
    # The weekdays' range is the schedule validator's: an error names ``days`` itself.
    days: Annotated[
        list[Annotated[int, msgspec.Meta(extra_json_schema={"minimum": 0, "maximum": 6})]],
        msgspec.Meta(
            min_length=1,
            description="weekdays, 0 (Monday) to 6 (Sunday); every day when left out",
        ),
    ] = msgspec.field(default_factory=lambda: list(range(7)))
    start: LocalTime
    end: LocalTime


class SetBands(Params):
    """A plan's time bands: weekly rules and holidays in the plan's time zone."""

    time_zone: Annotated[
        str, msgspec.Meta(min_length=1, max_length=64, description="an IANA time zone")
    ] = "UTC"
    rules: Annotated[list[BandRule], msgspec.Meta(max_length=MAX_BAND_RULES)] = msgspec.field(
        default_factory=list
    )
    holidays: (
        Annotated[
            list[date],
            msgspec.Meta(max_length=MAX_HOLIDAYS, description="days in the holiday band"),
        ]
        | None
    ) = None


class BandRuleShown(Answer):
    """A weekly rule as stored."""

    band: str
    days: list[int]
    start: str
    end: str


class PlanBands(Answer):
    """A plan's time bands as stored."""

    plan: str
    time_zone: str
    rules: list[BandRuleShown]
    holidays: list[str]


async def set_bands(request: web.Request, params: SetBands) -> PlanBands:
    """PUT /v1/plans/{id}/bands: a plan's time bands."""
    plan_id = catalog_store.validate_plan_id(request.match_info["plan_id"], "plan_id")
    schedule = validate_schedule(msgspec.to_builtins(params))
    await catalog_store.set_bands(services_of(request).pool, plan_id, schedule)
    return msgspec.convert({"plan": plan_id, **json.loads(schedule.to_json())}, PlanBands)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/plans",
        Role.ADMIN,
        "Create a plan",
        create_plan,
        CreatePlan,
        PlanView,
        status=201,
        errors=(409,),
        answer_description="the plan created",
    ),
    Endpoint(
        "GET",
        "/v1/plans",
        Role.VIEWER,
        "Every plan",
        list_plans,
        None,
        PlanList,
    ),
    Endpoint(
        "POST",
        "/v1/plans/{plan_id}/tariffs",
        Role.ADMIN,
        "Replace a plan's tariff deck with a CSV, all or nothing",
        import_tariffs,
        DeckFormat,
        DeckImportView,
        body="csv",
        description="A bad deck is refused whole, naming each bad line (``problems``);"
        " the deck it would have replaced keeps serving. ``?format=`` reads another"
        " system's rate export instead of ocs's CSV: ``a2billing``, ``astpp`` or"
        " ``magnusbilling`` (docs/peer-decks.md); ``ocs`` when left out.",
        answer_description="the deck's size, and its prefixes new to the plan, moved to"
        " another zone and gone",
    ),
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/tariffs/{zone}/shape",
        Role.ADMIN,
        "A zone's tariff shape: tiers, max cost, surcharges, band prices",
        set_tariff_shape,
        SetTariffShape,
        TariffShape,
        description="Kept across deck re-imports (a deck column, when present, wins).",
    ),
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/translation",
        Role.ADMIN,
        "A plan's number translation rules",
        set_translation,
        SetTranslation,
        PlanTranslation,
        description="Ordered regular expressions turning numbers as dialled into E.164"
        " digits before the prefix match.",
    ),
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/bands",
        Role.ADMIN,
        "A plan's time bands",
        set_bands,
        SetBands,
        PlanBands,
        description="A tariff's band_prices (its shape) price each band.",
    ),
)
