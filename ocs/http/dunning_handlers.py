"""Dunning in the admin API: a plan's settings, a run, and an account's state
(decision 0028).

A thin adapter over ``ocs.billing.dunning``: a run started here cuts the live
calls of the accounts it suspends when ``dunning_live_calls`` is "disconnect",
the way ``DELETE /v1/calls/{call_id}`` does (the call charged up to now, its NAS
sent a Disconnect-Request).
"""

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ocs.balances.accounts import validate_account_id
from ocs.billing import dunning, dunning_store
from ocs.billing.dunning import DunningReport, DunningState, Step
from ocs.billing.dunning_store import DunningSettings
from ocs.call_cutting import call_cutter
from ocs.errors import invalid
from ocs.http.context import services_of
from ocs.http.endpoint import Answer, Endpoint, Params, Role, amount_text

FIRST_YEAR, LAST_YEAR = 2000, 2999

Notices = Annotated[
    int, msgspec.Meta(ge=0, le=dunning_store.MAX_NOTICES, description="notices before suspension")
]
IntervalDays = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=dunning_store.MAX_INTERVAL_DAYS, description="days from a notice to the next step"
    ),
]
GraceDays = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=dunning_store.MAX_GRACE_DAYS,
        description="days after the invoice date to pay (plan_billing.grace_days)",
    ),
]
At = Annotated[
    datetime,
    msgspec.Meta(description="the run's clock, with a zone (default: now)"),
]


def instant(value: datetime | None, field: str = "at") -> datetime:
    """``value`` (now when None) as an aware instant within years we bill; 400 naming
    ``field`` otherwise."""
    if value is None:
        return datetime.now(UTC)
    if value.tzinfo is None:
        raise invalid(field, "needs a time zone, e.g. 2026-04-12T00:00:00Z")
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise invalid(field, f"expected a year from {FIRST_YEAR} to {LAST_YEAR}")
    return value


# --- a plan's settings -------------------------------------------------------------------


class DunningSettingsView(Answer):
    """A plan's dunning: ``enabled`` false means its accounts are never dunned."""

    plan: str
    enabled: bool
    grace_days: int
    max_notices: int | None
    notice_interval_days: int | None
    time_zone: str


def settings_view(found: DunningSettings) -> DunningSettingsView:
    """A plan's dunning settings as shown."""
    return DunningSettingsView(
        plan=found.plan_id,
        enabled=found.enabled,
        grace_days=found.grace_days,
        max_notices=found.max_notices,
        notice_interval_days=found.notice_interval_days,
        time_zone=found.time_zone,
    )


class SetDunning(Params):
    """A plan's dunning: notices, their interval and (optionally) the grace period."""

    max_notices: Notices
    notice_interval_days: IntervalDays
    grace_days: GraceDays | None = None


async def set_plan_dunning(request: web.Request, params: SetDunning) -> DunningSettingsView:
    """PUT /v1/plans/{plan_id}/dunning: set a plan's dunning (turns it on)."""
    found = await dunning_store.set_plan_settings(
        services_of(request).pool,
        request.match_info["plan_id"],
        params.max_notices,
        params.notice_interval_days,
        params.grace_days,
    )
    return settings_view(found)


async def get_plan_dunning(request: web.Request, params: None) -> DunningSettingsView:
    """GET /v1/plans/{plan_id}/dunning: a plan's dunning settings."""
    found = await dunning_store.plan_settings(
        services_of(request).pool, request.match_info["plan_id"]
    )
    return settings_view(found)


async def delete_plan_dunning(request: web.Request, params: None) -> DunningSettingsView:
    """DELETE /v1/plans/{plan_id}/dunning: the plan stops dunning (steps taken stay)."""
    found = await dunning_store.set_plan_settings(
        services_of(request).pool, request.match_info["plan_id"], None, None
    )
    return settings_view(found)


# --- a run -------------------------------------------------------------------------------


class RunDunning(Params):
    """A dunning run, on a given clock or now."""

    at: At | None = None


class StepView(Answer):
    """A step a run took."""

    invoice_id: int
    account: str
    step: Literal["notice", "suspension"]
    notice: int
    outcome: str


class DunningRunView(Answer):
    """What a run did: steps taken, accounts suspended and reactivated, live calls."""

    at: datetime
    steps: list[StepView]
    suspended: list[str]
    reactivated: list[str]
    calls_cut: list[str]
    calls_left: list[str]


def report_view(report: DunningReport) -> DunningRunView:
    """A run's report as shown."""
    return DunningRunView(
        at=report.at,
        steps=[
            StepView(
                invoice_id=s.invoice_id,
                account=s.account_id,
                step="notice" if s.step == "notice" else "suspension",
                notice=s.notice,
                outcome=s.outcome,
            )
            for s in report.steps
        ],
        suspended=report.suspended,
        reactivated=report.reactivated,
        calls_cut=report.calls_cut,
        calls_left=report.calls_left,
    )


async def run_dunning(request: web.Request, params: RunDunning) -> DunningRunView:
    """POST /v1/dunning/run: take every due dunning step now (or at ``at``)."""
    services = services_of(request)
    report = await dunning.run_dunning(
        services.pool,
        services.store,
        services.settings,
        instant(params.at),
        cutter=call_cutter(services),
        # A one-off run: a failure is this request's error; the backlog gauge is the
        # billing worker's, whose next run clears it (decision 0028).
        publish_backlog=False,
    )
    return report_view(report)


