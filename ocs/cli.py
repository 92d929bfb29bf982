"""The `ocs` command line: serve, demo, migrations, plans, tariffs, area codes and accounts.

Each command (and each action of a command group) is one small handler registered
with its argparse parser (``set_defaults(run=...)``); ``main`` runs the chosen one.
The settings' flags come from their one declaration in ``ocs.config``.

Exit codes: 0 success, 1 a refused operation (the message says why),
2 bad configuration or usage (the message names the key, flag or argument), or an
embedded store that would be started beside another one (the message names both).
"""

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from ocs.config import ConfigError, Settings, load_settings, setting_flags, setting_help
from ocs.errors import OcsError, Reason
from ocs.logs import configure_logging
from ocs.money import MoneyError, format_amount, parse_amount

if TYPE_CHECKING:
    from ocs.services import Services

    # The object add_subparsers returns: where a command group's commands are added.
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_USAGE = 2  # as argparse's own usage errors

T = TypeVar("T")

Handler = Callable[[argparse.Namespace, Settings], int]
"""What runs one command: its parsed arguments and settings in, its exit code out."""

CONFIG_GROUP = "configuration (overrides OCS_* and --config)"

# Only the commands that listen (serve, demo) take the listening settings as flags;
# every other command opens the stores and logs, and would silently ignore them.
SERVING_ONLY = frozenset(
    {"http_host", "http_port", "workers", "radius_host", "radius_auth_port", "radius_acct_port"}
)


class UsageError(ValueError):
    """A command-line argument with a value the command cannot use; the message names it."""


def flag_name(setting: str) -> str:
    """The command-line flag of a setting: ``data_dir`` -> ``--data-dir``."""
    return "--" + setting.replace("_", "-")


def _add_setting_flags(parser: argparse.ArgumentParser, *, serving: bool) -> None:
    """Give a command ``--config`` and the settings' flags, each with its declared help.

    Unset flags stay out of the namespace (SUPPRESS), so the TOML file and ``OCS_*``
    variables keep their values; load_settings parses what is given.
    """
    group = parser.add_argument_group(CONFIG_GROUP)
    group.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file")
    for name in setting_flags():
        if serving or name not in SERVING_ONLY:
            group.add_argument(
                flag_name(name),
                dest=name,
                default=argparse.SUPPRESS,
                # argparse formats help with %: a literal one must be doubled.
                help=setting_help(name).replace("%", "%%"),
            )


def _command(
    commands: "Commands", name: str, help: str, run: Handler, *, serving: bool = False
) -> argparse.ArgumentParser:
    """Add one runnable command: its parser, the settings' flags, and its handler."""
    parser = commands.add_parser(name, help=help)
    _add_setting_flags(parser, serving=serving)
    parser.set_defaults(run=run)
    return parser


