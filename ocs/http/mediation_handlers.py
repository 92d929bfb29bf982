"""Usage mediation in the admin API: rate types, plans' rates by rate type, suppliers'
rate-type overrides and the versioned usage import templates (issue 15).

A thin adapter over ``ocs.mediation.store``: operators write, viewers read. A
rate type's name ("Inbound Toll-free") is a body field or a query parameter,
never a path segment, as decision 0024 has it for zones and tax codes: nothing
has to be escaped into a path, and the API keeps the path parameters
/openapi.json documents. A template's body is the template's own JSON
(``ocs.mediation.template``), validated by its declaration, so a mistake is named
as ``ocs usage-templates add`` names it (``columns.start``).
"""

from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from ocs.errors import OcsError, Reason, invalid
from ocs.http.context import services_of
from ocs.http.endpoint import (
    ZERO_AMOUNT,
    Amount,
    Answer,
    Currency,
    Endpoint,
    ObjectId,
    Params,
    Reply,
    Role,
    amount_text,
)
from ocs.http.plan_handlers import (
    MAX_BAND_PRICES,
    MaxCostMode,
    SurchargePercent,
    TariffTier,
    TariffTiers,
    TariffTierShown,
    percent_text,
    surcharge_basis_points,
)
from ocs.mediation import store
from ocs.mediation.store import Override, RateType, RateTypeRate, TemplateSummary
from ocs.mediation.template import Template, template_from_json, template_to_json
from ocs.rating.rates import Tier

# The form is the store's to check (its refusal says what is wrong in words); the
# pattern documents it, so generated requests get past it to the work itself.
RateTypeName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=store.MAX_RATE_TYPE,
        description="a rate type: no control character, no space at either end",
        examples=["Inbound Toll-free"],
        extra_json_schema={
            "pattern": r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?"
            r"(?!\n)$"
        },
    ),
]
Description = Annotated[str, msgspec.Meta(max_length=store.MAX_DESCRIPTION)]
RateName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=store.MAX_RATE_NAME,
        description="as invoices name the usage",
        examples=["Toll-free minutes"],
    ),
]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=store.MAX_CODE)]
Count = Annotated[int, msgspec.Meta(ge=0, le=store.MAX_INT)]
Version = Annotated[int, msgspec.Meta(ge=1, le=store.MAX_INT, description="a version number")]


# --- rate types ------------------------------------------------------------------------


class RateTypeView(Answer):
    """A rate type."""

    name: str
    description: str


def rate_type_view(found: RateType) -> RateTypeView:
    """A rate type as shown."""
    return RateTypeView(name=found.name, description=found.description)


class CreateRateType(Params):
    """A rate type; an existing name takes the description given."""

    name: RateTypeName
    description: Description = ""


async def create_rate_type(
    request: web.Request, params: CreateRateType
) -> RateTypeView | Reply[RateTypeView]:
    """POST /v1/rate-types: define a rate type (201; 200 when it existed)."""
    async with services_of(request).pool.acquire() as conn:
        found, made = await store.create_rate_type(conn, params.name, params.description)
    view = rate_type_view(found)
    return view if made else Reply(view, 200)


class RateTypeList(Answer):
    """Every rate type, by name."""

    rate_types: list[RateTypeView]


async def list_rate_types(request: web.Request, params: None) -> RateTypeList:
    """GET /v1/rate-types: every rate type."""
    async with services_of(request).pool.acquire() as conn:
        found = await store.list_rate_types(conn)
    return RateTypeList(rate_types=[rate_type_view(t) for t in found])


class RateTypeQuery(Params):
    """Which rate type."""

    name: RateTypeName


async def delete_rate_type(request: web.Request, params: RateTypeQuery) -> RateTypeView:
    """DELETE /v1/rate-types?name=: delete a rate type no rate or override names."""
    async with services_of(request).pool.acquire() as conn:
        return rate_type_view(await store.delete_rate_type(conn, params.name))


# --- a plan's rates by rate type ------------------------------------------------------