# --- an account's state --------------------------------------------------------------------


class NextStepView(Answer):
    """A step to come and when it is due."""

    step: Literal["notice", "suspension"]
    notice: int
    due_at: datetime


def next_view(step: Step | None) -> NextStepView | None:
    """A next step as shown."""
    if step is None:
        return None
    kind: Literal["notice", "suspension"] = "notice" if step.step == "notice" else "suspension"
    return NextStepView(step=kind, notice=step.notice, due_at=step.due_at)


class InvoiceDunningView(Answer):
    """An unpaid invoice: what it asks, what is paid, when it was due, what comes next."""

    invoice_id: int
    number: str | None
    currency: str
    invoice_date: date
    due_date: date
    overdue: bool
    asked: str
    paid: str
    outstanding: str
    notices_sent: int
    next_step: NextStepView | None


class StepTakenView(Answer):
    """A step taken for one of the account's invoices."""

    invoice_id: int
    number: str | None
    step: str
    notice: int
    due_at: datetime
    taken_at: datetime
    outcome: str


class AccountDunningView(Answer):
    """An account's dunning: unpaid invoices, steps taken, the next step, suspension."""

    account: str
    status: str
    suspended: bool
    suspended_by_dunning: bool
    suspended_at: datetime | None
    invoices: list[InvoiceDunningView]
    steps: list[StepTakenView]
    next_step: NextStepView | None
    next_step_invoice: int | None


def state_view(state: DunningState) -> AccountDunningView:
    """An account's dunning state as shown."""
    return AccountDunningView(
        account=state.account_id,
        status=state.status,
        suspended=state.suspended,
        suspended_by_dunning=state.suspended_by_dunning,
        suspended_at=state.suspended_at,
        invoices=[
            InvoiceDunningView(
                invoice_id=i.invoice.id,
                number=i.invoice.number,
                currency=i.invoice.currency,
                invoice_date=i.invoice.invoice_date,
                due_date=i.due_date,
                overdue=i.overdue,
                asked=amount_text(i.invoice.asked),
                paid=amount_text(i.invoice.paid),
                outstanding=amount_text(i.invoice.outstanding),
                notices_sent=len(i.invoice.notices),
                next_step=next_view(i.next_step),
            )
            for i in state.invoices
        ],
        steps=[
            StepTakenView(
                invoice_id=s["invoice_id"],
                number=s["number"],
                step=s["step"],
                notice=s["notice"],
                due_at=s["due_at"],
                taken_at=s["taken_at"],
                outcome=s["outcome"],
            )
            for s in state.steps
        ],
        next_step=next_view(state.next_step),
        next_step_invoice=state.next_step_invoice,
    )


class StateQuery(Params):
    """The clock the state is read at (default: now): what is overdue by then."""

    at: At | None = None


async def account_dunning(request: web.Request, params: StateQuery) -> AccountDunningView:
    """GET /v1/accounts/{account_id}/dunning: an account's dunning state."""
    account_id = validate_account_id(request.match_info["account_id"], "account_id")
    state = await dunning.account_state(services_of(request).pool, account_id, instant(params.at))
    return state_view(state)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "PUT",
        "/v1/plans/{plan_id}/dunning",
        Role.OPERATOR,
        "Set a plan's dunning: notices, their interval in days, the grace period",
        set_plan_dunning,
        SetDunning,
        DunningSettingsView,
        body_required=True,
        errors=(404,),
        description="After an invoice's due date (invoice date + grace days) its account gets"
        " up to max_notices notices, notice_interval_days apart, then is suspended."
        " grace_days left out keeps the plan's. 404: the plan has no billing settings.",
    ),
    Endpoint(
        "GET",
        "/v1/plans/{plan_id}/dunning",
        Role.VIEWER,
        "A plan's dunning settings",
        get_plan_dunning,
        None,
        DunningSettingsView,
        errors=(404,),
    ),
    Endpoint(
        "DELETE",
        "/v1/plans/{plan_id}/dunning",
        Role.OPERATOR,
        "Stop a plan's dunning (steps already taken stay)",
        delete_plan_dunning,
        None,
        DunningSettingsView,
        errors=(404,),
        answer_description="the settings, enabled false",
    ),
    Endpoint(
        "POST",
        "/v1/dunning/run",
        Role.OPERATOR,
        "Take every due dunning step: notices, suspensions, reactivations",
        run_dunning,
        RunDunning,
        DunningRunView,
        description="Idempotent for a given clock: each step of an invoice is taken once."
        " The billing worker runs it every pass. The steps are taken now, whatever the"
        " clock: `at` may replay a past instant, never one in the future (400 naming `at`"
        " past 5 minutes ahead of the server's clock).",
    ),
    Endpoint(
        "GET",
        "/v1/accounts/{account_id}/dunning",
        Role.VIEWER,
        "An account's dunning: unpaid invoices, notices sent, the next step, suspension",
        account_dunning,
        StateQuery,
        AccountDunningView,
        errors=(404,),
    ),
)
