"""Events and webhooks in the admin API (issue 14, decision 0029).

``POST/GET /v1/webhooks`` and ``PATCH/DELETE /v1/webhooks/{webhook_id}``
configure the endpoints events are POSTed to (``PATCH`` disables or enables
one): the secret is answered once, by the POST, and never again.
``GET /v1/events`` lists the outbox with each event's deliveries;
``POST /v1/events/{event_id}/replay`` sends an event again (its
deliveries not delivered re-queued, or the one to a named webhook, whatever its
state); ``POST /v1/events/replay-skipped`` sends the emails skipped when no SMTP
server was configured. A thin adapter over ``ocs.events``.
"""

from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ocs.events import queries, webhooks
from ocs.events.outbox import EVENT_KINDS
from ocs.events.queries import Delivery, StoredEvent
from ocs.events.webhooks import Webhook
from ocs.http.context import services_of
from ocs.http.endpoint import Answer, Endpoint, ObjectId, Params, Role
from ocs.http.path_ids import path_id
from ocs.whole_numbers import MAX_BIGINT as MAX_ID

Kind = Literal[EVENT_KINDS]  # type: ignore[valid-type]
State = Literal["pending", "delivered", "dead", "skipped"]
Url = Annotated[
    str,
    msgspec.Meta(
        min_length=8,
        max_length=webhooks.MAX_URL,
        pattern=r"^https?://[^\s/?#\x00-\x1f\x7f]+[^\s\x00-\x1f\x7f]*(?!\n)$",
        description="where events are POSTed: an http:// or https:// URL with a host name"
        " or IP address (and a port from 1 to 65535); not an address inside the network"
        " (loopback, link-local, private, multicast, unspecified) unless the server's"
        " webhook_allow_private is on",
        examples=["https://crm.example.com/hooks/ocs"],
    ),
]
Description = Annotated[str, msgspec.Meta(max_length=webhooks.MAX_DESCRIPTION)]
EventId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID, description="an event's id")]
Subject = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[^\x00-\x1f\x7f]{1,200}(?!\n)$",
        description="what events are about: an account's id (or an invoice's)",
        examples=["1001"],
    ),
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=queries.MAX_EVENTS, description="at most this many")]


class WebhookView(Answer):
    """A webhook endpoint: where events go, which kinds (none: every kind), enabled."""

    id: str
    url: str
    kinds: list[str]
    enabled: bool
    description: str
    created_at: datetime


class WebhookCreated(WebhookView):
    """A new endpoint and its signing secret (``whsec_...``): shown this once only."""

    secret: str


class WebhookList(Answer):
    """Webhook endpoints, by id (no secrets)."""

    webhooks: list[WebhookView]


def webhook_view(found: Webhook) -> WebhookView:
    """A webhook as shown (never its secret)."""
    return WebhookView(
        id=found.id,
        url=found.url,
        kinds=found.kinds,
        enabled=found.enabled,
        description=found.description,
        created_at=found.created_at,
    )


def created_view(found: Webhook) -> WebhookCreated:
    """A webhook just made, with its secret (the only answer that has it)."""
    return WebhookCreated(
        id=found.id,
        url=found.url,
        kinds=found.kinds,
        enabled=found.enabled,
        description=found.description,
        created_at=found.created_at,
        secret=found.secret,
    )


class DeliveryView(Answer):
    """One delivery of an event: to a webhook, or by email; its state and attempts."""

    id: int
    channel: str
    webhook_id: str | None
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None


class EventView(Answer):
    """An event of the outbox and its deliveries."""

    id: int
    kind: str
    subject: str
    data: dict[str, Any]
    created_at: datetime
    deliveries: list[DeliveryView]


class EventList(Answer):
    """Events, newest first."""

    events: list[EventView]


class Replayed(Answer):
    """The deliveries re-queued: pending, due now, attempts reset."""

    event_id: int
    deliveries: list[DeliveryView]


def delivery_view(found: Delivery) -> DeliveryView:
    """A delivery as shown."""
    return DeliveryView(
        id=found.id,
        channel=found.channel,
        webhook_id=found.webhook_id,
        state=found.state,
        attempts=found.attempts,
        next_attempt_at=found.next_attempt_at,
        last_status=found.last_status,
        last_error=found.last_error,
        delivered_at=found.delivered_at,
    )


