"""Number sets, accounts' numbers and IVR settings on the `ocs` command line
(decision 0030).

``ocs number-sets create|list|import|assign``, ``ocs numbers take|release|list`` and
``ocs ivr plan|account``: each a small handler over ``ocs.billing.number_sets`` or
``ocs.balances.ivr`` printing the admin API's own view of what it did.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ocs.cli_support import (
    UsageError,
    add_command,
    add_group,
    checked,
    date_arg,
    print_json,
    read_bytes,
    to_builtins,
    with_services,
)
from ocs.config import Settings

if TYPE_CHECKING:
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register ``ocs number-sets``, ``ocs numbers`` and ``ocs ivr``."""
    _add_number_sets(commands)
    _add_numbers(commands)
    _add_ivr(commands)


def _add_number_sets(commands: "Commands") -> None:
    """number-sets create, list, import and assign."""
    sets = add_group(commands, "number-sets", "pools of DIDs and toll-free numbers for plans")
    create = add_command(sets, "create", "create an empty number set", _sets_create)
    create.add_argument("id")
    create.add_argument("--kind", required=True, choices=("did", "toll_free"))
    create.add_argument("--name", default="")
    add_command(sets, "list", "list number sets with their free numbers", _sets_list)
    imported = add_command(sets, "import", "add a CSV's numbers to a set", _sets_import)
    imported.add_argument("id")
    imported.add_argument("file", type=Path, help="CSV: a number column, optionally on_net")
    assign = add_command(sets, "assign", "let a plan's accounts take a set's numbers", _assign)
    assign.add_argument("id")
    assign.add_argument("--plan", required=True)
    assign.add_argument("--priority", required=True, type=int, help="higher: drawn first")
    assign.add_argument("--charge", help="the triggered charge (default: by the set's kind)")


def _add_numbers(commands: "Commands") -> None:
    """numbers take, release and list."""
    numbers = add_group(commands, "numbers", "the numbers accounts hold")
    take = add_command(numbers, "take", "give an account a number of its plan's sets", _take)
    take.add_argument("account")
    take.add_argument("--number", help="this number (default: the next free one)")
    take.add_argument(
        "--on", help="from this day, YYYY-MM-DD (default: today where the plan bills)"
    )
    take.add_argument(
        "--take-id", help="idempotency key: a repeat with this id takes no second number"
    )
    release = add_command(numbers, "release", "an account gives a number back", _release)
    release.add_argument("account")
    release.add_argument("number")
    release.add_argument(
        "--on", help="its first day without, YYYY-MM-DD (default: today where the plan bills)"
    )
    listed = add_command(numbers, "list", "the numbers an account holds", _numbers_list)
    listed.add_argument("account")


def _add_ivr(commands: "Commands") -> None:
    """ivr plan and account."""
    from ocs.catalog.plan_ivr import ANNOUNCE

    ivr = add_group(commands, "ivr", "what IVRs announce, their language, plans' voicemail")
    plan = add_command(ivr, "plan", "show or set a plan's IVR default and voicemail", _ivr_plan)
    plan.add_argument("plan")
    plan.add_argument("--announce", choices=ANNOUNCE)
    plan.add_argument("--language", help="a language tag, e.g. en; 'none': each account's")
    plan.add_argument("--voicemail-server", help="a SIP URI or host[:port]")
    plan.add_argument("--voicemail", choices=("on", "off"), help="forward unanswered calls")
    account = add_command(ivr, "account", "show or set an account's IVR override", _ivr_account)
    account.add_argument("account")
    account.add_argument("--announce", choices=ANNOUNCE)
    account.add_argument("--language", help="a language tag, e.g. en")
    account.add_argument("--clear", action="store_true", help="back to the plan's default")


# --- number sets -----------------------------------------------------------------------


def _sets_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs number-sets create``."""
    from ocs.billing import number_sets
    from ocs.http.number_set_handlers import set_view

    checked(lambda: number_sets.validate_set_id(args.id))
    made = with_services(
        settings, lambda s: number_sets.create_set(s.pool, args.id, args.kind, args.name)
    )
    print_json(to_builtins(set_view(made)))
    return 0


def _sets_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs number-sets list``."""
    from ocs.billing import number_sets
    from ocs.http.number_set_handlers import set_view

    found = with_services(settings, lambda s: number_sets.list_sets(s.pool))
    print_json({"number_sets": [to_builtins(set_view(n)) for n in found]})
    return 0


