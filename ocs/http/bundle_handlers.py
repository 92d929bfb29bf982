"""Bundles and surcharges in the admin API: bundles with their indicators and rules, their
attachment to subscriptions, and a plan's surcharges (decisions 0022, 0023; shape: 0024).

A thin adapter over ``ocs.billing.rules_store``: billing staff are operators
(they write), viewers read. A bundle's body is also the file format of
``ocs bundles create --file`` (``decode_bundle``): one format, validated by one
declaration. Rates are a decimal percent ("10", "12.5"), amounts decimal strings.
"""

from datetime import date
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ocs.billing import rules_store
from ocs.billing.rules_store import (
    BundleSpec,
    DiscountTier,
    HeldBundle,
    IndicatorSpec,
    RuleSpec,
)
from ocs.billing.surcharges import Surcharge
from ocs.billing.taxes import rate_text
from ocs.errors import invalid
from ocs.http.context import services_of
from ocs.http.endpoint import (
    ZERO_AMOUNT,
    Amount,
    Answer,
    Currency,
    Endpoint,
    ObjectId,
    Params,
    Role,
    amount_text,
    field_error,
    plain_ints,
)
from ocs.http.path_ids import path_id
from ocs.http.tax_handlers import RateText, Target
from ocs.money import MoneyError, parse_amount

MAX_UNITS = 2**62  # an allowance or threshold in seconds, units or micro-units
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Filter = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


# --- views -----------------------------------------------------------------------------


class BundleIndicator(Params):
    """An indicator: ``function`` of ``measure`` over the cycle's CDRs (calls' seconds,
    usage events' metered quantity, or the amount debited), filtered by zone, rate type
    or service (a usage event's; never with duration). A call whose Stop came after ocs
    closed it counts once, as its Stop amended it (COUNT, MIN, MAX, a free allowance)."""

    name: ObjectId
    function: Literal["sum", "avg", "min", "max", "count"]
    measure: Literal["duration", "consumption", "amount"]
    unit: Annotated[str, msgspec.Meta(max_length=16, description="MB, kWh: for display")] = ""
    zone: Filter | None = None
    rate_type: Filter | None = None
    service: Filter | None = None


class BundleTier(Params):
    """A discount tier: its rate from ``threshold`` indicator units (the highest reached)."""

    threshold: Annotated[int, msgspec.Meta(ge=0, le=MAX_UNITS)]
    rate: RateText


class BundleRule(Params):
    """A rule, in order: ``free`` (an ``allowance`` of indicator units credited),
    ``discount`` (``tiers``), ``commitment`` (a minimum spend ``amount`` per cycle) or
    ``flat_fee`` (``amount`` per ``periodicity``, billed at ``timing``; no indicator)."""

    kind: Literal["free", "discount", "commitment", "flat_fee"]
    description: Name
    indicator: ObjectId | None = None
    allowance: Annotated[int, msgspec.Meta(ge=1, le=MAX_UNITS)] | None = None
    amount: Amount | None = None
    periodicity: Literal["one_shot", "monthly", "yearly"] | None = None
    timing: Literal["upfront", "due_date"] | None = None
    tiers: Annotated[list[BundleTier], msgspec.Meta(max_length=32)] = msgspec.field(
        default_factory=list
    )


class CreateBundle(Params):
    """A bundle: its currency, an optional commitment term and resiliation rule, its
    indicators and its rules (also the file of ``ocs bundles create --file``)."""

    id: ObjectId
    name: Name
    currency: Currency
    rules: Annotated[list[BundleRule], msgspec.Meta(min_length=1, max_length=32)]
    commitment_months: Annotated[int, msgspec.Meta(ge=1, le=120)] | None = None
    resiliation: Literal["none", "fixed", "remaining_months"] = "none"
    resiliation_fee: Amount = ZERO_AMOUNT
    indicators: Annotated[list[BundleIndicator], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )


class BundleIndicatorView(Answer):
    """An indicator as shown."""

    name: str
    function: str
    measure: str
    unit: str
    zone: str | None
    rate_type: str | None
    service: str | None


