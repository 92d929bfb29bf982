"""Payments on the `ocs` command line (decision 0027).

``ocs payments add ACCOUNT --amount 10.00 --reference R [--currency EUR]``
records a payment received by hand (once per reference), ``ocs payments list
[--account A]`` lists them, ``ocs payments refund PAYMENT --amount X`` gives
back part of a payment's credit, and ``ocs payments import FILE [--format
csv|camt053]`` applies a bank statement. Each prints the admin API's own view
of what it did.

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
    """Register ``ocs payments add|list|refund|import``."""
    group = add_group(commands, "payments", "payments received: by hand, bank files; refunds")
    add = add_command(group, "add", "record a payment received by hand", _payments_add)
    add.add_argument("account", help="the paying account's id")
    add.add_argument("--amount", required=True, help="a decimal amount, e.g. 10.00")
    add.add_argument(
        "--reference", required=True, help="the payment's own reference: recorded once"
    )
    add.add_argument("--currency", help="ISO 4217 code (default: the account's)")
    add.add_argument("--received-on", help="the value date, YYYY-MM-DD (default: today)")
    listed = add_command(group, "list", "list payments, newest first", _payments_list)
    listed.add_argument("--account", help="only this account's")
    listed.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    refund = add_command(group, "refund", "refund part of a payment's credit", _payments_refund)
    refund.add_argument("payment", type=positive_bigint, metavar="PAYMENT", help="the payment's id")
    refund.add_argument("--amount", required=True, help="a decimal amount, e.g. 5.00")
    refund.add_argument("--reference", help="the refund's own reference: made once")
    imported = add_command(group, "import", "apply a bank statement file", _payments_import)
    imported.add_argument("file", type=Path, help="a CSV or camt.053 XML statement")
    imported.add_argument(
        "--format", choices=("csv", "camt053"), help="the file's format (default: detected)"
    )


def _payments_add(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs payments add``: record a payment by hand, checked before any store opens."""
    from ocs.billing import payments
    from ocs.http.payment_handlers import payment_result

    new = payments.NewPayment(
        account_id=args.account,
        amount=amount_arg(args.amount, "--amount"),
        source="manual",
        external_id=args.reference,
        currency=args.currency.upper() if args.currency else None,
        reference=args.reference,
        received_on=date_arg(args.received_on, "--received-on"),
    )
    checked(lambda: payments.check_new(new))
    done = with_services(settings, lambda s: payments.record_payment(s.pool, s.store, new))
    print_json({**to_builtins(payment_result(done)), "created": done.created})
    return 0


def _payments_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs payments list``: payments, newest first."""
    from ocs.billing import payments
    from ocs.http.payment_handlers import payment_view

    if not 1 <= args.limit <= payments.MAX_LIST:
        raise UsageError(f"--limit: expected 1 to {payments.MAX_LIST}")
    found = with_services(
        settings, lambda s: payments.list_payments(s.pool, args.account, args.limit)
    )
    print_json({"payments": [to_builtins(payment_view(p)) for p in found]})
    return 0


def _payments_refund(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs payments refund``: refund part of a payment's credit."""
    from ocs.billing import payments
    from ocs.http.payment_handlers import refund_view

    payment_id: int = args.payment
    amount = amount_arg(args.amount, "--amount")
    if amount <= 0:
        raise UsageError("--amount: a refund must be greater than zero")
    done = with_services(
        settings,
        lambda s: payments.refund_payment(s.pool, s.store, payment_id, amount, args.reference),
    )
    print_json({**to_builtins(refund_view(done)), "created": done.created})
    return 0


def _payments_import(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs payments import``: apply a bank statement; exit 1 when entries were left
    unapplied (listed in the output)."""
    from ocs.billing import bank_files, payments
    from ocs.http.payment_handlers import import_view

    data = read_bytes(args.file, "FILE")
    parsed = checked(lambda: bank_files.parse(data, args.format))
    report = with_services(settings, lambda s: payments.import_bank_file(s.pool, s.store, parsed))
    print_json(to_builtins(import_view(report)))
    return 1 if report.unmatched else 0
