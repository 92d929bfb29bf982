"""The `ocs` command line: serve, demo, migrations, plans, tariffs, area codes and accounts.

Each command (and each action of a command group) is one small handler registered
with its argparse parser (``set_defaults(run=...)``); ``main`` runs the chosen one.
The settings' flags come from their one declaration in ``ocs.config``.

Exit codes: 0 success, 1 a refused operation (the message says why),
2 bad configuration or usage (the message names the key, flag or argument), or an
embedded store that would be started beside another one (the message names both).

The billing rules' commands (taxes, surcharges, bundles) live in ``ocs.cli_rules``;
what every command module shares (registering, argument checks, JSON output) in
``ocs.cli_support``.
"""

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import uvloop

from ocs import (
    cli_documents,
    cli_dunning,
    cli_events,
    cli_live,
    cli_mediation,
    cli_numbers,
    cli_payments,
    cli_peer_decks,
    cli_reports,
    cli_rules,
    cli_usage,
)
from ocs.cli_support import (
    EXIT_CONFIG,
    EXIT_REFUSED,
    EXIT_USAGE,
    Handler,
    UsageError,
    add_command,
    add_group,
    amount_arg,
    checked,
    date_arg,
    positive_bigint,
    print_json,
    progress_bar,
    read_bytes,
    time_arg,
    to_builtins,
    with_services,
)
from ocs.config import ConfigError, Settings, load_settings, setting_flags
from ocs.errors import OcsError, Reason
from ocs.logs import configure_logging
from ocs.money import format_amount

if TYPE_CHECKING:
    from ocs.balances.reconcile import Reconciliation
    from ocs.billing.account_reconcile import Repaired, StateMismatch
    from ocs.billing.number_reconcile import NumberMismatch
    from ocs.billing.queries import SubscriptionRow
    from ocs.cli_support import Commands
    from ocs.services import Services


def build_parser() -> argparse.ArgumentParser:
    """The whole ``ocs`` command line: every command, its arguments and its handler."""
    parser = argparse.ArgumentParser(prog="ocs", description="ocs: online charging system")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_process_commands(commands)
    _add_catalog_commands(commands)
    _add_tokens(commands)
    _add_credentials(commands)
    _add_accounts(commands)
    _add_counters_and_cards(commands)
    _add_billing(commands)
    _add_invoices(commands)
    _add_subscriptions(commands)
    _add_charges(commands)
    cli_rules.add_commands(commands)
    cli_documents.add_commands(commands)
    cli_payments.add_commands(commands)
    cli_dunning.add_commands(commands)
    cli_events.add_commands(commands)
    cli_numbers.add_commands(commands)
    cli_reports.add_commands(commands)
    cli_mediation.add_commands(commands)
    cli_usage.add_commands(commands)
    cli_live.add_commands(commands)
    return parser


def _add_process_commands(commands: "Commands") -> None:
    """serve, demo, warm-up, db migrate, reconcile and the billing worker."""
    add_command(commands, "serve", "run the charging server", _serve, serving=True)
    demo = add_command(
        commands,
        "demo",
        "run the server with a demo catalog and funded accounts (on stores holding nothing else)",
        _demo,
        serving=True,
    )
    demo.add_argument(
        "--use-configured-stores",
        action="store_true",
        help="run it even where the stores hold data that is not the demo's (it adds funded"
        " accounts and an admin token there; no billing worker runs beside it)",
    )
    add_command(
        commands,
        "warm-up",
        "compile the prefix matcher now (once per install) so the first start is quick",
        _warm_up,
    )
    db = add_group(commands, "db", "database maintenance")
    add_command(db, "migrate", "apply pending schema migrations", _db_migrate)
    reconcile = add_command(
        commands,
        "reconcile",
        "check that every Redis balance equals its ledger, every number's Redis"
        " reference names its holder and every account's Redis status agrees with"
        " PostgreSQL's (exit 1 if not)",
        _reconcile,
    )
    reconcile.add_argument(
        "--repair-numbers",
        action="store_true",
        help="set each number reference found wrong to the holder PostgreSQL names (under"
        " the number's row lock)",
    )
    reconcile.add_argument(
        "--repair-accounts",
        action="store_true",
        help="set each account's Redis status (and lock reason) found disagreeing to the"
        " status PostgreSQL records (under the account's row lock)",
    )
    worker = add_command(
        commands,
        "billing-worker",
        "run due billing cycles from the plans' schedules and share invoice runs' chunks"
        " (until SIGTERM)",
        _billing_worker,
    )
    worker.add_argument(
        "--once", action="store_true", help="one pass (due runs, unfinished chunks), then exit"
    )


def _add_catalog_commands(commands: "Commands") -> None:
    """plans, tariffs and codes."""
    plans = add_group(commands, "plans", "subscription plans")
    create = add_command(plans, "create", "create a plan", _plans_create)
    create.add_argument("id")
    create.add_argument("--currency", required=True, help="ISO 4217 code, e.g. EUR")
    create.add_argument("--name")
    create.add_argument("--credit-limit", default="0", help="default credit limit, e.g. 5.00")
    create.add_argument(
        "--min-balance", default="0", help="minimum available funds to start a call"
    )
    create.add_argument("--max-lines", type=int, default=1, help="default simultaneous calls")
    create.add_argument(
        "--max-call-duration", type=int, default=14_400, help="longest call in seconds"
    )
    add_command(plans, "list", "list plans", _plans_list)
    _add_plan_billing(plans)

    tariffs = add_group(commands, "tariffs", "rate decks")
    imp = add_command(
        tariffs, "import", "replace a plan's rate deck with a CSV file", _tariffs_import
    )
    imp.add_argument("--plan", required=True)
    imp.add_argument("file", type=Path)
    cli_peer_decks.add_tariff_commands(tariffs)  # ocs tariffs import-peer

    codes = add_group(commands, "codes", "area-code tables: destination names for CDRs and IVRs")
    cimp = add_command(
        codes,
        "import",
        "replace the standard area-code table, or a plan's custom code list, with a CSV"
        " file (prefix,name)",
        _codes_import,
    )
    cimp.add_argument("--plan", help="the plan whose custom list it is: it replaces the standard")
    cimp.add_argument("file", type=Path)
    cremove = add_command(
        codes, "remove", "drop a plan's custom code list, or the standard table", _codes_remove
    )
    cremove.add_argument("--plan", help="the plan, which goes back to the standard table")