class SetRateTypeRate(Params):
    """A plan's rate for a rate type: ``price`` per ``per`` seconds (60: per minute) or
    units (1: per MB), and the shape a tariff has (tiers, cap, surcharges, band prices)."""

    rate_type: RateTypeName
    name: RateName
    price: Amount
    currency: (
        Annotated[Currency, msgspec.Meta(description="the plan's (the default); no other")] | None
    ) = None
    per: Annotated[
        int, msgspec.Meta(ge=1, le=1_000_000, description="price is per this many seconds or units")
    ] = 60
    connect_fee: Amount = ZERO_AMOUNT
    first_block: Annotated[Count, msgspec.Meta(description="the least billed")] = 0
    increment: Annotated[int, msgspec.Meta(ge=1, le=store.MAX_INT)] = 1
    tiers: TariffTiers = msgspec.field(default_factory=list)
    max_cost: Amount | None = None
    max_cost_mode: MaxCostMode | None = None
    surcharge_percent: SurchargePercent | None = None
    surcharge_flat: Amount | None = None
    band_prices: Annotated[
        dict[str, Amount],
        msgspec.Meta(
            max_length=MAX_BAND_PRICES,
            description="the base price in each time band, by band name",
        ),
    ] = msgspec.field(default_factory=dict)
    tax_code: Code | None = None
    gl_code: Code | None = None


class RateTypeRateView(Answer):
    """A plan's rate for a rate type as stored."""

    plan: str
    rate_type: str
    name: str
    currency: str
    price: str
    per: int
    connect_fee: str
    first_block: int
    increment: int
    tiers: list[TariffTierShown]
    max_cost: str | None
    max_cost_mode: str
    surcharge_percent: str
    surcharge_flat: str
    band_prices: dict[str, str]
    tax_code: str | None
    gl_code: str | None


def rate_type_rate_view(found: RateTypeRate) -> RateTypeRateView:
    """A rate-type rate as shown: amounts as decimal strings of the plan's currency."""
    rate = found.rate
    return RateTypeRateView(
        plan=found.plan_id,
        rate_type=found.rate_type,
        name=found.name,
        currency=found.currency,
        price=amount_text(rate.price_per_minute),
        per=rate.per,
        connect_fee=amount_text(rate.connect_fee),
        first_block=rate.first_block,
        increment=rate.increment,
        tiers=[
            TariffTierShown(
                from_second=t.start,
                price_per_minute=amount_text(t.price_per_minute),
                increment=t.increment,
                flat=amount_text(t.flat),
            )
            for t in rate.tiers
        ],
        max_cost=amount_text(rate.max_cost) if rate.max_cost else None,
        max_cost_mode="cut" if rate.cut_at_max_cost else "free",
        surcharge_percent=percent_text(rate.surcharge_percent_bp),
        surcharge_flat=amount_text(rate.surcharge_flat),
        band_prices={band: amount_text(price) for band, price in rate.band_prices},
        tax_code=found.tax_code,
        gl_code=found.gl_code,
    )


def _plan_id(request: web.Request) -> str:
    """The plan id of the path."""
    return request.match_info["plan_id"]


def _tiers(tiers: list[TariffTier]) -> list[Tier]:
    """The body's tiers as the rate's; 400 naming a tier's ``from_second`` before second 1."""
    found = []
    for n, tier in enumerate(tiers):
        if not 1 <= tier.from_second <= store.MAX_INT:
            raise invalid(f"tiers[{n}].from_second", f"expected 1 to {store.MAX_INT}")
        found.append(
            Tier(
                start=tier.from_second,
                price_per_minute=int(tier.price_per_minute or 0),
                increment=tier.increment or 1,
                flat=int(tier.flat or 0),
            )
        )
    return found


