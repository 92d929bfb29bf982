"""Dunning on the `ocs` command line (decision 0028).

``ocs dunning settings PLAN [--max-notices N --interval-days D] [--grace-days G] [--off]``
shows or sets a plan's dunning; ``ocs dunning run [--at ISO-INSTANT]`` takes every
due step; ``ocs dunning show ACCOUNT [--at ISO-INSTANT]`` prints an account's state.
Each prints the admin API's own view. A run from the command line cuts no live
call (this process sends no Disconnect-Request): with ``dunning_live_calls =
"disconnect"`` they are listed under ``calls_left``, and finish.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
from typing import TYPE_CHECKING

from ocs.cli_support import (
    UsageError,
    add_command,
    add_group,
    checked,
    print_json,
    time_arg,
    to_builtins,
    with_services,
)
from ocs.config import Settings

if TYPE_CHECKING:
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register ``ocs dunning settings|run|show``."""
    group = add_group(commands, "dunning", "dunning: notices for unpaid invoices, suspension")
    settings = add_command(
        group, "settings", "show or set a plan's dunning (notices, interval)", _settings
    )
    settings.add_argument("plan")
    settings.add_argument("--max-notices", type=int, help="notices before suspension, 0-52")
    settings.add_argument(
        "--interval-days", type=int, help="days from a notice to the next step, 1-366"
    )
    settings.add_argument("--grace-days", type=int, help="days after the invoice date to pay")
    settings.add_argument("--off", action="store_true", help="stop the plan's dunning")
    run = add_command(group, "run", "take every due dunning step", _run)
    run.add_argument("--at", help="the run's clock, ISO 8601 with a zone (default: now)")
    show = add_command(group, "show", "an account's dunning state", _show)
    show.add_argument("account")
    show.add_argument("--at", help="the clock to read it at, ISO 8601 with a zone")


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs dunning settings``: show, set (both numbers) or turn off a plan's dunning."""
    from ocs.billing import dunning_store
    from ocs.http.dunning_handlers import settings_view

    numbers = (args.max_notices, args.interval_days)
    if args.off and (numbers != (None, None) or args.grace_days is not None):
        raise UsageError("--off: takes no other setting")
    if (args.max_notices is None) != (args.interval_days is None):
        raise UsageError("--max-notices and --interval-days go together")
    if args.max_notices is not None:
        checked(
            lambda: dunning_store.validate_settings(
                args.max_notices, args.interval_days, args.grace_days
            )
        )
    elif args.grace_days is not None:
        raise UsageError("--grace-days: give it with --max-notices and --interval-days")
    if args.off:
        found = with_services(
            settings, lambda s: dunning_store.set_plan_settings(s.pool, args.plan, None, None)
        )
    elif args.max_notices is not None:
        found = with_services(
            settings,
            lambda s: dunning_store.set_plan_settings(
                s.pool, args.plan, args.max_notices, args.interval_days, args.grace_days
            ),
        )
    else:
        found = with_services(settings, lambda s: dunning_store.plan_settings(s.pool, args.plan))
    print_json(to_builtins(settings_view(found)))
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs dunning run``: every due notice, suspension and reactivation, once."""
    from ocs.billing import dunning
    from ocs.http.dunning_handlers import instant, report_view

    at = checked(lambda: instant(time_arg(args.at, "--at"), "--at"))
    checked(lambda: dunning.check_run_clock(at, "--at"))
    report = with_services(
        settings,
        lambda s: dunning.run_dunning(s.pool, s.store, s.settings, at, publish_backlog=False),
    )
    print_json(to_builtins(report_view(report)))
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs dunning show``: an account's unpaid invoices, steps and next step."""
    from ocs.balances.accounts import validate_account_id
    from ocs.billing import dunning
    from ocs.http.dunning_handlers import instant, state_view

    account_id = checked(lambda: validate_account_id(args.account, "account"))
    at = checked(lambda: instant(time_arg(args.at, "--at"), "--at"))
    state = with_services(settings, lambda s: dunning.account_state(s.pool, account_id, at))
    print_json(to_builtins(state_view(state)))
    return 0