def _add_plan_billing(plans: "Commands") -> None:
    """``ocs plans billing PLAN``: a plan's billing settings."""
    from ocs.billing.cycles import CYCLES, TAX_ENGINES, TIMINGS

    billing = add_command(
        plans, "billing", "set a plan's billing cycle and invoicing", _plans_billing
    )
    billing.add_argument("plan")
    billing.add_argument("--cycle", required=True, choices=CYCLES)
    billing.add_argument("--effective-date", help="YYYY-MM-DD (default: today, UTC)")
    billing.add_argument("--time-zone", default="UTC", help="IANA zone periods are cut in")
    billing.add_argument("--cycle-day", type=int, help="fixed date: day of the month (1-31)")
    billing.add_argument("--cycle-weekday", type=int, help="week: 0 Monday .. 6 Sunday")
    billing.add_argument("--every-days", type=int, help="fixed period: its length in days")
    billing.add_argument("--grace-days", type=int, default=0)
    billing.add_argument("--message", default="", help="printed at the bottom of every invoice")
    billing.add_argument("--timing", default="end_of_cycle", choices=TIMINGS)
    billing.add_argument("--issuer", default="INV", help="invoice number prefix, e.g. INV")
    billing.add_argument(
        "--tax-engine",
        default="internal",
        choices=TAX_ENGINES,
        help="who taxes its invoices: the plan's own tax rules, or the HTTP tax engine",
    )


def _add_tokens(commands: "Commands") -> None:
    """tokens create, list and revoke."""
    tokens = add_group(commands, "tokens", "admin API tokens")
    tcreate = add_command(
        tokens,
        "create",
        "make a token (printed this once, stored as a digest)",
        _tokens_create,
    )
    tcreate.add_argument("--name", required=True)
    tcreate.add_argument("--role", required=True, choices=("admin", "operator", "viewer", "switch"))
    add_command(tokens, "list", "list tokens (names and roles)", _tokens_list)
    trevoke = add_command(tokens, "revoke", "revoke a token by name", _tokens_revoke)
    trevoke.add_argument("name")


def _add_credentials(commands: "Commands") -> None:
    """credentials rekey."""
    credentials = add_group(commands, "credentials", "stored PIN and password digests")
    add_command(
        credentials,
        "rekey",
        "key every PIN and password digest stored before the pepper by the pepper (run once"
        " after upgrading, and after restoring a store from an older backup; safe while ocs"
        " serves); ended with none left, a wrong PIN is looked up once",
        _credentials_rekey,
    )


def _add_accounts(commands: "Commands") -> None:
    """accounts create, show and topup."""
    accounts = add_group(commands, "accounts", "accounts")
    acreate = add_command(accounts, "create", "create an account", _accounts_create)
    acreate.add_argument("id")
    acreate.add_argument("--plan", required=True)
    acreate.add_argument("--balance", default="0", help="opening balance, e.g. 10.00")
    acreate.add_argument("--credit-limit", help="default: the plan's")
    acreate.add_argument("--max-lines", type=int, help="default: the plan's")
    acreate.add_argument("--status", default="active", choices=["active", "locked", "suspended"])
    ashow = add_command(accounts, "show", "show an account", _accounts_show)
    ashow.add_argument("id")
    topup = add_command(accounts, "topup", "credit an account", _accounts_topup)
    topup.add_argument("id")
    topup.add_argument("amount", help="e.g. 5.00")
    topup.add_argument("--topup-id", help="idempotency key: a repeated id credits once")


def _add_counters_and_cards(commands: "Commands") -> None:
    """counters reset, rerate, pins generate and discard."""
    counters = add_group(commands, "counters", "usage counters")
    reset = add_command(
        counters,
        "reset",
        "start a new counter cycle (unused seconds carry over)",
        _counters_reset,
    )
    reset.add_argument("--plan", help="only accounts of this plan")
    reset.add_argument("--account", help="only this account")
    reset.add_argument(
        "--cycle",
        help="cycle label: its recurring fees are charged once (default: each plan's billing"
        " period holding now, in its time zone: the cycle the billing worker opens)",
    )

    rerate = add_command(
        commands,
        "rerate",
        "rate a plan's CDRs again with today's catalog and report the differences",
        _rerate,
    )
    rerate.add_argument("--plan", required=True)
    rerate.add_argument("--since", help="CDRs stopped from, e.g. 2026-11-01T00:00:00Z")
    rerate.add_argument("--until", help="CDRs stopped before")

    pins = add_group(commands, "pins", "calling cards")
    generate = add_command(
        pins, "generate", "generate a PIN batch and write it as CSV", _pins_generate
    )
    generate.add_argument("--batch", required=True, help="batch id, e.g. 2026-11-A")
    generate.add_argument("--plan", required=True)
    generate.add_argument("--count", type=int, required=True)
    generate.add_argument("--length", type=int, default=12, help="PIN digits (default 12)")
    generate.add_argument("--value", required=True, help="each card's value, e.g. 5.00")
    generate.add_argument("--password-length", type=int, help="also give each card a password")
    expiry = generate.add_mutually_exclusive_group()
    expiry.add_argument("--expires", help="fixed expiry, e.g. 2027-06-30T23:59:59Z")
    expiry.add_argument("--expire-days", type=int, default=0, help="days after first use")
    generate.add_argument(
        "--out", type=Path, required=True, help="CSV file to write (holds the PINs: keep it safe)"
    )
    discard = add_command(
        pins,
        "discard",
        "remove from Redis the cards of a batch whose creation failed and will not be sent"
        " again (the orphans `ocs reconcile` lists as card-<batch>-...)",
        _pins_discard,
    )
    discard.add_argument("--batch", required=True, help="the unfinished batch's id")