async def set_rate_type_rate(request: web.Request, params: SetRateTypeRate) -> RateTypeRateView:
    """PUT /v1/plans/{plan_id}/rate-types: set (or replace) a plan's rate for a rate type."""
    rate = store.make_rate(
        price=int(params.price),
        connect_fee=int(params.connect_fee),
        first_block=params.first_block,
        increment=params.increment,
        per=params.per,
        tiers=_tiers(params.tiers),
        max_cost=int(params.max_cost or 0),
        cut_at_max_cost=params.max_cost_mode == "cut",
        surcharge_percent_bp=surcharge_basis_points(int(params.surcharge_percent or 0)),
        surcharge_flat=int(params.surcharge_flat or 0),
        band_prices=[(band, int(price)) for band, price in params.band_prices.items()],
    )
    async with services_of(request).pool.acquire() as conn:
        found = await store.set_rate_type_rate(
            conn,
            _plan_id(request),
            params.rate_type,
            params.name,
            rate,
            currency=params.currency,
            tax_code=params.tax_code,
            gl_code=params.gl_code,
        )
    return rate_type_rate_view(found)


class PlanRateTypeRates(Answer):
    """A plan's rates by rate type, by rate type."""

    plan: str
    rates: list[RateTypeRateView]


async def list_rate_type_rates(request: web.Request, params: None) -> PlanRateTypeRates:
    """GET /v1/plans/{plan_id}/rate-types: a plan's rates by rate type."""
    plan_id = _plan_id(request)
    async with services_of(request).pool.acquire() as conn:
        found = await store.rate_type_rates(conn, plan_id)
    return PlanRateTypeRates(plan=plan_id, rates=[rate_type_rate_view(r) for r in found])


class RateTypeRateQuery(Params):
    """Which of the plan's rates."""

    rate_type: RateTypeName


async def delete_rate_type_rate(
    request: web.Request, params: RateTypeRateQuery
) -> RateTypeRateView:
    """DELETE /v1/plans/{plan_id}/rate-types?rate_type=: remove a plan's rate for a rate
    type (its usage is rated by zone again)."""
    async with services_of(request).pool.acquire() as conn:
        removed = await store.delete_rate_type_rate(conn, _plan_id(request), params.rate_type)
    return rate_type_rate_view(removed)


# --- suppliers' overrides -------------------------------------------------------------


