"""The billing rules on the `ocs` command line: taxes, surcharges and bundles.

``ocs taxes create|list|assign|unassign|exempt|unexempt|code``,
``ocs surcharges create|list|remove`` and ``ocs bundles create|list|attach|detach``,
each a small handler over ``ocs.billing.rules_store`` printing the admin API's
own view of what it did (decision 0024). Rates are written as a decimal percent
("20", "8.875"); a bundle is a JSON file (``--file``) in the form of the body of
``POST /v1/bundles``, validated by the same declaration, so a bad rule is named
as the API names it (``rules[1].allowance``).

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ocs.cli_support import (
    add_command,
    add_group,
    amount_arg,
    checked,
    date_arg,
    positive_bigint,
    print_json,
    read_bytes,
    to_builtins,
    with_services,
)
from ocs.config import Settings

if TYPE_CHECKING:
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register ``ocs taxes``, ``ocs surcharges`` and ``ocs bundles``."""
    _add_taxes(commands)
    _add_surcharges(commands)
    _add_bundles(commands)


def _target(parser: argparse.ArgumentParser, *, tax_code: bool) -> None:
    """The one target of an assignment or surcharge: a tax code, a zone or a charge."""
    which = parser.add_mutually_exclusive_group(required=True)
    if tax_code:
        which.add_argument("--tax-code", help="the tax code charges and zones carry, e.g. STD")
    which.add_argument("--zone", help="a zone's usage lines, e.g. 'UK Mobile'")
    which.add_argument("--charge", help="a charge's lines (its id)")


def _add_taxes(commands: "Commands") -> None:
    """taxes create, list, assign, unassign, exempt, unexempt and code."""
    from ocs.billing.rules_store import CODE_TABLES
    from ocs.billing.taxes import LEVELS

    taxes = add_group(commands, "taxes", "taxes, plans' tax assignments, exemptions, tax codes")
    create = add_command(taxes, "create", "define a tax", _taxes_create)
    create.add_argument("code", help="the tax's code, e.g. GB-VAT")
    create.add_argument("--name", required=True, help="as the invoice shows it, e.g. VAT")
    create.add_argument("--rate", required=True, help="a percentage, e.g. 20 or 8.875")
    create.add_argument("--level", required=True, choices=LEVELS, help="its jurisdiction level")
    create.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR")
    create.add_argument("--valid-from", required=True, help="YYYY-MM-DD")
    create.add_argument("--valid-until", help="the first day it no longer applies, YYYY-MM-DD")
    create.add_argument("--compound", action="store_true", help="a tax on the other taxes")
    listed = add_command(taxes, "list", "list taxes", _taxes_list)
    listed.add_argument("--code")
    listed.add_argument("--currency")
    listed.add_argument("--valid-on", help="only taxes in force on this day, YYYY-MM-DD")
    assign = add_command(
        taxes, "assign", "assign a tax to a plan's tax code, zone or charge", _taxes_assign
    )
    assign.add_argument("plan")
    assign.add_argument("tax")
    _target(assign, tax_code=True)
    unassign = add_command(taxes, "unassign", "remove a plan's tax assignment", _taxes_unassign)
    unassign.add_argument("plan")
    unassign.add_argument("tax")
    _target(unassign, tax_code=True)
    exempt = add_command(taxes, "exempt", "make an account exempt from taxes", _taxes_exempt)
    exempt.add_argument("account")
    exempt.add_argument("--reference", required=True, help="the exemption certificate")
    exempt.add_argument(
        "--level", action="append", required=True, choices=LEVELS, help="a level (repeatable)"
    )
    unexempt = add_command(taxes, "unexempt", "end an account's exemption", _taxes_unexempt)
    unexempt.add_argument("account")
    code = add_command(
        taxes, "code", "set the tax code of a zone, a product or a rate type", _taxes_code
    )
    code.add_argument("kind", choices=tuple(CODE_TABLES))
    code.add_argument("key", help="the zone, product code or rate type")
    code.add_argument("tax_code", help="e.g. STD")