def event_view(found: StoredEvent) -> EventView:
    """An event as shown, with its deliveries."""
    return EventView(
        id=found.id,
        kind=found.kind,
        subject=found.subject,
        data=found.data,
        created_at=found.created_at,
        deliveries=[delivery_view(d) for d in found.deliveries],
    )


# --- webhooks --------------------------------------------------------------------------


class CreateWebhook(Params):
    """A webhook endpoint: its URL, the kinds it takes (none: every kind), an id (none:
    one is made) and whether it is enabled."""

    url: Url
    kinds: list[Kind] = msgspec.field(default_factory=list)
    id: ObjectId | None = None
    enabled: bool = True
    description: Description = ""


async def create_webhook(request: web.Request, params: CreateWebhook) -> WebhookCreated:
    """POST /v1/webhooks: a new endpoint; its secret is in this answer only (201)."""
    services = services_of(request)
    found = await webhooks.create(
        services.pool,
        params.url,
        allow_private=services.settings.webhook_allow_private,
        webhook_id=params.id,
        kinds=list(params.kinds),
        enabled=params.enabled,
        description=params.description,
    )
    return created_view(found)


async def list_webhooks(request: web.Request, params: None) -> WebhookList:
    """GET /v1/webhooks: the endpoints, without their secrets."""
    found = await webhooks.list_webhooks(services_of(request).pool)
    return WebhookList(webhooks=[webhook_view(w) for w in found])


async def remove_webhook(request: web.Request, params: None) -> WebhookView:
    """DELETE /v1/webhooks/{webhook_id}: remove an endpoint and its pending deliveries."""
    webhook_id = webhooks.check_id(request.match_info["webhook_id"])
    return webhook_view(await webhooks.remove(services_of(request).pool, webhook_id))


class ChangeWebhook(Params):
    """Whether the endpoint is enabled: disabled, its events wait for it."""

    enabled: bool


async def change_webhook(request: web.Request, params: ChangeWebhook) -> WebhookView:
    """PATCH /v1/webhooks/{webhook_id}: disable an endpoint (its events wait) or enable it
    (they are sent, oldest first)."""
    webhook_id = webhooks.check_id(request.match_info["webhook_id"])
    changed = await webhooks.set_enabled(services_of(request).pool, webhook_id, params.enabled)
    return webhook_view(changed)


# --- events ----------------------------------------------------------------------------


class EventQuery(Params):
    """Which events: with a delivery in a state, of a kind, about a subject; a page."""

    state: State | None = None
    kind: Kind | None = None
    subject: Subject | None = None
    before_id: EventId | None = None
    limit: Limit = 100


async def list_events(request: web.Request, params: EventQuery) -> EventList:
    """GET /v1/events: events newest first, each with its deliveries."""
    found = await queries.list_events(
        services_of(request).pool,
        state=params.state,
        kind=params.kind,
        subject=params.subject,
        before_id=params.before_id,
        limit=params.limit,
    )
    return EventList(events=[event_view(e) for e in found])


class Replay(Params):
    """Only the delivery to this webhook (made if the event had none to it), sent again
    even if it was delivered; none named: every delivery not delivered."""

    webhook_id: ObjectId | None = None


def event_id_of(request: web.Request) -> int:
    """The ``event_id`` of the path: a positive whole number, else 400."""
    return path_id(request, "event_id")


async def replay_event(request: web.Request, params: Replay) -> Replayed:
    """POST /v1/events/{event_id}/replay: send an event again (its deliveries not
    delivered re-queued, or the one to the webhook named)."""
    event_id = event_id_of(request)
    found = await queries.requeue(services_of(request).pool, event_id, params.webhook_id)
    return Replayed(event_id=event_id, deliveries=[delivery_view(d) for d in found])


class ReplaySkipped(Params):
    """Which skipped emails: of events of a kind, stored from ``since`` to ``until``
    (UTC days, both included); none given: every one."""

    kind: Kind | None = None
    since: date | None = None
    until: date | None = None