def _add_billing(commands: "Commands") -> None:
    """billing run, post and resume."""
    billing = add_group(commands, "billing", "invoice runs: draft, post")
    brun = add_command(
        billing,
        "run",
        "draft the invoices of a billing period (a progress bar on a terminal)",
        _billing_run,
    )
    brun.add_argument("--period", required=True, help="e.g. 2026-12, or 2026-12-05..2027-01-05")
    brun.add_argument("--plan", help="only this plan (a manual plan must be named)")
    brun.add_argument("--invoice-date", help="YYYY-MM-DD (default: today, UTC)")
    brun.add_argument(
        "--charge-cutoff", help="charges created after it are billed by the next invoice"
    )
    brun.add_argument("--usage-cutoff", help="rated usage up to this instant is included")
    brun.add_argument("--no-taxes", action="store_true", help="an untaxed draft")
    brun.add_argument(
        "--early",
        action="store_true",
        help="bill what is known so far of a period whose usage window has not ended (plus"
        " billing_run_delay; refused otherwise): usage stops at the run's creation, later"
        " calls are billed by the next invoice",
    )
    post = add_command(
        billing, "post", "post drafts: gapless numbers, then the money moves", _billing_post
    )
    which = post.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=positive_bigint, dest="run_id", help="every draft of this run")
    which.add_argument(
        "--invoice", type=positive_bigint, action="append", help="this invoice (repeatable)"
    )
    resume = add_command(billing, "resume", "finish an unfinished run's chunks", _billing_resume)
    resume.add_argument("run_id", type=positive_bigint, metavar="RUN")
    add_command(
        billing,
        "retry-sessions",
        "let the billing worker try again the on-demand sessions whose invoice it gave up"
        " (once their account or plan is fixed)",
        _billing_retry_sessions,
    )


def _add_invoices(commands: "Commands") -> None:
    """invoices list, show, void, unbilled and preview."""
    from ocs.billing.queries import INVOICE_STATES

    invoices = add_group(commands, "invoices", "invoices and credit notes")
    ilist = add_command(invoices, "list", "list invoices (newest period first)", _invoices_list)
    ilist.add_argument("--account")
    ilist.add_argument("--period", help="e.g. 2026-12")
    ilist.add_argument("--state", choices=INVOICE_STATES)
    ilist.add_argument("--run", type=positive_bigint, dest="run_id")
    ishow = add_command(invoices, "show", "an invoice with its lines", _invoices_show)
    ishow.add_argument("id", type=positive_bigint)
    ivoid = add_command(
        invoices, "void", "void a posted invoice with a credit note", _invoices_void
    )
    ivoid.add_argument("id", type=positive_bigint)
    iunbilled = add_command(
        invoices,
        "unbilled",
        "what a void invoice billed that no posted or draft invoice bills again",
        _invoices_unbilled,
    )
    iunbilled.add_argument("id", type=positive_bigint)
    preview = add_command(
        invoices,
        "preview",
        "an account's invoice for the current period, computed now and stored nowhere",
        _invoices_preview,
    )
    preview.add_argument("account")
    preview.add_argument("--at", help="the period holding this instant (default: now)")
    cli_documents.add_invoice_commands(invoices)  # ocs invoices pdf


def _add_subscriptions(commands: "Commands") -> None:
    """subscriptions create, list, status and add-charge."""
    subs = add_group(commands, "subscriptions", "accounts' subscriptions to plans and charges")
    screate = add_command(subs, "create", "subscribe an account to its plan", _subscriptions_create)
    screate.add_argument("account")
    screate.add_argument("--plan", required=True)
    screate.add_argument("--start", required=True, help="service start date, YYYY-MM-DD")
    screate.add_argument("--end", help="first day without service, YYYY-MM-DD")
    screate.add_argument("--status", default="active", choices=("pending", "active"))
    for name in ("category", "service", "billing-address", "salesperson"):
        screate.add_argument(f"--{name}", default="")
    # The billing address's parts, which an external tax engine sources taxes by.
    for name in ("city", "county", "region", "postal-code"):
        screate.add_argument(f"--billing-{name}", default="")
    screate.add_argument(
        "--billing-country", default="", help="ISO 3166-1 alpha-2 in capitals, e.g. US"
    )
    screate.add_argument(
        "--billing-email", default="", help="where invoices and dunning notices are emailed"
    )
    screate.add_argument("--charge", action="append", default=[], help="add this charge")
    slist = add_command(subs, "list", "list subscriptions", _subscriptions_list)
    slist.add_argument("--account")
    status = add_command(
        subs, "status", "move a subscription to a new status", _subscriptions_status
    )
    status.add_argument("id", type=positive_bigint)
    status.add_argument("status", choices=("pending", "active", "suspended", "cancelled"))
    status.add_argument("--on", help="a cancellation's first day without service, YYYY-MM-DD")
    add = add_command(
        subs, "add-charge", "add a charge to a subscription", _subscriptions_add_charge
    )
    add.add_argument("id", type=positive_bigint)
    add.add_argument("charge")
    add.add_argument("--quantity", type=int, default=1)
    add.add_argument("--start", help="YYYY-MM-DD (default: the subscription's)")
    add.add_argument("--end", help="first day without it, YYYY-MM-DD")


def _add_charges(commands: "Commands") -> None:
    """charges create and list."""
    from ocs.billing.store import CADENCES, CHARGE_KINDS

    charges = add_group(commands, "charges", "products' fees: recurring, one-time, triggered")
    ccreate = add_command(charges, "create", "create a charge", _charges_create)
    ccreate.add_argument("id")
    ccreate.add_argument("--name", required=True)
    ccreate.add_argument("--product", required=True, help="product code")
    ccreate.add_argument("--currency", required=True)
    ccreate.add_argument("--amount", required=True, help="e.g. 10.00")
    ccreate.add_argument("--kind", required=True, choices=CHARGE_KINDS)
    ccreate.add_argument("--cadence", choices=CADENCES)
    ccreate.add_argument("--every-days", type=int)
    ccreate.add_argument("--timing", default="arrears", choices=("arrears", "advance"))
    ccreate.add_argument("--tax-code", default="")
    ccreate.add_argument("--gl-code", default="")
    ccreate.add_argument("--plan", help="a custom charge of this plan (every account on it)")
    clist = add_command(charges, "list", "list charges", _charges_list)
    clist.add_argument("--plan")


def command_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable command line, as its path (``("plans", "create")``), with its parser.

    For checks and documentation that walk the command tree: argparse keeps the
    subcommands only in its (private) list of actions.
    """
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return {path: parser}
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for group in groups:
        for name, sub in group.choices.items():
            found.update(command_parsers(sub, (*path, name)))
    return found


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings a command line chose: its setting flags over OCS_* and ``--config``."""
    overrides = {name: getattr(args, name) for name in setting_flags() if hasattr(args, name)}
    return load_settings(getattr(args, "config", None), overrides=overrides)


# --- argument checks and output ---------------------------------------------------------


def _print_deck_problems(exc: OcsError) -> None:
    """A refused deck or code list, one problem a line: it may list a hundred."""
    problems: list[tuple[int, str]] = getattr(exc, "problems", [])
    what = getattr(exc, "what", "file")
    print(f"ocs: {exc.reason.value}: {what} rejected, nothing applied", file=sys.stderr)
    for line, message in problems:
        print(f"  line {line}: {message}", file=sys.stderr)
    more = int(getattr(exc, "more", 0))
    if more:
        print(
            f"  and {more} more problems (only the first {len(problems)} are listed)",
            file=sys.stderr,
        )