def _group(commands: "Commands", name: str, help: str) -> "Commands":
    """Add a command group (``ocs plans ACTION``): the object its actions are added to."""
    return commands.add_parser(name, help=help).add_subparsers(
        dest=f"{name}_command", required=True, metavar="ACTION"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole ``ocs`` command line: every command, its arguments and its handler."""
    parser = argparse.ArgumentParser(prog="ocs", description="ocs: online charging system")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(commands, "serve", "run the charging server", _serve, serving=True)
    _command(
        commands,
        "demo",
        "run the server with a demo catalog and funded accounts",
        _demo,
        serving=True,
    )
    _command(
        commands,
        "warm-up",
        "compile the prefix matcher now (once per install) so the first start is quick",
        _warm_up,
    )

    db = _group(commands, "db", "database maintenance")
    _command(db, "migrate", "apply pending schema migrations", _db_migrate)

    _command(
        commands,
        "reconcile",
        "check that every Redis balance equals its ledger (exit 1 if not)",
        _reconcile,
    )

    plans = _group(commands, "plans", "subscription plans")
    create = _command(plans, "create", "create a plan", _plans_create)
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
    _command(plans, "list", "list plans", _plans_list)

    tariffs = _group(commands, "tariffs", "rate decks")
    imp = _command(tariffs, "import", "replace a plan's rate deck with a CSV file", _tariffs_import)
    imp.add_argument("--plan", required=True)
    imp.add_argument("file", type=Path)

    codes = _group(commands, "codes", "area-code tables: destination names for CDRs and IVRs")
    cimp = _command(
        codes,
        "import",
        "replace the standard area-code table, or a plan's custom code list, with a CSV"
        " file (prefix,name)",
        _codes_import,
    )
    cimp.add_argument("--plan", help="the plan whose custom list it is: it replaces the standard")
    cimp.add_argument("file", type=Path)
    cremove = _command(
        codes, "remove", "drop a plan's custom code list, or the standard table", _codes_remove
    )
    cremove.add_argument("--plan", help="the plan, which goes back to the standard table")

    tokens = _group(commands, "tokens", "admin API tokens")
    tcreate = _command(
        tokens,
        "create",
        "make a token (printed this once, stored as a digest)",
        _tokens_create,
    )
    tcreate.add_argument("--name", required=True)
    tcreate.add_argument("--role", required=True, choices=("admin", "operator", "viewer", "switch"))
    _command(tokens, "list", "list tokens (names and roles)", _tokens_list)
    trevoke = _command(tokens, "revoke", "revoke a token by name", _tokens_revoke)
    trevoke.add_argument("name")

    accounts = _group(commands, "accounts", "accounts")
    acreate = _command(accounts, "create", "create an account", _accounts_create)
    acreate.add_argument("id")
    acreate.add_argument("--plan", required=True)
    acreate.add_argument("--balance", default="0", help="opening balance, e.g. 10.00")
    acreate.add_argument("--credit-limit", help="default: the plan's")
    acreate.add_argument("--max-lines", type=int, help="default: the plan's")
    acreate.add_argument("--status", default="active", choices=["active", "locked", "suspended"])
    ashow = _command(accounts, "show", "show an account", _accounts_show)
    ashow.add_argument("id")
    topup = _command(accounts, "topup", "credit an account", _accounts_topup)
    topup.add_argument("id")
    topup.add_argument("amount", help="e.g. 5.00")
    topup.add_argument("--topup-id", help="idempotency key: a repeated id credits once")

    counters = _group(commands, "counters", "usage counters")
    reset = _command(
        counters,
        "reset",
        "start a new counter cycle (unused seconds carry over)",
        _counters_reset,
    )
    reset.add_argument("--plan", help="only accounts of this plan")
    reset.add_argument("--account", help="only this account")
    reset.add_argument(
        "--cycle", help="cycle label: its recurring fees are charged once (default: today, UTC)"
    )

    rerate = _command(
        commands,
        "rerate",
        "rate a plan's CDRs again with today's catalog and report the differences",
        _rerate,
    )
    rerate.add_argument("--plan", required=True)
    rerate.add_argument("--since", help="CDRs stopped from, e.g. 2026-11-01T00:00:00Z")
    rerate.add_argument("--until", help="CDRs stopped before")

    pins = _group(commands, "pins", "calling cards")
    generate = _command(
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
    return parser


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


def _amount(text: str, flag: str) -> int:
    """An amount argument in minor units; a bad one is a usage error naming ``flag``."""
    try:
        return parse_amount(text)
    except MoneyError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _checked(check: Callable[[], T]) -> T:
    """Run an argument check that raises OcsError(invalid_field) as a usage error."""
    try:
        return check()
    except OcsError as exc:
        if exc.reason is Reason.INVALID_FIELD:
            raise UsageError(exc.message) from None
        raise


def _print(data: Any) -> None:
    """Write a command's result to stdout as indented JSON."""
    print(json.dumps(data, indent=2))


def _with_services(
    settings: Settings,
    action: "Callable[[Services], Awaitable[T]]",
    *,
    catalog: bool = False,
) -> T:
    """Open the stores, run ``action`` with the services, close them; its result."""
    from ocs.runtime import open_runtime

    async def run() -> T:
        """The action inside one runtime, closed whatever the action raises."""
        # Most commands write or read single records: they need no catalog snapshot.
        async with open_runtime(settings, listen_catalog=False, load_catalog=catalog) as services:
            return await action(services)

    return uvloop.run(run())


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
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"file: cannot read {path}: {exc.strerror}") from None


