"""Events and webhooks on the `ocs` command line (issue 14, decision 0029).

``ocs webhooks add|list|remove|disable|enable`` configure the endpoints events
are POSTed to (``add`` prints the secret, the only time it is shown; a disabled
one's events wait for it to be enabled); ``ocs events list``
shows the outbox with each event's deliveries (``--state dead``: what was
dead-lettered), ``ocs events replay EVENT_ID [--webhook ID]`` sends an event
again (what was not delivered; with ``--webhook``, that delivery even if it
was), ``ocs events replay-skipped [--kind K] [--since DAY] [--until DAY]``
sends the emails skipped when no SMTP server was configured (those only: none
is sent twice), and ``ocs events deliver`` delivers what is due once (webhooks
and emails), as the billing worker's deliverer does all the time. Each prints the
admin API's own view of what it did.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
import dataclasses
from typing import TYPE_CHECKING

from ocs.cli_support import (
    UsageError,
    add_command,
    add_group,
    checked,
    date_arg,
    positive_bigint,
    print_json,
    to_builtins,
    with_services,
)
from ocs.config import Settings

if TYPE_CHECKING:
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register ``ocs webhooks`` and ``ocs events``."""
    from ocs.events.outbox import EVENT_KINDS
    from ocs.events.queries import DELIVERY_STATES

    hooks = add_group(commands, "webhooks", "webhook endpoints events are POSTed to")
    add = add_command(hooks, "add", "add an endpoint (prints its secret, once)", _webhooks_add)
    add.add_argument("url", help="where events are POSTed, http:// or https://")
    add.add_argument("--id", help="its id (default: one is made)")
    add.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=EVENT_KINDS,
        help="an event kind it takes (repeat; none: every kind)",
    )
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add.add_argument("--description", default="", help="what it is for")
    add_command(hooks, "list", "list the endpoints (no secrets)", _webhooks_list)
    remove = add_command(hooks, "remove", "remove an endpoint", _webhooks_remove)
    remove.add_argument("id", help="the endpoint's id")
    disable = add_command(
        hooks, "disable", "stop sending to an endpoint (its events wait)", _webhooks_disable
    )
    disable.add_argument("id", help="the endpoint's id")
    enable = add_command(
        hooks, "enable", "send to an endpoint again (what waited first)", _webhooks_enable
    )
    enable.add_argument("id", help="the endpoint's id")

    events = add_group(commands, "events", "notification and provisioning events")
    listed = add_command(events, "list", "events, newest first, with deliveries", _events_list)
    listed.add_argument("--state", choices=DELIVERY_STATES, help="with a delivery in this state")
    listed.add_argument("--kind", choices=EVENT_KINDS)
    listed.add_argument("--subject", help="about this account (or invoice)")
    listed.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    replay = add_command(
        events, "replay", "send an event again where it was not delivered", _events_replay
    )
    replay.add_argument("event_id", type=positive_bigint, help="the event's id")
    replay.add_argument(
        "--webhook", help="only its delivery to this webhook (sent again even if delivered)"
    )
    skipped = add_command(
        events,
        "replay-skipped",
        "send the emails skipped when no SMTP server was configured",
        _events_replay_skipped,
    )
    skipped.add_argument("--kind", choices=EVENT_KINDS, help="of events of this kind only")
    skipped.add_argument("--since", help="of events stored on or after this day (UTC)")
    skipped.add_argument("--until", help="of events stored on or before this day (UTC)")
    add_command(events, "deliver", "deliver the due events once", _events_deliver)