def _read_csv(path: Path) -> bytes:
    """A CSV file's bytes, undecoded: the parser names each line that is not UTF-8,
    and a carriage return inside a quoted field stays in its line (text mode would
    turn it into a line break and shift every later line number)."""
    return read_bytes(path, "file")


def _compile_if_cold() -> None:
    """Compile the matcher's kernels now, saying so, when numba's cache lacks them.

    For the commands that run them (deck and code-list imports, rerating): on a cold
    cache they would otherwise stall silently for half a minute inside the command.
    """
    from ocs import warm_up

    if warm_up.cache_is_cold():
        warm_up.warm_up()


# --- the commands -----------------------------------------------------------------------


def _warm_up(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs warm-up``: compile the matcher's kernels, saying whether it had to."""
    from ocs import warm_up

    compiled = warm_up.cache_is_cold()
    print_json({"compiled": compiled, "seconds": round(warm_up.warm_up(), 3)})
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs serve``: the charging server, in this process or in ``--workers`` children
    (and, with ``background_process``, a background process beside them)."""
    from ocs.background import is_background_process

    if is_background_process():
        from ocs.background import run_background

        uvloop.run(run_background(settings))
        return 0
    if settings.workers > 1 or settings.background_process:
        from ocs.workers import WorkersDidNotStart, run_workers

        try:
            # Each worker runs this same command line (main puts it in args.argv).
            return run_workers(settings, args.argv)
        except WorkersDidNotStart as exc:
            # Said last, once every other process has stopped: for systemd or Docker.
            print(f"ocs: {exc}", file=sys.stderr)
            return EXIT_CONFIG if exc.returncode == EXIT_CONFIG else EXIT_REFUSED
    from ocs.server import serve

    uvloop.run(serve(settings))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs demo``: the server with a demo catalog and funded accounts (one process);
    refused (exit 2, one line) on stores holding data that is not the demo's, unless
    ``--use-configured-stores``."""
    from ocs.demo import DemoRefused, run_demo

    try:
        uvloop.run(run_demo(settings, use_configured_stores=args.use_configured_stores))
    except DemoRefused as exc:
        print(f"ocs: demo refused: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs db migrate``: apply pending schema migrations, listing them.

    Opening the stores applies them, even with ``migrate_on_start = false`` (this is the
    command that setting leaves migrating to), so the versions listed are those the
    opening applied; a second look applies any that another process's migration held
    back meanwhile (none, mostly)."""
    from ocs.db.migrate import migrate

    settings = dataclasses.replace(settings, migrate_on_start=True)

    async def run(s: "Services") -> list[int]:
        """The versions applied now: by opening the stores, then by the second look."""
        return [*s.migrated_now, *await migrate(s.pool)]

    applied = with_services(settings, run)
    print_json({"applied_now": applied})
    return 0


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs reconcile``: compare each Redis balance with its ledger, each number's
    Redis reference with its holder and each account's Redis status with PostgreSQL's
    (the last two set right with ``--repair-numbers``, ``--repair-accounts``); exit 1
    on a mismatch, repaired or not."""
    from ocs.balances.reconcile import reconcile
    from ocs.billing import account_reconcile, number_reconcile

    async def run(s: "Services") -> dict[str, Any]:
        """Balances, then numbers and accounts' states (repaired when asked)."""
        result = await reconcile(
            s.redis, s.pool, migration_wait=settings.redis_migration_wait_ms / 1000
        )
        numbers = await number_reconcile.check_numbers(s.redis, s.pool)
        repaired = None
        if args.repair_numbers:
            repaired = await number_reconcile.repair_numbers(s.pool, s.store, numbers)
        states = await account_reconcile.check_states(s.redis, s.pool)
        fixed = None
        if args.repair_accounts:
            fixed = await account_reconcile.repair_states(s.pool, s.redis, s.store, states)
        return {
            "ok": result.ok and not numbers and not states,
            **_balances_report(result),
            "numbers": _numbers_report(numbers, repaired),
            "account_states": _states_report(states, fixed),
        }

    report = with_services(settings, run)
    print_json(report)
    return 0 if report["ok"] else EXIT_REFUSED


def _balances_report(result: "Reconciliation") -> dict[str, Any]:
    """``ocs reconcile``'s findings on balances, ledgers and orphan accounts, as JSON."""
    return {
        "accounts": result.accounts,
        "pending_ledger_entries": result.pending_entries,
        "mismatches": [
            {
                "account": m.account_id,
                "redis_balance": None
                if m.redis_balance is None
                else format_amount(m.redis_balance),
                "ledger_total": format_amount(m.ledger_total),
            }
            for m in result.mismatches
        ],
        # Redis lost entries PostgreSQL holds (a restart from an AOF missing its last
        # writes): the mismatches above include what those entries moved.
        "lost_ledger_entries": [
            {
                "bucket": lost.bucket,
                "stream_last_id": lost.stream_last_id,
                "written_through": lost.written_through,
            }
            for lost in result.lost
        ],
        # Accounts Redis holds and PostgreSQL does not: a creation whose end was
        # lost; sending the same request again finishes it (decision 0042).
        "orphans": [
            {
                "account": orphan.account_id,
                "redis_balance": None
                if orphan.redis_balance is None
                else format_amount(orphan.redis_balance),
                "created": None
                if orphan.created_ms is None
                else datetime.fromtimestamp(orphan.created_ms / 1000, UTC).isoformat(),
            }
            for orphan in result.orphans
        ],
    }


def _numbers_report(
    numbers: "list[NumberMismatch]", repaired: dict[str, str | None] | None
) -> list[dict[str, Any]]:
    """Numbers whose Redis reference (what an inbound call reads) is not the holder
    PostgreSQL names (null: none, or free): a change half told Redis."""
    return [
        {
            "number": m.number,
            "redis_account": m.redis_account,
            "postgresql_holder": m.holder,
            **({} if repaired is None else {"repaired_to": repaired[m.number]}),
        }
        for m in numbers
    ]


def _states_report(
    states: "list[StateMismatch]", repaired: "dict[str, Repaired | None] | None"
) -> list[dict[str, Any]]:
    """Accounts whose Redis status (what a call is let through or refused by) does not
    agree with PostgreSQL's: a status change half told Redis. ``redis_lock`` null: no
    lock reason; ``repaired_to`` null: the two agreed by the time the repair looked."""
    report: list[dict[str, Any]] = []
    for m in states:
        entry: dict[str, Any] = {
            "account": m.account_id,
            "postgresql_status": m.postgresql_status,
            "redis_status": m.redis_status,
            "redis_lock": m.redis_lock or None,
        }
        if repaired is not None:
            done = repaired[m.account_id]
            entry["repaired_to"] = (
                None if done is None else {"status": done.status, "lock": done.lock or None}
            )
        report.append(entry)
    return report


def _plans_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs plans create``: a new plan, its arguments checked before any store opens."""
    import msgspec

    from ocs.catalog import store as catalog_store
    from ocs.catalog.snapshot import Plan
    from ocs.views import plan_view

    plan = Plan(
        id=checked(lambda: catalog_store.validate_plan_id(args.id)),
        name=args.name or args.id,
        currency=checked(lambda: catalog_store.validate_currency(args.currency)),
        credit_limit=amount_arg(args.credit_limit, "--credit-limit"),
        min_balance=amount_arg(args.min_balance, "--min-balance"),
        max_lines=args.max_lines,
        max_call_duration=args.max_call_duration,
    )
    # The bounds POST /v1/plans keeps: a call granted past a week could not be stopped.
    checked(lambda: catalog_store.validate_plan_limits(plan.max_lines, plan.max_call_duration))
    created = with_services(settings, lambda s: catalog_store.create_plan(s.pool, plan))
    print_json(msgspec.to_builtins(plan_view(created)))
    return 0


def _plans_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs plans list``: every plan."""
    import msgspec

    from ocs.catalog import store as catalog_store
    from ocs.views import plan_view

    plans = with_services(settings, lambda s: catalog_store.list_plans(s.pool))
    print_json({"plans": [msgspec.to_builtins(plan_view(p)) for p in plans]})
    return 0


def _tariffs_import(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs tariffs import``: replace a plan's rate deck with a CSV file, all or nothing."""
    import msgspec

    from ocs.catalog import store as catalog_store
    from ocs.decks.rate_deck import parse_deck
    from ocs.views import deck_import_view

    text = _read_csv(args.file)
    _compile_if_cold()
    rows = parse_deck(text)
    result = with_services(settings, lambda s: catalog_store.import_deck(s.pool, args.plan, rows))
    print_json(msgspec.to_builtins(deck_import_view(result)))
    return 0


def _code_list_id(plan: str | None) -> str:
    """The code list ``--plan`` names: the plan's custom one, else the standard table."""
    from ocs.catalog import store as catalog_store
    from ocs.decks.code_lists import STANDARD

    if plan is None:
        return STANDARD
    return checked(lambda: catalog_store.validate_plan_id(plan, "--plan"))


def _codes_import(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs codes import``: replace the standard table or a plan's code list with a CSV."""
    from ocs.catalog import store as catalog_store
    from ocs.decks.code_lists import parse_code_list

    list_id = _code_list_id(args.plan)
    text = _read_csv(args.file)
    _compile_if_cold()
    entries = parse_code_list(text)
    count = with_services(
        settings, lambda s: catalog_store.import_code_list(s.pool, entries, list_id)
    )
    print_json({"plan": args.plan, "codes": count})
    return 0


def _codes_remove(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs codes remove``: drop a code list; exit 1 when there was none."""
    from ocs.catalog import store as catalog_store

    list_id = _code_list_id(args.plan)
    removed = with_services(settings, lambda s: catalog_store.remove_code_list(s.pool, list_id))
    print_json({"plan": args.plan, "removed": removed})
    return 0 if removed else EXIT_REFUSED


def _tokens_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs tokens create``: a new admin API token, printed this once."""
    from ocs import api_tokens

    token = with_services(settings, lambda s: api_tokens.create(s.pool, args.name, args.role))
    print_json({"name": args.name, "role": args.role, "token": token})
    return 0


def _tokens_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs tokens list``: every token's name, role and creation time (never the token)."""
    from ocs import api_tokens

    found = with_services(settings, lambda s: api_tokens.listed(s.pool))
    print_json(
        {
            "tokens": [
                {"name": t.name, "role": t.role, "created_at": t.created_at.isoformat()}
                for t in found
            ]
        }
    )
    return 0


def _tokens_revoke(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs tokens revoke``: revoke a token by name; exit 1 when there was none."""
    from ocs import api_tokens

    revoked = with_services(settings, lambda s: api_tokens.revoke(s.pool, args.name))
    print_json({"name": args.name, "revoked": revoked})
    return 0 if revoked else EXIT_REFUSED


def _accounts_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs accounts create``: a new account with its opening balance."""
    import msgspec

    from ocs.balances.accounts import AccountSpec
    from ocs.balances.card_ids import may_be_pin
    from ocs.views import account_view

    opening = amount_arg(args.balance, "--balance")
    limit = None if args.credit_limit is None else amount_arg(args.credit_limit, "--credit-limit")
    spec = AccountSpec(
        args.id,
        args.plan,
        opening_balance=opening,
        credit_limit=limit,
        max_lines=args.max_lines,
        status=args.status,
    )
    # An id of a PIN's form is looked up among the cards' PIN digests, keyed by the pepper.
    view = with_services(settings, lambda s: s.accounts.create(spec), pepper=may_be_pin(args.id))
    print_json(msgspec.to_builtins(account_view(view)))
    return 0


def _accounts_show(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs accounts show``: one account."""
    import msgspec

    from ocs.views import account_view

    view = with_services(settings, lambda s: s.accounts.show(args.id))
    print_json(msgspec.to_builtins(account_view(view)))
    return 0


def _accounts_topup(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs accounts topup``: credit an account, once per ``--topup-id``."""
    amount = amount_arg(args.amount, "amount")
    result = with_services(settings, lambda s: s.accounts.topup(args.id, amount, args.topup_id))
    print_json(
        {
            "account": args.id,
            "amount": format_amount(result.amount),
            "balance": format_amount(result.balance),
            "repeated": result.repeated,
        }
    )
    return 0


def _counters_reset(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs counters reset``: start a new counter cycle, charging its recurring fees."""
    from ocs.billing.counter_cycles import reset_counters

    report = with_services(
        settings,
        lambda s: reset_counters(
            s.pool, s.counters, args.plan, args.account, args.cycle, datetime.now(UTC)
        ),
    )
    print_json(
        {
            "accounts": report.accounts,
            "counters": report.counters,
            "fees": report.fees,
            "cycles": report.cycles,
        }
    )
    return 0


def _rerate(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs rerate``: rate a plan's CDRs again with today's catalog; report the changes."""
    from ocs.billing.rerate import rerate

    since, until = time_arg(args.since, "--since"), time_arg(args.until, "--until")
    _compile_if_cold()
    report = with_services(
        settings,
        lambda s: rerate(s.pool, s.catalog.snapshot, args.plan, since, until),
        catalog=True,
    )
    print_json(
        {
            "plan": report.plan_id,
            "cdrs": report.cdrs,
            "changed": report.changed,
            "unrated": report.unrated,
            "total_then": format_amount(report.total_then),
            "total_now": format_amount(report.total_now),
            "usage_events": report.usage_events,
            "rate_typed": report.rate_typed,
            "changes": [
                {
                    "call_id": line.call_id,
                    "account": line.account_id,
                    "destination": line.destination,
                    "duration": line.duration,
                    "zone_then": line.zone_then,
                    "zone_now": line.zone_now,
                    "rated_then": format_amount(line.rated_then),
                    "rated_now": None if line.rated_now is None else format_amount(line.rated_now),
                }
                for line in report.lines
            ],
        }
    )
    return 0


def _new_private_file(path: Path) -> TextIO:
    """``path`` created for writing, readable by its owner only: a ``UsageError`` naming
    it when it exists (PIN files are never overwritten) or cannot be created."""
    try:
        # O_EXCL: never another file's contents (or a link) replaced; 0o600 from the
        # start, so the PINs are never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--out: {path} exists; PIN files are never overwritten") from None
    except OSError as exc:
        raise UsageError(f"--out: cannot create {path}: {exc.strerror}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


def _credentials_rekey(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs credentials rekey``: every PIN and password digest stored in the old form, with
    a public key, in its new form keyed by the pepper (decision 0054); exit 1 when a PIN
    was left as it was (its new form opens another card)."""
    from ocs.balances.rekey import rekey_all

    report = with_services(
        settings, lambda s: rekey_all(s.pool, s.store, s.redis, s.digests), pepper=True
    )
    print_json(dataclasses.asdict(report))
    return EXIT_REFUSED if report.conflicts else 0


def _pins_generate(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs pins generate``: a batch of calling cards, written to a new private CSV file.

    The file is created before any card: a path that cannot take it refuses the command
    with no batch made, since cards whose PINs nobody has would be value no one can
    spend (and their batch id taken)."""
    value = amount_arg(args.value, "--value")
    try:
        expires = None if args.expires is None else datetime.fromisoformat(args.expires)
    except ValueError:
        raise UsageError(f"--expires: not an ISO 8601 time: {args.expires!r}") from None
    out = _new_private_file(args.out)
    try:
        batch = with_services(
            settings,
            lambda s: s.cards.generate(
                batch_id=args.batch,
                plan_id=args.plan,
                count=args.count,
                length=args.length,
                value=value,
                password_length=args.password_length,
                expires_at=expires,
                expire_days=args.expire_days,
            ),
            pepper=True,
        )
    except BaseException:
        # No batch: the empty file goes, so that the same command can be run again.
        out.close()
        args.out.unlink(missing_ok=True)
        raise
    try:
        with out:
            out.write(batch.csv())
    except OSError as exc:
        # Rare (a full disk): the batch is made, and this file was its only copy of the PINs.
        print(
            f"ocs: --out: cannot write {args.out}: {exc.strerror}; batch {batch.id!r} was"
            f" created with {len(batch.cards)} cards whose PINs are lost: lock them"
            " (PATCH /v1/accounts/{id} with status locked)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    print_json({"batch": batch.id, "cards": len(batch.cards), "file": str(args.out)})
    return 0


def _pins_discard(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs pins discard``: an unfinished batch's cards, PINs and claim leave Redis, their
    balances written off in the ledger; refused for a batch PostgreSQL records."""
    from ocs.balances.card_orphans import discard_unfinished_batch

    done = with_services(
        settings, lambda s: discard_unfinished_batch(s.redis, s.pool, s.store, args.batch)
    )
    print_json(
        {
            "batch": done.batch_id,
            "cards_discarded": done.cards,
            "pins_withdrawn": done.pins_withdrawn,
            "written_off": format_amount(done.written_off),
            "currency": done.currency,
        }
    )
    return 0


# --- billing ----------------------------------------------------------------------------


def _billing_worker(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs billing-worker``: run due cycles and share runs' chunks until SIGTERM."""
    from ocs.billing.worker import serve_worker
    from ocs.call_cutting import call_cutter, nas_disconnect

    # No RADIUS server here: dunning's Disconnect-Requests go to the NAS from this process.
    with_services(
        settings,
        lambda s: serve_worker(
            s.pool,
            settings,
            once=args.once,
            store=s.store,
            cutter=call_cutter(s, nas_disconnect(s)),
        ),
    )
    return 0


async def _wait_for_the_ledger(services: "Services", run_id: int) -> None:
    """Wait while the ledger writer holds an entry from before the run's usage window
    ends (``runs.held_for_ledger``): its call would be on no invoice. One line on
    stderr when it waits."""
    import asyncio

    from ocs.billing import runs

    told = False
    while end := await runs.held_for_ledger(
        services.pool, run_id, await services.store.oldest_unwritten_ms()
    ):
        if not told:
            print(
                f"ocs: run {run_id} waits for the ledger writer to write the calls before"
                f" {end.isoformat()}",
                file=sys.stderr,
            )
            told = True
        await asyncio.sleep(1.0)


async def _execute_with_progress(services: "Services", run_id: int) -> Any:
    """Execute a run chunk by chunk (sharing it with any worker) until it is done, once
    the ledger writer wrote its window's calls; a progress bar on a terminal. The run as
    shown."""
    import asyncio

    from ocs import metrics
    from ocs.billing import queries, runs

    await _wait_for_the_ledger(services, run_id)
    pool = services.pool
    name = runs.worker_name()
    bar = progress_bar("accounts") if sys.stdout.isatty() else None
    task = None
    done_before = -1
    try:
        while True:
            found = await runs.execute_run(pool, run_id, worker=name, max_chunks=1)
            if bar is not None:
                if task is None:
                    task = bar.add_task(f"run {run_id}", total=found.accounts_total)
                bar.update(task, completed=found.accounts_done)
            if found.state == "done":
                break
            if found.accounts_done == done_before:
                # Every chunk left is leased by another worker: wait for it (or its lease).
                await asyncio.sleep(0.5)
            done_before = found.accounts_done
    finally:
        if bar is not None:
            bar.stop()
    shown = await queries.run(pool, run_id)
    if shown.state == "done":
        metrics.BILLING_RUNS_FINISHED.inc()
    return to_builtins(queries.run_view(shown))


def _billing_run(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs billing run``: create a run of a period and draft it (progress on a terminal)."""
    from ocs import metrics
    from ocs.billing import runs

    invoice_date = date_arg(args.invoice_date, "--invoice-date")
    charge_cutoff = time_arg(args.charge_cutoff, "--charge-cutoff")
    usage_cutoff = time_arg(args.usage_cutoff, "--usage-cutoff")

    async def run(services: "Services") -> Any:
        run_id = await runs.create_run(
            services.pool,
            args.period,
            invoice_date=invoice_date,
            plan_id=args.plan,
            charge_cutoff=charge_cutoff,
            usage_cutoff=usage_cutoff,
            calculate_taxes=not args.no_taxes,
            chunk_size=settings.billing_chunk_size,
            timing=runs.Timing(delay=settings.billing_run_delay, early=args.early),
        )
        metrics.BILLING_RUNS_STARTED.labels("operator").inc()
        return await _execute_with_progress(services, run_id)

    print_json(with_services(settings, run))
    return 0


def _billing_resume(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs billing resume``: finish a run's chunks (after a crash, or beside workers)."""
    from ocs.billing import queries

    async def resume(services: "Services") -> Any:
        await queries.run(services.pool, args.run_id)  # 404 for an unknown run
        return await _execute_with_progress(services, args.run_id)

    print_json(with_services(settings, resume))
    return 0


def _billing_retry_sessions(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs billing retry-sessions``: the sessions given up are tried again by the
    billing worker's next pass, from a count of 0; prints their ids."""
    from ocs.billing import sessions

    async def retry(services: "Services") -> Any:
        return {"sessions": await sessions.retry_given_up(services.pool)}

    print_json(with_services(settings, retry))
    return 0


async def post_invoices(
    services: "Services", *, run_id: int | None = None, invoice_ids: list[int] | None = None
) -> dict[str, Any]:
    """Post a run's drafts or the given invoices (refused 409 for a void one); what was
    posted, as shown. Shared by the CLI and the demo."""
    from ocs import metrics
    from ocs.billing import posting, queries

    if run_id is not None:
        await queries.run(services.pool, run_id)
    for invoice_id in invoice_ids or ():
        await queries.require_state(services.pool, invoice_id, ("draft", "posted"), "posted")
    posted = await posting.post(
        services.pool,
        services.store,
        run_id=run_id,
        invoice_ids=invoice_ids,
        settings=services.settings,
    )
    metrics.BILLING_POSTED.labels("invoices").inc(len(posted.numbers))
    metrics.BILLING_POSTED.labels("lines").inc(posted.lines_moved)
    return {
        "posted": [{"id": i, "number": n} for i, n in sorted(posted.numbers.items())],
        "lines_moved": posted.lines_moved,
        "held": [{"id": i, "reason": r} for i, r in sorted(posted.held.items())],
    }


def _billing_post(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs billing post``: number a run's drafts (or given invoices) and move their money."""
    print_json(
        with_services(
            settings, lambda s: post_invoices(s, run_id=args.run_id, invoice_ids=args.invoice)
        )
    )
    return 0


def _invoices_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs invoices list``: invoices and credit notes, filtered."""
    from ocs.billing import queries

    found = with_services(
        settings,
        lambda s: queries.list_invoices(
            s.pool,
            account_id=args.account,
            period=args.period,
            state=args.state,
            run_id=args.run_id,
        ),
    )
    print_json({"invoices": [to_builtins(queries.invoice_view(i)) for i in found]})
    return 0


def _invoices_show(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs invoices show``: an invoice with its lines."""
    from ocs.billing import queries

    found, lines = with_services(settings, lambda s: queries.invoice(s.pool, args.id))
    print_json(to_builtins(queries.detail_view(found, lines)))
    return 0


async def void_invoice(services: "Services", invoice_id: int) -> dict[str, Any]:
    """Void a posted invoice (refused 409 otherwise); its credit note, as shown."""
    from ocs import metrics
    from ocs.billing import queries, void

    await queries.require_state(services.pool, invoice_id, ("posted",), "voided")
    voided = await void.void(services.pool, services.store, invoice_id)
    metrics.BILLING_VOIDED.inc()
    return {
        "invoice": invoice_id,
        "credit_note": voided.credit_note_id,
        "number": voided.number,
        "total": format_amount(voided.total),
    }


def _invoices_void(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs invoices void``: void a posted invoice with a numbered credit note."""
    print_json(with_services(settings, lambda s: void_invoice(s, args.id)))
    return 0


def _invoices_unbilled(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs invoices unbilled``: a void invoice's charges and fees not billed again, as
    ``GET /v1/invoices/{id}/unbilled`` answers (exit 1 naming the reason for an invoice
    that is not void or does not exist)."""
    from ocs.billing import unbilled

    items = with_services(settings, lambda s: unbilled.unbilled(s.pool, args.id))
    print_json({"invoice": args.id, "items": [to_builtins(i) for i in items]})
    return 0


def _invoices_preview(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs invoices preview``: an account's invoice for the current period (a dry run)."""
    import msgspec

    from ocs.billing import drafts, queries

    at = time_arg(args.at, "--at")
    period, currency, lines = with_services(
        settings, lambda s: drafts.preview(s.pool, args.account, at)
    )
    print_json(
        {
            "account": args.account,
            "period": period.label,
            "currency": currency,
            "total": format_amount(sum(line.amount for line in lines)),
            # The same line view as `ocs invoices show`: what posting would store.
            "lines": [
                msgspec.to_builtins(queries.draft_line_view(n, line))
                for n, line in enumerate(lines, 1)
            ],
        }
    )
    return 0


def _subscriptions_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs subscriptions create``: subscribe an account, with the charges named."""
    from ocs.billing import commitments, queries, store

    start = date_arg(args.start, "--start")
    assert start is not None  # a required argument
    sub = store.Subscription(
        args.account,
        args.plan,
        start,
        date_arg(args.end, "--end"),
        args.status,
        args.category,
        args.service,
        args.billing_address,
        args.salesperson,
        billing_city=args.billing_city,
        billing_county=args.billing_county,
        billing_region=args.billing_region,
        billing_postal_code=args.billing_postal_code,
        billing_country=args.billing_country,
        billing_email=args.billing_email,
    )

    async def create(services: "Services") -> Any:
        sub_id = await store.subscribe(services.pool, sub)
        for charge_id in args.charge:
            await store.add_charge(services.pool, sub_id, charge_id)
        # Its next invoice now bills the plan's charges: a locking plan commits them.
        await commitments.refresh_subscription(services.pool, services.store, sub_id)
        found = await queries.subscription(services.pool, sub_id)
        assert found is not None  # just stored
        [shown] = await _subscriptions_shown(services, [found])
        return shown

    print_json(with_services(settings, create))
    return 0


def _subscriptions_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs subscriptions list``: subscriptions with their charges."""
    from ocs.billing import queries

    async def listed(services: "Services") -> list[dict[str, Any]]:
        # Every one, a page at a time (the API's pages): the first page alone stopped at
        # 1,000 without a word.
        found: list[SubscriptionRow] = []
        while True:
            after = found[-1].id if found else 0
            page = await queries.list_subscriptions(services.pool, args.account, after=after)
            found += page
            if len(page) < queries.MAX_LIST:
                return await _subscriptions_shown(services, found)

    print_json({"subscriptions": with_services(settings, listed)})
    return 0


async def _subscriptions_shown(
    services: "Services", found: "list[SubscriptionRow]"
) -> list[dict[str, Any]]:
    """Subscriptions as shown, each with its billing address's parts."""
    from ocs.billing import queries, rules_store

    addresses = await rules_store.billing_addresses(services.pool, [s.id for s in found])
    shown = []
    for sub in found:
        address = addresses[sub.id]
        shown.append(
            {
                **to_builtins(queries.subscription_view(sub)),
                "billing_city": address.city,
                "billing_county": address.county,
                "billing_region": address.region,
                "billing_postal_code": address.postal_code,
                "billing_country": address.country,
                "billing_email": address.email,
            }
        )
    return shown


def _subscriptions_status(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs subscriptions status``: pending -> active -> suspended -> cancelled."""
    from ocs.billing import commitments, store

    on = date_arg(args.on, "--on")

    async def change(services: "Services") -> None:
        await store.set_status(services.pool, args.id, args.status, on=on)
        await commitments.refresh_subscription(services.pool, services.store, args.id)

    with_services(settings, change)
    print_json({"subscription": args.id, "status": args.status})
    return 0


def _subscriptions_add_charge(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs subscriptions add-charge``: a charge added to a subscription from a day."""
    from ocs.billing import store

    start, end = date_arg(args.start, "--start"), date_arg(args.end, "--end")
    item = with_services(
        settings,
        lambda s: store.add_charge(
            s.pool, args.id, args.charge, quantity=args.quantity, start_date=start, end_date=end
        ),
    )
    print_json({"subscription": args.id, "charge": args.charge, "item": item})
    return 0


def _charges_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs charges create``: a recurring, one-time or triggered charge."""
    from ocs.billing import queries, store

    charge = store.Charge(
        args.id,
        args.name,
        args.product,
        args.currency,
        amount_arg(args.amount, "--amount"),
        args.kind,
        cadence=args.cadence,
        every_days=args.every_days,
        timing=args.timing,
        tax_code=args.tax_code,
        gl_code=args.gl_code,
        plan_id=args.plan,
    )
    created = with_services(settings, lambda s: store.create_charge(s.pool, charge))
    print_json(to_builtins(queries.charge_view(created)))
    return 0


def _charges_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs charges list``: every charge, or a plan's custom charges."""
    from ocs.billing import queries

    found = with_services(settings, lambda s: queries.list_charges(s.pool, args.plan))
    print_json({"charges": [to_builtins(queries.charge_view(c)) for c in found]})
    return 0


def _plans_billing(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs plans billing``: a plan's cycle, time zone, timing, grace days and message."""
    from ocs.billing import store
    from ocs.billing.cycles import PlanBilling

    effective = date_arg(args.effective_date, "--effective-date") or datetime.now(UTC).date()
    billing = PlanBilling(
        args.plan,
        args.cycle,
        effective,
        time_zone=args.time_zone,
        cycle_day=args.cycle_day,
        cycle_weekday=args.cycle_weekday,
        every_days=args.every_days,
        grace_days=args.grace_days,
        invoice_message=args.message,
        invoice_timing=args.timing,
        issuer=args.issuer,
        tax_engine=args.tax_engine,
    )
    saved = with_services(settings, lambda s: store.set_plan_billing(s.pool, s.store, billing))
    shown = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
    print_json({**shown, "effective_date": saved.effective_date.isoformat()})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ocs`` command line; returns the exit code."""
    from ocs.backend_health import backend_of, describe
    from ocs.db.migrate import MigrationBlocked
    from ocs.embedded import EmbeddedServerError, EmbeddedServerUnusable, StoreConflictError
    from ocs.runtime import BackendUnreachable

    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line as given: `serve --workers N` runs it again in each worker.
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"ocs: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    run: Handler = args.run
    try:
        return run(args, settings)
    except UsageError as exc:
        print(f"ocs: usage error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"ocs: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OcsError as exc:
        if exc.reason is Reason.INVALID_DECK:
            _print_deck_problems(exc)
            return EXIT_REFUSED
        if exc.reason is Reason.INVALID_FIELD:
            # A value given on the command line that the service refused.
            print(f"ocs: usage error: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        print(f"ocs: {exc.reason.value}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except MigrationBlocked as exc:
        # Another transaction's lock: a later start applies it (the units restart on 1).
        print(f"ocs: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except StoreConflictError as exc:
        print(f"ocs: embedded store: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EmbeddedServerUnusable as exc:
        # Not installed, or a data dir it cannot use: no restart changes that.
        print(f"ocs: embedded server: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EmbeddedServerError as exc:
        print(f"ocs: embedded server: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BackendUnreachable as exc:
        # Down, or refusing us (a wrong password, no such database): one line, no traceback.
        print(f"ocs: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        # A backend out of reach is BackendUnreachable above: this is any other refusal
        # of the system's (a port taken, a file or directory not writable).
        print(f"ocs: refused by the system: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as exc:
        # A backend lost in the middle of a command: said in one line; anything else is
        # a bug and keeps its traceback.
        backend = backend_of(exc)
        if backend is None:
            raise
        print(f"ocs: lost the connection to {backend}: {describe(exc)}", file=sys.stderr)
        return EXIT_REFUSED
