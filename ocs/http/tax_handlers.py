"""Taxes in the admin API: taxes, a plan's tax assignments, accounts' exemptions, and the
tax codes of zones, products and rate types (decision 0022, shape: decision 0024).

A thin adapter over ``ocs.billing.rules_store``: billing staff are operators
(they write), viewers read. Rates are written as a decimal percent ("20",
"8.875") and shown the same way; the store keeps millionths of a percent.
What the path cannot name (a tax's code, a tax code's owner) is a body field
or a query parameter, so that every operation keeps the path parameters the
API already documents.
"""

from datetime import date
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ocs.balances.accounts import validate_account_id
from ocs.billing import rules_store
from ocs.billing.rules_store import Assignment, TaxCode
from ocs.billing.taxes import Exemption, Tax, rate_text
from ocs.http.context import services_of
from ocs.http.endpoint import Answer, Currency, Endpoint, ObjectId, Params, Reply, Role

# A percentage as an operator writes it: "20" is 20%, "8.875" is 8.875%.
RateText = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\d{1,6}(\.\d{1,6})?(?!\n)$",
        description='a percentage, a decimal string with up to 6 places: "20" is 20%',
        examples=["20"],
    ),
]
Level = Literal["city", "county", "state", "federal", "other"]
TargetKind = Literal["tax_code", "zone", "charge"]
CodeOwner = Literal["zone", "product", "rate_type"]
Target = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Key = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=200, description="the zone, product code or rate type"),
]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class TaxView(Answer):
    """A tax: its rate in percent, level, currency and validity [valid_from, valid_until)."""

    code: str
    name: str
    rate: str
    level: str
    currency: str
    valid_from: date
    valid_until: date | None
    compound: bool


def tax_view(tax: Tax) -> TaxView:
    """A tax as shown."""
    return TaxView(
        code=tax.code,
        name=tax.name,
        rate=rate_text(tax.rate),
        level=tax.level,
        currency=tax.currency,
        valid_from=tax.valid_from,
        valid_until=tax.valid_until,
        compound=tax.compound,
    )


class PlanTaxView(Answer):
    """A tax a plan assigns to a tax code, a zone or a charge."""

    id: int
    plan: str
    target_kind: str
    target: str
    tax: TaxView


def plan_tax_view(found: Assignment) -> PlanTaxView:
    """A plan's tax assignment as shown."""
    return PlanTaxView(
        id=found.id,
        plan=found.plan_id,
        target_kind=found.target_kind,
        target=found.target,
        tax=tax_view(found.tax),
    )


class ExemptionView(Answer):
    """An account's tax exemption: its reference and the levels it covers."""

    account: str
    reference: str
    levels: list[str]


def exemption_view(account_id: str, found: Exemption) -> ExemptionView:
    """An exemption as shown, its levels city to federal, then other."""
    return ExemptionView(
        account=account_id, reference=found.reference, levels=rules_store.ordered_levels(found)
    )


class TaxCodeView(Answer):
    """The tax code of a zone's usage, a product's charges or a rate type's usage."""

    kind: str
    key: str
    tax_code: str


def tax_code_view(found: TaxCode) -> TaxCodeView:
    """A tax code as shown."""
    return TaxCodeView(kind=found.kind, key=found.key, tax_code=found.tax_code)


# --- taxes -----------------------------------------------------------------------------


class CreateTax(Params):
    """A tax: a rate change is a new tax (a new code) valid from its day."""

    code: ObjectId
    name: Name
    rate: RateText
    level: Level
    currency: Currency
    valid_from: date
    valid_until: (
        Annotated[date, msgspec.Meta(description="the first day it no longer applies")] | None
    ) = None
    compound: Annotated[
        bool, msgspec.Meta(description="a tax on a tax: its basis adds the others")
    ] = False


async def create_tax(request: web.Request, params: CreateTax) -> TaxView:
    """POST /v1/taxes: define a tax (201)."""
    tax = Tax(
        params.code,
        params.name,
        rules_store.parse_rate(params.rate, "rate"),
        params.level,
        params.currency,
        params.valid_from,
        params.valid_until,
        params.compound,
    )
    return tax_view(await rules_store.create_tax(services_of(request).pool, tax))