def _sets_import(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs number-sets import``: all or nothing, bad lines named."""
    from ocs.billing import number_sets

    try:
        text = read_bytes(args.file, "FILE").decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"FILE: {args.file} is not UTF-8 text") from None
    added = with_services(settings, lambda s: number_sets.import_numbers(s.pool, args.id, text))
    print_json({"number_set": args.id, "added": added})
    return 0


def _assign(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs number-sets assign``."""
    from ocs.billing import number_sets

    done = with_services(
        settings,
        lambda s: number_sets.assign_to_plan(
            s.pool, args.id, args.plan, args.priority, args.charge
        ),
    )
    print_json(
        {
            "number_set": args.id,
            "plan": done.plan_id,
            "priority": done.priority,
            "charge": done.charge_id,
        }
    )
    return 0


# --- accounts' numbers -----------------------------------------------------------------


def _take(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs numbers take``."""
    from ocs.billing import number_sets
    from ocs.http.number_set_handlers import taken_view

    on = date_arg(args.on, "--on")
    if args.number is not None:
        checked(lambda: number_sets.validate_number(args.number, "--number"))
    if args.take_id is not None:
        checked(lambda: number_sets.validate_take_id(args.take_id, "--take-id"))
    taken = with_services(
        settings,
        lambda s: number_sets.take_number(
            s.pool, s.store, args.account, args.number, on, args.take_id
        ),
    )
    print_json(to_builtins(taken_view(taken)))
    return 0


def _release(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs numbers release``."""
    from ocs.billing import number_sets

    on = date_arg(args.on, "--on")
    checked(lambda: number_sets.validate_number(args.number, "NUMBER"))
    with_services(
        settings, lambda s: number_sets.release(s.pool, s.store, args.account, args.number, on)
    )
    print_json({"account": args.account, "number": args.number.lstrip("+")})
    return 0


def _numbers_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs numbers list``."""
    from ocs.billing import number_sets
    from ocs.http.number_set_handlers import number_view

    found = with_services(settings, lambda s: number_sets.numbers_of(s.pool, args.account))
    print_json({"numbers": [to_builtins(number_view(t)) for t in found]})
    return 0


# --- IVR settings ----------------------------------------------------------------------


def _ivr_plan(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs ivr plan``: without flags, show; with any, change those and keep the rest."""
    from dataclasses import replace

    from ocs.catalog import plan_ivr, plan_ivr_store
    from ocs.http.card_handlers import plan_ivr_view

    changes: dict[str, object] = {}
    if args.announce is not None:
        changes["announce"] = args.announce
    if args.language is not None:
        changes["language"] = None if args.language == "none" else args.language
    if args.voicemail_server is not None:
        changes["voicemail_server"] = args.voicemail_server
    if args.voicemail is not None:
        changes["voicemail_enabled"] = args.voicemail == "on"

    async def run(services: "Services") -> plan_ivr.PlanIvr:
        """Read, change what the flags say, store."""
        current = await plan_ivr_store.plan_ivr(services.pool, args.plan)
        if not changes:
            return current
        wanted = replace(current, **changes)  # type: ignore[arg-type]
        return await plan_ivr_store.set_plan_ivr(services.pool, wanted)

    print_json(to_builtins(plan_ivr_view(with_services(settings, run))))
    return 0


def _ivr_account(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs ivr account``: without flags, show; ``--clear``: back to the plan's."""
    from ocs.balances import ivr

    if args.clear and (args.announce or args.language):
        raise UsageError("--clear: not with --announce or --language")

    async def run(services: "Services") -> ivr.AccountIvr:
        """Read, change what the flags say, store."""
        current = await ivr.account_ivr(services.pool, args.account)
        if args.clear:
            wanted = ivr.AccountIvr(args.account)
        elif args.announce is None and args.language is None:
            return current
        else:
            wanted = ivr.AccountIvr(
                args.account, args.announce or current.announce, args.language or current.language
            )
        return await ivr.set_account_ivr(services.pool, services.store, wanted)

    found = with_services(settings, run)
    print_json(
        {"account": found.account_id, "announce": found.announce, "language": found.language}
    )
    return 0


if TYPE_CHECKING:
    from ocs.services import Services