def _webhooks_add(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs webhooks add``: a new endpoint, checked before any store opens."""
    from ocs.events import webhooks
    from ocs.http.event_handlers import created_view

    allow_private = settings.webhook_allow_private
    checked(lambda: webhooks.check_url(args.url, allow_private=allow_private))
    if args.id is not None:
        checked(lambda: webhooks.check_id(args.id, "--id"))
    if len(args.description) > webhooks.MAX_DESCRIPTION:
        raise UsageError(f"--description: at most {webhooks.MAX_DESCRIPTION} characters")
    found = with_services(
        settings,
        lambda s: webhooks.create(
            s.pool,
            args.url,
            allow_private=allow_private,
            webhook_id=args.id,
            kinds=args.kind,
            enabled=not args.disabled,
            description=args.description,
        ),
    )
    print_json(to_builtins(created_view(found)))
    return 0


def _webhooks_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs webhooks list``: the endpoints, without their secrets."""
    from ocs.events import webhooks
    from ocs.http.event_handlers import webhook_view

    found = with_services(settings, lambda s: webhooks.list_webhooks(s.pool))
    print_json({"webhooks": [to_builtins(webhook_view(w)) for w in found]})
    return 0


def _webhooks_remove(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs webhooks remove``: remove an endpoint (exit 1: there is none)."""
    from ocs.events import webhooks
    from ocs.http.event_handlers import webhook_view

    checked(lambda: webhooks.check_id(args.id, "id"))
    removed = with_services(settings, lambda s: webhooks.remove(s.pool, args.id))
    print_json({"removed": to_builtins(webhook_view(removed))})
    return 0


def _webhooks_disable(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs webhooks disable``: nothing more is sent to it; its events wait (exit 1:
    there is no such endpoint)."""
    return _webhooks_set_enabled(args.id, False, settings)


def _webhooks_enable(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs webhooks enable``: its waiting events are sent, oldest first (exit 1: there
    is no such endpoint)."""
    return _webhooks_set_enabled(args.id, True, settings)


def _webhooks_set_enabled(webhook_id: str, enabled: bool, settings: Settings) -> int:
    """Disable or enable an endpoint; prints it as the API answers it."""
    from ocs.events import webhooks
    from ocs.http.event_handlers import webhook_view

    checked(lambda: webhooks.check_id(webhook_id, "id"))
    changed = with_services(settings, lambda s: webhooks.set_enabled(s.pool, webhook_id, enabled))
    print_json(to_builtins(webhook_view(changed)))
    return 0


def _events_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs events list``: events newest first, each with its deliveries."""
    from ocs.events import queries
    from ocs.http.event_handlers import event_view

    if not 1 <= args.limit <= queries.MAX_EVENTS:
        raise UsageError(f"--limit: from 1 to {queries.MAX_EVENTS}")
    found = with_services(
        settings,
        lambda s: queries.list_events(
            s.pool, state=args.state, kind=args.kind, subject=args.subject, limit=args.limit
        ),
    )
    print_json({"events": [to_builtins(event_view(e)) for e in found]})
    return 0


def _events_replay(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs events replay``: re-queue an event's deliveries not delivered, or the one to
    ``--webhook`` (exit 1: no such event)."""
    from ocs.events import queries, webhooks
    from ocs.http.event_handlers import Replayed, delivery_view

    if args.webhook is not None:
        checked(lambda: webhooks.check_id(args.webhook, "--webhook"))
    found = with_services(settings, lambda s: queries.requeue(s.pool, args.event_id, args.webhook))
    replayed = Replayed(event_id=args.event_id, deliveries=[delivery_view(d) for d in found])
    print_json(to_builtins(replayed))
    return 0


def _events_replay_skipped(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs events replay-skipped``: re-queue the emails skipped for want of an SMTP
    server (of a kind, of events stored between two days); how many."""
    from ocs.events import queries
    from ocs.http.event_handlers import SkippedReplayed

    since = date_arg(args.since, "--since")
    until = date_arg(args.until, "--until")
    if since is not None and until is not None and until < since:
        raise UsageError("--until: a day on or after --since")
    count = with_services(
        settings,
        lambda s: queries.requeue_skipped_emails(s.pool, kind=args.kind, since=since, until=until),
    )
    print_json(to_builtins(SkippedReplayed(requeued=count)))
    return 0


def _events_deliver(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs events deliver``: one delivery pass (webhooks, and emails when ``smtp_host``
    is set); what it did."""
    from ocs.billing.notify_email import senders
    from ocs.events.delivery import deliver_pending

    chosen = senders(settings)  # no smtp_host: emails are left pending for a worker with it
    report = with_services(settings, lambda s: deliver_pending(s.pool, settings, senders=chosen))
    print_json(dataclasses.asdict(report))
    return 0