class OverridePair(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Usage classified ``from_rate_type`` is rated as ``to_rate_type`` (a rate type)."""

    from_rate_type: Annotated[
        RateTypeName, msgspec.Meta(description="what a template classifies to")
    ]
    to_rate_type: RateTypeName


class OverrideTable(Answer):
    """A supplier's overrides, by the rate type they regroup."""

    supplier: str
    overrides: list[OverridePair]


def override_table(supplier: str, found: list[Override]) -> OverrideTable:
    """A supplier's override table as shown."""
    return OverrideTable(
        supplier=supplier,
        overrides=[
            OverridePair(from_rate_type=o.from_rate_type, to_rate_type=o.to_rate_type)
            for o in found
        ],
    )


class SupplierQuery(Params):
    """Whose overrides."""

    supplier: ObjectId


async def list_overrides(request: web.Request, params: SupplierQuery) -> OverrideTable:
    """GET /v1/rate-type-overrides?supplier=: a supplier's overrides."""
    async with services_of(request).pool.acquire() as conn:
        found = await store.list_overrides(conn, params.supplier)
    return override_table(params.supplier, found)


class ReplaceOverrides(Params):
    """A supplier's whole override table, replacing the one it had (empty: none)."""

    supplier: ObjectId
    overrides: Annotated[list[OverridePair], msgspec.Meta(max_length=store.MAX_OVERRIDES)]


async def replace_overrides(request: web.Request, params: ReplaceOverrides) -> OverrideTable:
    """PUT /v1/rate-type-overrides: replace a supplier's override table, all or nothing."""
    pairs = [(o.from_rate_type, o.to_rate_type) for o in params.overrides]
    async with services_of(request).pool.acquire() as conn:
        found = await store.replace_overrides(conn, params.supplier, pairs)
    return override_table(params.supplier, found)


class OverrideView(Answer):
    """One of a supplier's overrides."""

    supplier: str
    from_rate_type: str
    to_rate_type: str


def override_view(found: Override) -> OverrideView:
    """An override as shown."""
    return OverrideView(
        supplier=found.supplier,
        from_rate_type=found.from_rate_type,
        to_rate_type=found.to_rate_type,
    )


class SetOverride(Params):
    """One override of a supplier, added or changed."""

    supplier: ObjectId
    from_rate_type: RateTypeName
    to_rate_type: RateTypeName


async def set_override(request: web.Request, params: SetOverride) -> OverrideView:
    """POST /v1/rate-type-overrides: add or change one of a supplier's overrides."""
    async with services_of(request).pool.acquire() as conn:
        found = await store.set_override(
            conn, params.supplier, params.from_rate_type, params.to_rate_type
        )
    return override_view(found)


class OverrideQuery(Params):
    """Which override: the supplier's, of a rate type."""

    supplier: ObjectId
    from_rate_type: RateTypeName


async def delete_override(request: web.Request, params: OverrideQuery) -> OverrideView:
    """DELETE /v1/rate-type-overrides?supplier=&from_rate_type=: remove one override."""
    async with services_of(request).pool.acquire() as conn:
        removed = await store.delete_override(conn, params.supplier, params.from_rate_type)
    return override_view(removed)


# --- usage import templates -----------------------------------------------------------


# msgspec takes a frozen Struct beside a base without fields (Params); mypy's model of
# dataclasses refuses any frozen/non-frozen mix.
class TemplateBody(Template, Params):  # type: ignore[misc]
    """A usage import template's JSON definition (docs/mediation-templates.md): the
    template's own declaration, so /openapi.json documents it and a mistake is named."""


class TemplateSaved(Answer):
    """A template saved: its version, and whether that version is new (an unchanged
    definition keeps the latest version)."""

    name: str
    supplier: str
    version: int
    new: bool


async def save_template(
    request: web.Request, params: TemplateBody
) -> TemplateSaved | Reply[TemplateSaved]:
    """POST /v1/usage-templates: save a template (201 a new version; 200 unchanged)."""
    # The declaration checked the form; the template's own rules check the rest.
    template = template_from_json(msgspec.to_builtins(params))
    async with services_of(request).pool.acquire() as conn:
        version, new = await store.store_template(conn, template)
    saved = TemplateSaved(name=template.name, supplier=template.supplier, version=version, new=new)
    return saved if new else Reply(saved, 200)


class TemplateSummaryView(Answer):
    """A template: its latest version, that version's supplier and time, how many."""

    name: str
    supplier: str
    latest_version: int
    versions: int
    updated_at: datetime


def template_summary_view(found: TemplateSummary) -> TemplateSummaryView:
    """A template's summary as shown."""
    return TemplateSummaryView(
        name=found.name,
        supplier=found.supplier,
        latest_version=found.latest_version,
        versions=found.versions,
        updated_at=found.updated_at,
    )


class TemplateList(Answer):
    """Every stored template, by name."""

    templates: list[TemplateSummaryView]


async def list_templates(request: web.Request, params: None) -> TemplateList:
    """GET /v1/usage-templates: every stored template."""
    async with services_of(request).pool.acquire() as conn:
        found = await store.list_templates(conn)
    return TemplateList(templates=[template_summary_view(t) for t in found])


class TemplateVersionView(Answer):
    """One version of a template."""

    version: int
    supplier: str
    created_at: datetime


class TemplateView(Answer):
    """One version of a template with its definition, and every version it has."""

    name: str
    version: int
    definition: dict[str, Any]
    versions: list[TemplateVersionView]


class TemplateQuery(Params):
    """Which template, and which version (the latest when left out)."""

    name: ObjectId
    version: Version | None = None


async def template_view(conn: Any, name: str, version: int | None = None) -> TemplateView:
    """A template's version (the latest by default) with its versions; 404 if none."""
    found = (
        await store.latest_template(conn, name)
        if version is None
        else await store.template_version(conn, name, version)
    )
    if found is None:
        which = "" if version is None else f" version {version}"
        field = "name" if version is None else "version"
        raise OcsError(Reason.NOT_FOUND, f"{field}: no usage template {name!r}{which}", field=field)
    versions = await store.template_versions(conn, name)
    return TemplateView(
        name=name,
        version=found[0],
        definition=template_to_json(found[1]),
        versions=[
            TemplateVersionView(version=v.version, supplier=v.supplier, created_at=v.created_at)
            for v in versions
        ],
    )


async def show_template(request: web.Request, params: TemplateQuery) -> TemplateView:
    """GET /v1/usage-templates/definition?name=&version=: a template's definition."""
    async with services_of(request).pool.acquire() as conn:
        return await template_view(conn, params.name, params.version)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/rate-types",
        Role.OPERATOR,
        "Define a rate type (a class of usage templates classify records to)",
        create_rate_type,
        CreateRateType,
        RateTypeView,
        status=201,
        body_required=True,
        description="An existing name answers 200 and takes the description given.",
    ),
    Endpoint(
        "GET",
        "/v1/rate-types",
        Role.VIEWER,
        "Every rate type",
        list_rate_types,
        None,
        RateTypeList,
    ),
    Endpoint(
        "DELETE",
        "/v1/rate-types",
        Role.OPERATOR,
        "Delete a rate type",
        delete_rate_type,
        RateTypeQuery,
        RateTypeView,
        errors=(404,),
        description="Refused (400 naming name, and what uses it) while a plan's rate or a"
        " supplier's override names it.",
        answer_description="the rate type deleted",
    ),
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/rate-types",
        Role.ADMIN,
        "Set a plan's rate for a rate type",
        set_rate_type_rate,
        SetRateTypeRate,
        RateTypeRateView,
        body_required=True,
        description="Imported usage of the rate type (after the supplier's overrides) is"
        " rated by it; usage of a rate type the plan has no rate for is rated by its zone."
        " The amounts are in the plan's currency (400 naming currency for another)."
        " Serving processes reload it.",
    ),
    Endpoint(
        "GET",
        "/v1/plans/{plan_id}/rate-types",
        Role.VIEWER,
        "A plan's rates by rate type",
        list_rate_type_rates,
        None,
        PlanRateTypeRates,
    ),
    Endpoint(
        "DELETE",
        "/v1/plans/{plan_id}/rate-types",
        Role.ADMIN,
        "Remove a plan's rate for a rate type",
        delete_rate_type_rate,
        RateTypeRateQuery,
        RateTypeRateView,
        description="The rate type's usage is rated by its zone again.",
        answer_description="the rate removed",
    ),
    Endpoint(
        "GET",
        "/v1/rate-type-overrides",
        Role.VIEWER,
        "A supplier's rate-type overrides",
        list_overrides,
        SupplierQuery,
        OverrideTable,
    ),
    Endpoint(
        "PUT",
        "/v1/rate-type-overrides",
        Role.ADMIN,
        "Replace a supplier's whole rate-type override table",
        replace_overrides,
        ReplaceOverrides,
        OverrideTable,
        body_required=True,
        errors=(404,),
        description="All or nothing: a rate type overridden twice is 400 naming it, a"
        " to_rate_type that is no rate type 404 naming it.",
    ),
    Endpoint(
        "POST",
        "/v1/rate-type-overrides",
        Role.ADMIN,
        "Add or change one of a supplier's rate-type overrides",
        set_override,
        SetOverride,
        OverrideView,
        body_required=True,
        errors=(404,),
    ),
    Endpoint(
        "DELETE",
        "/v1/rate-type-overrides",
        Role.ADMIN,
        "Remove one of a supplier's rate-type overrides",
        delete_override,
        OverrideQuery,
        OverrideView,
        errors=(404,),
        answer_description="the override removed",
    ),
    Endpoint(
        "POST",
        "/v1/usage-templates",
        Role.OPERATOR,
        "Save a usage import template (a changed definition is a new version)",
        save_template,
        TemplateBody,
        TemplateSaved,
        status=201,
        body_required=True,
        description="201 with a new version when the definition differs from the latest"
        " (or the name is new); 200 with the latest version when it is the same.",
    ),
    Endpoint(
        "GET",
        "/v1/usage-templates",
        Role.VIEWER,
        "Every stored usage import template",
        list_templates,
        None,
        TemplateList,
    ),
    Endpoint(
        "GET",
        "/v1/usage-templates/definition",
        Role.VIEWER,
        "A usage import template's definition (the latest version, or the one given)",
        show_template,
        TemplateQuery,
        TemplateView,
        errors=(404,),
    ),
)