def _time(text: str | None, flag: str) -> datetime | None:
    """An optional ISO 8601 time with a zone; a bad one is a usage error naming ``flag``."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag}: not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise UsageError(f"{flag}: needs a time zone, e.g. 2026-11-01T00:00:00Z")
    return value


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
    _print({"compiled": compiled, "seconds": round(warm_up.warm_up(), 3)})
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs serve``: the charging server, in this process or in ``--workers`` children."""
    if settings.workers > 1:
        from ocs.workers import run_workers

        # Each worker runs this same command line (main puts it in args.argv).
        return run_workers(settings, args.argv)
    from ocs.server import serve

    uvloop.run(serve(settings))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs demo``: the server with a demo catalog and funded accounts (one process)."""
    from ocs.demo import run_demo

    uvloop.run(run_demo(settings))
    return 0


def _db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs db migrate``: apply pending schema migrations, listing them."""
    from ocs.db.migrate import migrate

    applied = _with_services(settings, lambda s: migrate(s.pool))
    _print({"applied_now": applied})
    return 0


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs reconcile``: compare each Redis balance with its ledger; exit 1 on a mismatch."""
    from ocs.balances.reconcile import reconcile

    result = _with_services(settings, lambda s: reconcile(s.redis, s.pool))
    _print(
        {
            "ok": result.ok,
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
        }
    )
    return 0 if result.ok else EXIT_REFUSED


def _plans_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs plans create``: a new plan, its arguments checked before any store opens."""
    import msgspec

    from ocs.catalog import store as catalog_store
    from ocs.catalog.snapshot import Plan
    from ocs.views import plan_view

    plan = Plan(
        id=_checked(lambda: catalog_store.validate_plan_id(args.id)),
        name=args.name or args.id,
        currency=_checked(lambda: catalog_store.validate_currency(args.currency)),
        credit_limit=_amount(args.credit_limit, "--credit-limit"),
        min_balance=_amount(args.min_balance, "--min-balance"),
        max_lines=args.max_lines,
        max_call_duration=args.max_call_duration,
    )
    created = _with_services(settings, lambda s: catalog_store.create_plan(s.pool, plan))
    _print(msgspec.to_builtins(plan_view(created)))
    return 0


def _plans_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs plans list``: every plan."""
    import msgspec

    from ocs.catalog import store as catalog_store
    from ocs.views import plan_view

    plans = _with_services(settings, lambda s: catalog_store.list_plans(s.pool))
    _print({"plans": [msgspec.to_builtins(plan_view(p)) for p in plans]})
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
    result = _with_services(settings, lambda s: catalog_store.import_deck(s.pool, args.plan, rows))
    _print(msgspec.to_builtins(deck_import_view(result)))
    return 0


def _code_list_id(plan: str | None) -> str:
    """The code list ``--plan`` names: the plan's custom one, else the standard table."""
    from ocs.catalog import store as catalog_store
    from ocs.decks.code_lists import STANDARD

    if plan is None:
        return STANDARD
    return _checked(lambda: catalog_store.validate_plan_id(plan, "--plan"))