class TaxQuery(Params):
    """Filters of the tax list; every one given must match."""

    code: ObjectId | None = None
    currency: Currency | None = None
    valid_on: Annotated[date, msgspec.Meta(description="in force on this day")] | None = None


class TaxList(Answer):
    """Taxes, by code."""

    taxes: list[TaxView]


async def list_taxes(request: web.Request, params: TaxQuery) -> TaxList:
    """GET /v1/taxes: taxes, by code, currency or the day they are in force on."""
    found = await rules_store.list_taxes(
        services_of(request).pool,
        code=params.code,
        currency=params.currency,
        valid_on=params.valid_on,
    )
    return TaxList(taxes=[tax_view(t) for t in found])


# --- a plan's taxes --------------------------------------------------------------------


class AssignTax(Params):
    """A tax assigned to a plan's tax code (the code charges and zones carry), zone or
    charge; only a tax in the plan's currency."""

    tax: ObjectId
    target_kind: TargetKind
    target: Target


async def assign_tax(request: web.Request, params: AssignTax) -> PlanTaxView | Reply[PlanTaxView]:
    """POST /v1/plans/{plan_id}/taxes: assign a tax (201; 200 when it was already)."""
    found, made = await rules_store.assign(
        services_of(request).pool,
        request.match_info["plan_id"],
        params.tax,
        params.target_kind,
        params.target,
    )
    view = plan_tax_view(found)
    return view if made else Reply(view, 200)


class PlanTaxList(Answer):
    """A plan's tax assignments, by target."""

    taxes: list[PlanTaxView]


async def list_plan_taxes(request: web.Request, params: None) -> PlanTaxList:
    """GET /v1/plans/{plan_id}/taxes: the taxes a plan assigns."""
    found = await rules_store.assignments(services_of(request).pool, request.match_info["plan_id"])
    return PlanTaxList(taxes=[plan_tax_view(a) for a in found])


async def unassign_tax(request: web.Request, params: AssignTax) -> PlanTaxView:
    """DELETE /v1/plans/{plan_id}/taxes: remove one assignment; the one removed."""
    removed = await rules_store.unassign(
        services_of(request).pool,
        request.match_info["plan_id"],
        params.tax,
        params.target_kind,
        params.target,
    )
    return plan_tax_view(removed)


# --- exemptions ------------------------------------------------------------------------


class SetExemption(Params):
    """An account's exemption: a certificate's reference and the levels it covers."""

    reference: Name
    levels: Annotated[list[Level], msgspec.Meta(min_length=1, max_length=5)]


def _account(request: web.Request) -> str:
    """The account id of the path."""
    return validate_account_id(request.match_info["account_id"], "account_id")


async def set_exemption(request: web.Request, params: SetExemption) -> ExemptionView:
    """PUT /v1/accounts/{account_id}/tax-exemption: set (or replace) the exemption."""
    account_id = _account(request)
    found = await rules_store.exempt(
        services_of(request).pool, account_id, params.reference, params.levels
    )
    return exemption_view(account_id, found)


async def show_exemption(request: web.Request, params: None) -> ExemptionView:
    """GET /v1/accounts/{account_id}/tax-exemption: the account's exemption (404: none)."""
    account_id = _account(request)
    return exemption_view(
        account_id, await rules_store.exemption(services_of(request).pool, account_id)
    )


async def remove_exemption(request: web.Request, params: None) -> ExemptionView:
    """DELETE /v1/accounts/{account_id}/tax-exemption: end it; the one ended."""
    account_id = _account(request)
    return exemption_view(
        account_id, await rules_store.unexempt(services_of(request).pool, account_id)
    )


# --- tax codes -------------------------------------------------------------------------


class SetTaxCode(Params):
    """The tax code of a zone's usage, a product's charges (that name none) or a rate
    type's usage (it replaces its zone's)."""

    kind: CodeOwner
    key: Key
    tax_code: Target


async def set_tax_code(request: web.Request, params: SetTaxCode) -> TaxCodeView:
    """PUT /v1/tax-codes: set a zone's, product's or rate type's tax code."""
    found = await rules_store.set_tax_code(
        services_of(request).pool, params.kind, params.key, params.tax_code
    )
    return tax_code_view(found)