def _add_surcharges(commands: "Commands") -> None:
    """surcharges create, list and remove."""
    surcharges = add_group(commands, "surcharges", "plans' surcharges on zone or charge lines")
    create = add_command(surcharges, "create", "add a surcharge to a plan", _surcharges_create)
    create.add_argument("id")
    create.add_argument("--plan", required=True)
    create.add_argument("--name", required=True, help="as the invoice shows it")
    how = create.add_mutually_exclusive_group(required=True)
    how.add_argument("--rate", help="a percentage of the target's lines, e.g. 2.5")
    how.add_argument("--amount", help="a flat amount once per invoice, e.g. 1.50")
    _target(create, tax_code=False)
    listed = add_command(surcharges, "list", "list a plan's surcharges", _surcharges_list)
    listed.add_argument("--plan", required=True)
    remove = add_command(surcharges, "remove", "remove a plan's surcharge", _surcharges_remove)
    remove.add_argument("id")
    remove.add_argument("--plan", required=True)


def _add_bundles(commands: "Commands") -> None:
    """bundles create, list, attach and detach."""
    bundles = add_group(commands, "bundles", "bundles: free units, discounts, commitments, fees")
    create = add_command(bundles, "create", "define a bundle from a JSON file", _bundles_create)
    create.add_argument(
        "--file",
        required=True,
        type=Path,
        help="JSON: the body of POST /v1/bundles (id, name, currency, indicators, rules)",
    )
    listed = add_command(bundles, "list", "list bundles", _bundles_list)
    listed.add_argument("--currency")
    attach = add_command(bundles, "attach", "put a bundle on a subscription", _bundles_attach)
    attach.add_argument("subscription", type=positive_bigint)
    attach.add_argument("bundle")
    attach.add_argument("--start", help="YYYY-MM-DD (default: the subscription's start)")
    attach.add_argument("--end", help="first day without it, YYYY-MM-DD")
    detach = add_command(bundles, "detach", "end a subscription's bundle on a day", _bundles_detach)
    detach.add_argument("subscription", type=positive_bigint)
    detach.add_argument("bundle")
    detach.add_argument(
        "--on", required=True, help="its first day without, YYYY-MM-DD (a fee before its term)"
    )


def _target_of(args: argparse.Namespace) -> tuple[str, str]:
    """(target kind, target) of the one target flag given."""
    for kind in ("tax_code", "zone", "charge"):
        value = getattr(args, kind, None)
        if value is not None:
            return kind, value
    raise AssertionError("argparse requires one target")  # pragma: no cover


# --- taxes -----------------------------------------------------------------------------


def _taxes_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs taxes create``: define a tax, checked before any store opens."""
    from ocs.billing import rules_store
    from ocs.billing.taxes import Tax
    from ocs.http.tax_handlers import tax_view

    valid_from = date_arg(args.valid_from, "--valid-from")
    assert valid_from is not None  # a required argument
    tax = Tax(
        args.code,
        args.name,
        checked(lambda: rules_store.parse_rate(args.rate, "--rate")),
        args.level,
        args.currency,
        valid_from,
        date_arg(args.valid_until, "--valid-until"),
        args.compound,
    )
    checked(lambda: rules_store.validate_tax(tax))
    created = with_services(settings, lambda s: rules_store.create_tax(s.pool, tax))
    print_json(to_builtins(tax_view(created)))
    return 0


def _taxes_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs taxes list``: taxes by code, filtered by code, currency and day."""
    from ocs.billing import rules_store
    from ocs.http.tax_handlers import tax_view

    day = date_arg(args.valid_on, "--valid-on")
    found = with_services(
        settings,
        lambda s: rules_store.list_taxes(
            s.pool, code=args.code, currency=args.currency, valid_on=day
        ),
    )
    print_json({"taxes": [to_builtins(tax_view(t)) for t in found]})
    return 0