def _codes_import(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs codes import``: replace the standard table or a plan's code list with a CSV."""
    from ocs.catalog import store as catalog_store
    from ocs.decks.code_lists import parse_code_list

    list_id = _code_list_id(args.plan)
    text = _read_csv(args.file)
    _compile_if_cold()
    entries = parse_code_list(text)
    count = _with_services(
        settings, lambda s: catalog_store.import_code_list(s.pool, entries, list_id)
    )
    _print({"plan": args.plan, "codes": count})
    return 0


def _codes_remove(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs codes remove``: drop a code list; exit 1 when there was none."""
    from ocs.catalog import store as catalog_store

    list_id = _code_list_id(args.plan)
    removed = _with_services(settings, lambda s: catalog_store.remove_code_list(s.pool, list_id))
    _print({"plan": args.plan, "removed": removed})
    return 0 if removed else EXIT_REFUSED


def _tokens_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs tokens create``: a new admin API token, printed this once."""
    from ocs import api_tokens

    token = _with_services(settings, lambda s: api_tokens.create(s.pool, args.name, args.role))
    _print({"name": args.name, "role": args.role, "token": token})
    return 0


def _tokens_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs tokens list``: every token's name, role and creation time (never the token)."""
    from ocs import api_tokens

    found = _with_services(settings, lambda s: api_tokens.listed(s.pool))
    _print(
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

    revoked = _with_services(settings, lambda s: api_tokens.revoke(s.pool, args.name))
    _print({"name": args.name, "revoked": revoked})
    return 0 if revoked else EXIT_REFUSED


def _accounts_create(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs accounts create``: a new account with its opening balance."""
    import msgspec

    from ocs.views import account_view

    opening = _amount(args.balance, "--balance")
    limit = None if args.credit_limit is None else _amount(args.credit_limit, "--credit-limit")
    view = _with_services(
        settings,
        lambda s: s.accounts.create(
            args.id,
            plan_id=args.plan,
            opening_balance=opening,
            credit_limit=limit,
            max_lines=args.max_lines,
            status=args.status,
        ),
    )
    _print(msgspec.to_builtins(account_view(view)))
    return 0


def _accounts_show(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs accounts show``: one account."""
    import msgspec

    from ocs.views import account_view

    view = _with_services(settings, lambda s: s.accounts.show(args.id))
    _print(msgspec.to_builtins(account_view(view)))
    return 0


def _accounts_topup(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs accounts topup``: credit an account, once per ``--topup-id``."""
    amount = _amount(args.amount, "amount")
    result = _with_services(settings, lambda s: s.accounts.topup(args.id, amount, args.topup_id))
    _print(
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
    report = _with_services(
        settings, lambda s: s.counters.reset(args.plan, args.account, args.cycle)
    )
    _print({"accounts": report.accounts, "counters": report.counters, "fees": report.fees})
    return 0


def _rerate(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs rerate``: rate a plan's CDRs again with today's catalog; report the changes."""
    from ocs.billing.rerate import rerate

    since, until = _time(args.since, "--since"), _time(args.until, "--until")
    _compile_if_cold()
    report = _with_services(
        settings,
        lambda s: rerate(s.pool, s.catalog.snapshot, args.plan, since, until),
        catalog=True,
    )
    _print(
        {
            "plan": report.plan_id,
            "cdrs": report.cdrs,
            "changed": report.changed,
            "unrated": report.unrated,
            "total_then": format_amount(report.total_then),
            "total_now": format_amount(report.total_now),
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


def _pins_generate(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs pins generate``: a batch of calling cards, written to a new private CSV file."""
    value = _amount(args.value, "--value")
    try:
        expires = None if args.expires is None else datetime.fromisoformat(args.expires)
    except ValueError:
        raise UsageError(f"--expires: not an ISO 8601 time: {args.expires!r}") from None
    if args.out.exists():
        raise UsageError(f"--out: {args.out} exists; PIN files are never overwritten")
    batch = _with_services(
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
    )
    # Only the owner may read the file: it holds every PIN of the batch.
    args.out.touch(mode=0o600)
    args.out.write_text(batch.csv(), encoding="utf-8")
    _print({"batch": batch.id, "cards": len(batch.cards), "file": str(args.out)})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ocs`` command line; returns the exit code."""
    from ocs.embedded import EmbeddedServerError, StoreConflictError

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
    except StoreConflictError as exc:
        print(f"ocs: embedded store: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EmbeddedServerError as exc:
        print(f"ocs: embedded server: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"ocs: cannot reach a backend: {exc}", file=sys.stderr)
        return EXIT_REFUSED