class TaxCodeQuery(Params):
    """Only the tax codes of one kind of owner."""

    kind: CodeOwner | None = None


class TaxCodeList(Answer):
    """Tax codes, by kind and key."""

    tax_codes: list[TaxCodeView]


async def list_tax_codes(request: web.Request, params: TaxCodeQuery) -> TaxCodeList:
    """GET /v1/tax-codes: the tax codes of zones, products and rate types."""
    found = await rules_store.tax_codes(services_of(request).pool, params.kind)
    return TaxCodeList(tax_codes=[tax_code_view(c) for c in found])


class RemoveTaxCode(Params):
    """Whose tax code to remove."""

    kind: CodeOwner
    key: Key


async def remove_tax_code(request: web.Request, params: RemoveTaxCode) -> TaxCodeView:
    """DELETE /v1/tax-codes: remove a zone's, product's or rate type's tax code."""
    removed = await rules_store.remove_tax_code(services_of(request).pool, params.kind, params.key)
    return tax_code_view(removed)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/taxes",
        Role.OPERATOR,
        "Define a tax: a rate in percent, a jurisdiction level, a currency and validity",
        create_tax,
        CreateTax,
        TaxView,
        status=201,
        body_required=True,
        description="A code in use is refused (400): a rate change is a new tax valid"
        " from its day.",
    ),
    Endpoint(
        "GET",
        "/v1/taxes",
        Role.VIEWER,
        "Taxes, by code, currency or the day they are in force on",
        list_taxes,
        TaxQuery,
        TaxList,
    ),
    Endpoint(
        "POST",
        "/v1/plans/{plan_id}/taxes",
        Role.OPERATOR,
        "Assign a tax to a plan's tax code, zone or charge",
        assign_tax,
        AssignTax,
        PlanTaxView,
        status=201,
        body_required=True,
        errors=(404,),
        description="Only a tax in the plan's currency (400 naming tax otherwise). Repeating"
        " an assignment answers 200 and changes nothing.",
    ),
    Endpoint(
        "GET",
        "/v1/plans/{plan_id}/taxes",
        Role.VIEWER,
        "The taxes a plan assigns, by target",
        list_plan_taxes,
        None,
        PlanTaxList,
        errors=(404,),
    ),
    Endpoint(
        "DELETE",
        "/v1/plans/{plan_id}/taxes",
        Role.OPERATOR,
        "Remove a tax assignment of a plan",
        unassign_tax,
        AssignTax,
        PlanTaxView,
        errors=(404,),
        answer_description="the assignment removed",
    ),
    Endpoint(
        "PUT",
        "/v1/accounts/{account_id}/tax-exemption",
        Role.OPERATOR,
        "Make an account exempt from taxes of some levels, under a certificate's reference",
        set_exemption,
        SetExemption,
        ExemptionView,
        body_required=True,
        errors=(404,),
        description="A covered tax still shows on the invoice, at 0, naming the reference.",
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/tax-exemption",
        Role.VIEWER,
        "An account's tax exemption",
        show_exemption,
        None,
        ExemptionView,
        errors=(404,),
    ),
    Endpoint(
        "DELETE",
        "/v1/accounts/{account_id}/tax-exemption",
        Role.OPERATOR,
        "End an account's tax exemption",
        remove_exemption,
        None,
        ExemptionView,
        errors=(404,),
        answer_description="the exemption ended",
    ),
    Endpoint(
        "PUT",
        "/v1/tax-codes",
        Role.OPERATOR,
        "Set the tax code of a zone's usage, a product's charges or a rate type's usage",
        set_tax_code,
        SetTaxCode,
        TaxCodeView,
        body_required=True,
    ),
    Endpoint(
        "GET",
        "/v1/tax-codes",
        Role.VIEWER,
        "The tax codes of zones, products and rate types",
        list_tax_codes,
        TaxCodeQuery,
        TaxCodeList,
    ),
    Endpoint(
        "DELETE",
        "/v1/tax-codes",
        Role.OPERATOR,
        "Remove the tax code of a zone, a product or a rate type",
        remove_tax_code,
        RemoveTaxCode,
        TaxCodeView,
        errors=(404,),
        answer_description="the tax code removed",
    ),
)