def _taxes_assign(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs taxes assign``: a tax on a plan's tax code, zone or charge (a repeat: no-op)."""
    from ocs.billing import rules_store
    from ocs.http.tax_handlers import plan_tax_view

    kind, target = _target_of(args)
    found, made = with_services(
        settings, lambda s: rules_store.assign(s.pool, args.plan, args.tax, kind, target)
    )
    print_json({**to_builtins(plan_tax_view(found)), "assigned_now": made})
    return 0


def _taxes_unassign(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs taxes unassign``: remove a plan's tax assignment (exit 1: there was none)."""
    from ocs.billing import rules_store
    from ocs.http.tax_handlers import plan_tax_view

    kind, target = _target_of(args)
    removed = with_services(
        settings, lambda s: rules_store.unassign(s.pool, args.plan, args.tax, kind, target)
    )
    print_json({"removed": to_builtins(plan_tax_view(removed))})
    return 0


def _taxes_exempt(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs taxes exempt``: an account exempt from taxes of the levels given."""
    from ocs.billing import rules_store
    from ocs.http.tax_handlers import exemption_view

    found = with_services(
        settings, lambda s: rules_store.exempt(s.pool, args.account, args.reference, args.level)
    )
    print_json(to_builtins(exemption_view(args.account, found)))
    return 0


def _taxes_unexempt(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs taxes unexempt``: end an account's exemption (exit 1: it had none)."""
    from ocs.billing import rules_store
    from ocs.http.tax_handlers import exemption_view

    ended = with_services(settings, lambda s: rules_store.unexempt(s.pool, args.account))
    print_json({"removed": to_builtins(exemption_view(args.account, ended))})
    return 0


def _taxes_code(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs taxes code``: the tax code of a zone, a product or a rate type."""
    from ocs.billing import rules_store
    from ocs.http.tax_handlers import tax_code_view

    found = with_services(
        settings, lambda s: rules_store.set_tax_code(s.pool, args.kind, args.key, args.tax_code)
    )
    print_json(to_builtins(tax_code_view(found)))
    return 0


# --- surcharges ------------------------------------------------------------------------


def _surcharges_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs surcharges create``: a percent or flat surcharge on a zone's or charge's lines."""
    from ocs.billing import rules_store
    from ocs.billing.surcharges import Surcharge
    from ocs.http.bundle_handlers import surcharge_view

    kind, target = _target_of(args)
    rate = (
        None if args.rate is None else checked(lambda: rules_store.parse_rate(args.rate, "--rate"))
    )
    amount = None if args.amount is None else amount_arg(args.amount, "--amount")
    surcharge = Surcharge(
        args.id, args.name, "percent" if rate is not None else "flat", kind, target, rate, amount
    )
    checked(lambda: rules_store.validate_surcharge(surcharge))
    created = with_services(
        settings, lambda s: rules_store.create_surcharge(s.pool, args.plan, surcharge)
    )
    print_json(to_builtins(surcharge_view(args.plan, created)))
    return 0


def _surcharges_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs surcharges list``: a plan's surcharges."""
    from ocs.billing import rules_store
    from ocs.http.bundle_handlers import surcharge_view

    found = with_services(settings, lambda s: rules_store.list_surcharges(s.pool, args.plan))
    print_json({"surcharges": [to_builtins(surcharge_view(args.plan, x)) for x in found]})
    return 0


def _surcharges_remove(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs surcharges remove``: remove a plan's surcharge (exit 1: it had none)."""
    from ocs.billing import rules_store
    from ocs.http.bundle_handlers import surcharge_view

    removed = with_services(
        settings, lambda s: rules_store.remove_surcharge(s.pool, args.plan, args.id)
    )
    print_json({"removed": to_builtins(surcharge_view(args.plan, removed))})
    return 0


# --- bundles ---------------------------------------------------------------------------


def _bundles_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs bundles create``: a bundle from a JSON file, checked before any store opens."""
    from ocs.billing import rules_store
    from ocs.http.bundle_handlers import bundle_view, decode_bundle

    text = read_bytes(args.file, "--file")
    bundle = checked(lambda: decode_bundle(text))
    checked(lambda: rules_store.validate_bundle(bundle))
    created = with_services(settings, lambda s: rules_store.create_bundle(s.pool, bundle))
    print_json(to_builtins(bundle_view(created)))
    return 0


def _bundles_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs bundles list``: bundles with their indicators and rules."""
    from ocs.billing import rules_store
    from ocs.http.bundle_handlers import bundle_view

    found = with_services(
        settings, lambda s: rules_store.list_bundles(s.pool, currency=args.currency)
    )
    print_json({"bundles": [to_builtins(bundle_view(b)) for b in found]})
    return 0


def _bundles_attach(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs bundles attach``: put a bundle on a subscription from a day to a day."""
    from ocs.billing import rules_store
    from ocs.http.bundle_handlers import held_view

    start, end = date_arg(args.start, "--start"), date_arg(args.end, "--end")
    held = with_services(
        settings,
        lambda s: rules_store.attach(
            s.pool, args.subscription, args.bundle, start_date=start, end_date=end
        ),
    )
    print_json(to_builtins(held_view(held)))
    return 0


def _bundles_detach(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs bundles detach``: end a subscription's bundle on a day."""
    from ocs.billing import rules_store
    from ocs.http.bundle_handlers import held_view

    on = date_arg(args.on, "--on")
    assert on is not None  # a required argument
    ended = with_services(
        settings, lambda s: rules_store.detach(s.pool, args.subscription, args.bundle, on)
    )
    print_json({"bundles": [to_builtins(held_view(h)) for h in ended]})
    return 0