class BundleTierView(Answer):
    """A discount tier as shown."""

    threshold: int
    rate: str


class BundleRuleView(Answer):
    """A bundle's rule as shown, with its position (from 1)."""

    position: int
    kind: str
    description: str
    indicator: str | None
    allowance: int | None
    amount: str | None
    periodicity: str | None
    timing: str | None
    tiers: list[BundleTierView]


class BundleView(Answer):
    """A bundle with its indicators and rules."""

    id: str
    name: str
    currency: str
    commitment_months: int | None
    resiliation: str
    resiliation_fee: str
    indicators: list[BundleIndicatorView]
    rules: list[BundleRuleView]


def bundle_view(bundle: BundleSpec) -> BundleView:
    """A bundle as shown: amounts as decimal strings, rates in percent."""
    return BundleView(
        id=bundle.id,
        name=bundle.name,
        currency=bundle.currency,
        commitment_months=bundle.commitment_months,
        resiliation=bundle.resiliation,
        resiliation_fee=amount_text(bundle.resiliation_fee),
        indicators=[
            BundleIndicatorView(
                name=i.name,
                function=i.function,
                measure=i.measure,
                unit=i.unit,
                zone=i.zone,
                rate_type=i.rate_type,
                service=i.service,
            )
            for i in bundle.indicators
        ],
        rules=[
            BundleRuleView(
                position=position,
                kind=r.kind,
                description=r.description,
                indicator=r.indicator,
                allowance=r.allowance,
                amount=None if r.amount is None else amount_text(r.amount),
                periodicity=r.periodicity,
                timing=r.timing,
                tiers=[
                    BundleTierView(threshold=t.threshold, rate=rate_text(t.rate)) for t in r.tiers
                ],
            )
            for position, r in enumerate(bundle.rules, 1)
        ],
    )


class SubscriptionBundleView(Answer):
    """A bundle on a subscription, from ``start_date`` to ``end_date`` (excluded; null:
    the subscription's own)."""

    id: int
    subscription: int
    bundle: str
    start_date: date | None
    end_date: date | None


def held_view(found: HeldBundle) -> SubscriptionBundleView:
    """A subscription's bundle as shown."""
    return SubscriptionBundleView(
        id=found.id,
        subscription=found.subscription_id,
        bundle=found.bundle_id,
        start_date=found.start_date,
        end_date=found.end_date,
    )


class SurchargeView(Answer):
    """A plan's surcharge: a percentage of, or a flat amount on, a zone's or charge's lines."""

    id: str
    plan: str
    name: str
    kind: str
    rate: str | None
    amount: str | None
    target_kind: str
    target: str


def surcharge_view(plan_id: str, found: Surcharge) -> SurchargeView:
    """A surcharge as shown."""
    return SurchargeView(
        id=found.id,
        plan=plan_id,
        name=found.name,
        kind=found.kind,
        rate=None if found.rate is None else rate_text(found.rate),
        amount=None if found.amount is None else amount_text(found.amount),
        target_kind=found.target_kind,
        target=found.target,
    )


# --- bundles ---------------------------------------------------------------------------


def bundle_spec(params: CreateBundle) -> BundleSpec:
    """The bundle a body (or file) describes, its rates read as percentages."""
    rules = []
    for n, rule in enumerate(params.rules):
        tiers = tuple(
            DiscountTier(
                tier.threshold,
                rules_store.parse_rate(
                    tier.rate, f"rules[{n}].tiers[{t}].rate", maximum=rules_store.FULL_RATE
                ),
            )
            for t, tier in enumerate(rule.tiers)
        )
        rules.append(
            RuleSpec(
                rule.kind,
                rule.description,
                rule.indicator,
                rule.allowance,
                None if rule.amount is None else int(rule.amount),
                rule.periodicity,
                rule.timing,
                tiers,
            )
        )
    return BundleSpec(
        params.id,
        params.name,
        params.currency,
        params.commitment_months,
        params.resiliation,
        int(params.resiliation_fee),
        tuple(
            IndicatorSpec(i.name, i.function, i.measure, i.unit, i.zone, i.rate_type, i.service)
            for i in params.indicators
        ),
        tuple(rules),
    )