class SkippedReplayed(Answer):
    """How many skipped emails were re-queued: pending, due now."""

    requeued: int


async def replay_skipped(request: web.Request, params: ReplaySkipped) -> SkippedReplayed:
    """POST /v1/events/replay-skipped: the emails skipped for want of an SMTP server,
    re-queued."""
    count = await queries.requeue_skipped_emails(
        services_of(request).pool, kind=params.kind, since=params.since, until=params.until
    )
    return SkippedReplayed(requeued=count)


ENDPOINTS: tuple[Endpoint[Any, Any], ...] = (
    Endpoint(
        "POST",
        "/v1/webhooks",
        Role.ADMIN,
        "Add a webhook endpoint: events of the kinds it takes are POSTed to it, signed",
        create_webhook,
        CreateWebhook,
        WebhookCreated,
        status=201,
        body_required=True,
        description="Signed the Standard Webhooks way (webhook-id, webhook-timestamp,"
        " webhook-signature). The secret is in this answer only: it is never shown again.",
    ),
    Endpoint(
        "GET",
        "/v1/webhooks",
        Role.ADMIN,
        "The webhook endpoints (without their secrets)",
        list_webhooks,
        None,
        WebhookList,
    ),
    Endpoint(
        "PATCH",
        "/v1/webhooks/{webhook_id}",
        Role.ADMIN,
        "Disable an endpoint (its events wait for it) or enable it (they are sent)",
        change_webhook,
        ChangeWebhook,
        WebhookView,
        body_required=True,
        errors=(404,),
        description="Disabled, nothing is sent to it: its deliveries wait (an attempt"
        " already under way ends as it does), none goes dead, and the events of its kinds"
        " stored meanwhile are kept for it; a replay naming it is refused (400). Enabled"
        " again, those events are sent, oldest first, each once. Setting the state it has"
        " changes nothing.",
        answer_description="the endpoint as it is now (no secret)",
    ),
    Endpoint(
        "DELETE",
        "/v1/webhooks/{webhook_id}",
        Role.ADMIN,
        "Remove a webhook endpoint; nothing more is sent to it",
        remove_webhook,
        None,
        WebhookView,
        errors=(404,),
        answer_description="the endpoint removed",
    ),
    Endpoint(
        "GET",
        "/v1/events",
        Role.VIEWER,
        "Events (subscriptions, invoices, payments, dunning, locks), newest first, with"
        " their deliveries",
        list_events,
        EventQuery,
        EventList,
        description="state=dead lists the events with a dead-lettered delivery.",
    ),
    Endpoint(
        "POST",
        "/v1/events/{event_id}/replay",
        Role.OPERATOR,
        "Send an event again: its deliveries not delivered (or the one to a webhook) re-queued",
        replay_event,
        Replay,
        Replayed,
        errors=(404,),
        description="Without webhook_id, the event's deliveries not delivered (dead or"
        " pending) become pending, due now, their attempts reset: a delivered one (an"
        " invoice's email, a webhook that took it) is not sent again. With webhook_id,"
        " that webhook's delivery is re-queued whatever its state (made if the event had"
        " none), and sent with the same webhook-id, so a receiver may drop a repeat. A"
        " delivery being sent at that moment is left to that attempt (not listed). A"
        " webhook_id of a disabled webhook, or one not taking the kind, is refused (400).",
    ),
    Endpoint(
        "POST",
        "/v1/events/replay-skipped",
        Role.OPERATOR,
        "Send the emails skipped when no SMTP server was configured",
        replay_skipped,
        ReplaySkipped,
        SkippedReplayed,
        description="Until 2026-12-07 a deliverer without smtp_host marked the invoice and"
        " dunning emails skipped, and a replay of an event leaves skipped deliveries alone."
        " This makes those email deliveries (skipped with 'smtp_host is not set', of events"
        " of kind, stored from since to until, UTC days) pending and due now; a worker with"
        " smtp_host sends them. An email that was sent (delivered), or skipped for another"
        " reason (no billing email), is not touched, so none is sent twice. A dunning"
        " reminder sent late may be stale: kind=invoice.posted leaves them out. 400 naming"
        " until when it is before since.",
    ),
)