def _amounts(kind: type, value: Any) -> Any:
    """msgspec's hook for the amounts of a bundle file (as the API reads them)."""
    if kind is Amount:
        try:
            return Amount(parse_amount(value))
        except MoneyError as exc:
            raise ValueError(str(exc)) from None
    raise NotImplementedError(kind)


_FILE_DECODER = msgspec.json.Decoder(CreateBundle, dec_hook=_amounts)


def decode_bundle(text: bytes) -> BundleSpec:
    """The bundle of a JSON file (the body of POST /v1/bundles); 400 naming the field."""
    try:
        params = plain_ints(_FILE_DECODER.decode(text))
    except msgspec.ValidationError as exc:
        raise field_error(exc) from None
    except msgspec.DecodeError as exc:
        raise invalid("file", f"not valid JSON: {exc}") from None
    return bundle_spec(params)


async def create_bundle(request: web.Request, params: CreateBundle) -> BundleView:
    """POST /v1/bundles: define a bundle with its indicators and rules (201)."""
    created = await rules_store.create_bundle(services_of(request).pool, bundle_spec(params))
    return bundle_view(created)


class BundleQuery(Params):
    """Filters of the bundle list."""

    id: ObjectId | None = None
    currency: Currency | None = None


class BundleList(Answer):
    """Bundles, by id."""

    bundles: list[BundleView]


async def list_bundles(request: web.Request, params: BundleQuery) -> BundleList:
    """GET /v1/bundles: bundles with their indicators and rules."""
    found = await rules_store.list_bundles(
        services_of(request).pool, bundle_id=params.id, currency=params.currency
    )
    return BundleList(bundles=[bundle_view(b) for b in found])


def _subscription_id(request: web.Request) -> int:
    """The subscription id of the path."""
    return path_id(request, "subscription_id")


class AttachBundle(Params):
    """A bundle put on a subscription, from a day (default: the subscription's start) to
    a first day without (default: the subscription's end)."""

    bundle: ObjectId
    start_date: date | None = None
    end_date: date | None = None


async def attach_bundle(request: web.Request, params: AttachBundle) -> SubscriptionBundleView:
    """POST /v1/subscriptions/{subscription_id}/bundles: attach a bundle (201)."""
    held = await rules_store.attach(
        services_of(request).pool,
        _subscription_id(request),
        params.bundle,
        start_date=params.start_date,
        end_date=params.end_date,
    )
    return held_view(held)


class SubscriptionBundleList(Answer):
    """A subscription's bundles, oldest first."""

    bundles: list[SubscriptionBundleView]


async def list_subscription_bundles(request: web.Request, params: None) -> SubscriptionBundleList:
    """GET /v1/subscriptions/{subscription_id}/bundles: the bundles it holds."""
    found = await rules_store.held_bundles(services_of(request).pool, _subscription_id(request))
    return SubscriptionBundleList(bundles=[held_view(h) for h in found])


class DetachBundle(Params):
    """A bundle a subscription holds, ended on a day (its first day without)."""

    bundle: ObjectId
    on: date


async def detach_bundle(request: web.Request, params: DetachBundle) -> SubscriptionBundleList:
    """POST /v1/subscriptions/{subscription_id}/bundles/detach: end it; the holdings ended."""
    ended = await rules_store.detach(
        services_of(request).pool, _subscription_id(request), params.bundle, params.on
    )
    return SubscriptionBundleList(bundles=[held_view(h) for h in ended])


# --- surcharges ------------------------------------------------------------------------


class CreateSurcharge(Params):
    """A surcharge on a plan's zone or charge lines: ``percent`` (a ``rate``) or ``flat``
    (an ``amount`` once per invoice having such a line)."""

    id: ObjectId
    name: Name
    kind: Literal["percent", "flat"]
    target_kind: Literal["zone", "charge"]
    target: Target
    rate: RateText | None = None
    amount: Amount | None = None


async def create_surcharge(request: web.Request, params: CreateSurcharge) -> SurchargeView:
    """POST /v1/plans/{plan_id}/surcharges: add a surcharge to a plan (201)."""
    plan_id = request.match_info["plan_id"]
    surcharge = Surcharge(
        params.id,
        params.name,
        params.kind,
        params.target_kind,
        params.target,
        None if params.rate is None else rules_store.parse_rate(params.rate, "rate"),
        None if params.amount is None else int(params.amount),
    )
    created = await rules_store.create_surcharge(services_of(request).pool, plan_id, surcharge)
    return surcharge_view(plan_id, created)


class SurchargeList(Answer):
    """A plan's surcharges, by id."""

    surcharges: list[SurchargeView]


async def list_surcharges(request: web.Request, params: None) -> SurchargeList:
    """GET /v1/plans/{plan_id}/surcharges: a plan's surcharges."""
    plan_id = request.match_info["plan_id"]
    found = await rules_store.list_surcharges(services_of(request).pool, plan_id)
    return SurchargeList(surcharges=[surcharge_view(plan_id, s) for s in found])


class RemoveSurcharge(Params):
    """Which surcharge to remove."""

    id: ObjectId


async def remove_surcharge(request: web.Request, params: RemoveSurcharge) -> SurchargeView:
    """DELETE /v1/plans/{plan_id}/surcharges: remove one; the one removed."""
    plan_id = request.match_info["plan_id"]
    removed = await rules_store.remove_surcharge(services_of(request).pool, plan_id, params.id)
    return surcharge_view(plan_id, removed)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/bundles",
        Role.OPERATOR,
        "Define a bundle: indicators over usage and rules (free units, discounts, a"
        " commitment, flat fees), a commitment term and resiliation fee",
        create_bundle,
        CreateBundle,
        BundleView,
        status=201,
        body_required=True,
        description="A bad rule is refused 400 naming it (rules[1].allowance).",
    ),
    Endpoint(
        "GET",
        "/v1/bundles",
        Role.VIEWER,
        "Bundles with their indicators and rules",
        list_bundles,
        BundleQuery,
        BundleList,
    ),
    Endpoint(
        "POST",
        "/v1/subscriptions/{subscription_id}/bundles",
        Role.OPERATOR,
        "Put a bundle on a subscription, from a day to a day",
        attach_bundle,
        AttachBundle,
        SubscriptionBundleView,
        status=201,
        body_required=True,
        errors=(404,),
        description="Only a bundle in the currency of the subscription's plan (400 naming"
        " bundle otherwise).",
    ),
    Endpoint(
        "GET",
        "/v1/subscriptions/{subscription_id}/bundles",
        Role.VIEWER,
        "The bundles a subscription holds",
        list_subscription_bundles,
        None,
        SubscriptionBundleList,
        errors=(404,),
    ),
    Endpoint(
        "POST",
        "/v1/subscriptions/{subscription_id}/bundles/detach",
        Role.OPERATOR,
        "End a subscription's bundle on a day; before its commitment term ends, its"
        " resiliation fee is billed",
        detach_bundle,
        DetachBundle,
        SubscriptionBundleList,
        body_required=True,
        errors=(404,),
        answer_description="the holdings ended",
    ),
    Endpoint(
        "POST",
        "/v1/plans/{plan_id}/surcharges",
        Role.OPERATOR,
        "Add a surcharge to a plan: a percentage of, or a flat amount on, a zone's or a"
        " charge's lines",
        create_surcharge,
        CreateSurcharge,
        SurchargeView,
        status=201,
        body_required=True,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        "/v1/plans/{plan_id}/surcharges",
        Role.VIEWER,
        "A plan's surcharges",
        list_surcharges,
        None,
        SurchargeList,
        errors=(404,),
    ),
    Endpoint(
        "DELETE",
        "/v1/plans/{plan_id}/surcharges",
        Role.OPERATOR,
        "Remove a plan's surcharge",
        remove_surcharge,
        RemoveSurcharge,
        SurchargeView,
        errors=(404,),
        answer_description="the surcharge removed",
    ),
)
