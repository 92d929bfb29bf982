"""The `ocs` command line: serve, demo, migrations, plans, tariffs, area codes and accounts.

Exit codes: 0 success, 1 a refused operation (the message says why),
2 bad configuration or usage (the message names the key, flag or argument), or an
embedded store that would be started beside another one (the message names both).
"""

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import uvloop

from ocs.config import ConfigError, Settings, load_settings
from ocs.errors import OcsError, Reason
from ocs.logs import configure_logging
from ocs.money import MoneyError, format_amount, parse_amount

EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_USAGE = 2  # as argparse's own usage errors


class UsageError(ValueError):
    """A command-line argument with a value the command cannot use; the message names it."""


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration (overrides OCS_* and --config)")
    s = argparse.SUPPRESS
    group.add_argument("--config", default=s, help="TOML settings file")
    group.add_argument(
        "--data-dir",
        default=s,
        help="where embedded servers keep data ($XDG_DATA_HOME/ocs, else ~/.local/share/ocs)",
    )
    group.add_argument("--redis-url", default=s, help="external Redis (default: embedded)")
    group.add_argument("--database-url", default=s, help="external PostgreSQL (default: embedded)")
    group.add_argument("--log-level", default=s, help="DEBUG, INFO, WARNING or ERROR")
    group.add_argument("--log-format", default=s, help="json or text")
    return common


def _server_options() -> argparse.ArgumentParser:
    server = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    server.add_argument("--http-host", default=s, help="address to listen on (0.0.0.0)")
    server.add_argument("--http-port", default=s, help="HTTP port (8080)")
    server.add_argument("--workers", default=s, help="server processes sharing the ports (1)")
    server.add_argument("--radius-host", default=s, help="RADIUS address (0.0.0.0)")
    server.add_argument("--radius-auth-port", default=s, help="RADIUS authentication port (1812)")
    server.add_argument("--radius-acct-port", default=s, help="RADIUS accounting port (1813)")
    return server


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    server = _server_options()
    parser = argparse.ArgumentParser(prog="ocs", description="ocs: online charging system")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", parents=[common, server], help="run the charging server")
    commands.add_parser(
        "demo",
        parents=[common, server],
        help="run the server with a demo catalog and funded accounts",
    )

    commands.add_parser(
        "warm-up",
        parents=[common],
        help="compile the prefix matcher now (once per install) so the first start is quick",
    )

    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    db.add_parser("migrate", parents=[common], help="apply pending schema migrations")

    commands.add_parser(
        "reconcile",
        parents=[common],
        help="check that every Redis balance equals its ledger (exit 1 if not)",
    )

    plans = commands.add_parser("plans", help="subscription plans").add_subparsers(
        dest="plans_command", required=True, metavar="ACTION"
    )
    create = plans.add_parser("create", parents=[common], help="create a plan")
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
    plans.add_parser("list", parents=[common], help="list plans")

    tariffs = commands.add_parser("tariffs", help="rate decks").add_subparsers(
        dest="tariffs_command", required=True, metavar="ACTION"
    )
    imp = tariffs.add_parser(
        "import", parents=[common], help="replace a plan's rate deck with a CSV file"
    )
    imp.add_argument("--plan", required=True)
    imp.add_argument("file", type=Path)

    codes = commands.add_parser(
        "codes", help="area-code tables: destination names for CDRs and IVRs"
    ).add_subparsers(dest="codes_command", required=True, metavar="ACTION")
    cimp = codes.add_parser(
        "import",
        parents=[common],
        help="replace the standard area-code table, or a plan's custom code list, with a CSV"
        " file (prefix,name)",
    )
    cimp.add_argument("--plan", help="the plan whose custom list it is: it replaces the standard")
    cimp.add_argument("file", type=Path)
    cremove = codes.add_parser(
        "remove", parents=[common], help="drop a plan's custom code list, or the standard table"
    )
    cremove.add_argument("--plan", help="the plan, which goes back to the standard table")

    tokens = commands.add_parser("tokens", help="admin API tokens").add_subparsers(
        dest="tokens_command", required=True, metavar="ACTION"
    )
    tcreate = tokens.add_parser(
        "create", parents=[common], help="make a token (printed this once, stored as a digest)"
    )
    tcreate.add_argument("--name", required=True)
    tcreate.add_argument("--role", required=True, choices=("admin", "operator", "viewer", "switch"))
    tokens.add_parser("list", parents=[common], help="list tokens (names and roles)")
    trevoke = tokens.add_parser("revoke", parents=[common], help="revoke a token by name")
    trevoke.add_argument("name")

    accounts = commands.add_parser("accounts", help="accounts").add_subparsers(
        dest="accounts_command", required=True, metavar="ACTION"
    )
    acreate = accounts.add_parser("create", parents=[common], help="create an account")
    acreate.add_argument("id")
    acreate.add_argument("--plan", required=True)
    acreate.add_argument("--balance", default="0", help="opening balance, e.g. 10.00")
    acreate.add_argument("--credit-limit", help="default: the plan's")
    acreate.add_argument("--max-lines", type=int, help="default: the plan's")
    acreate.add_argument("--status", default="active", choices=["active", "locked", "suspended"])
    ashow = accounts.add_parser("show", parents=[common], help="show an account")
    ashow.add_argument("id")
    topup = accounts.add_parser("topup", parents=[common], help="credit an account")
    topup.add_argument("id")
    topup.add_argument("amount", help="e.g. 5.00")
    topup.add_argument("--topup-id", help="idempotency key: a repeated id credits once")

    counters = commands.add_parser("counters", help="usage counters").add_subparsers(
        dest="counters_command", required=True, metavar="ACTION"
    )
    reset = counters.add_parser(
        "reset", parents=[common], help="start a new counter cycle (unused seconds carry over)"
    )
    reset.add_argument("--plan", help="only accounts of this plan")
    reset.add_argument("--account", help="only this account")
    reset.add_argument(
        "--cycle", help="cycle label: its recurring fees are charged once (default: today, UTC)"
    )

    rerate = commands.add_parser(
        "rerate",
        parents=[common],
        help="rate a plan's CDRs again with today's catalog and report the differences",
    )
    rerate.add_argument("--plan", required=True)
    rerate.add_argument("--since", help="CDRs stopped from, e.g. 2026-11-01T00:00:00Z")
    rerate.add_argument("--until", help="CDRs stopped before")

    pins = commands.add_parser("pins", help="calling cards").add_subparsers(
        dest="pins_command", required=True, metavar="ACTION"
    )
    generate = pins.add_parser(
        "generate", parents=[common], help="generate a PIN batch and write it as CSV"
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


_SETTING_FLAGS = (
    "data_dir",
    "redis_url",
    "database_url",
    "log_level",
    "log_format",
    "http_host",
    "http_port",
    "workers",
    "radius_host",
    "radius_auth_port",
    "radius_acct_port",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in _SETTING_FLAGS if hasattr(args, name)}
    return load_settings(getattr(args, "config", None), overrides=overrides)


def _amount(text: str, flag: str) -> int:
    try:
        return parse_amount(text)
    except MoneyError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _checked(check: Callable[[], Any]) -> Any:
    """Run an argument check that raises OcsError(invalid_field) as a usage error."""
    try:
        return check()
    except OcsError as exc:
        if exc.reason is Reason.INVALID_FIELD:
            raise UsageError(exc.message) from None
        raise


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


async def _with_services(
    settings: Settings, action: Callable[[Any], Awaitable[Any]], *, catalog: bool = False
) -> Any:
    from ocs.runtime import open_runtime

    # Most commands write or read single records: they need no catalog snapshot.
    async with open_runtime(settings, listen_catalog=False, load_catalog=catalog) as services:
        return await action(services)


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


def _time(text: str | None, flag: str) -> Any:
    from datetime import datetime

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
    from ocs.charging import matcher

    if matcher.cache_is_cold():
        matcher.warm_up()


def _run_command(
    args: argparse.Namespace, settings: Settings, argv: Sequence[str] | None = None
) -> int:
    from ocs.charging import catalog_store
    from ocs.charging.catalog import Plan
    from ocs.charging.deck import parse_deck
    from ocs.http.handlers import account_json, deck_import_json, plan_json

    command = args.command
    if command == "warm-up":
        from ocs.charging import matcher

        compiled = matcher.cache_is_cold()
        _print({"compiled": compiled, "seconds": round(matcher.warm_up(), 3)})
        return 0
    if command in ("serve", "demo"):
        if command == "serve" and settings.workers > 1:
            from ocs.workers import run_workers

            return run_workers(settings, sys.argv[1:] if argv is None else argv)
        if command == "serve":
            from ocs.server import serve

            uvloop.run(serve(settings))
        else:
            from ocs.demo import run_demo

            uvloop.run(run_demo(settings))
        return 0
    if command == "reconcile":
        from ocs.balances.reconcile import reconcile

        result = uvloop.run(_with_services(settings, lambda s: reconcile(s.redis, s.pool)))
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
    if command == "db":
        from ocs.db.migrate import migrate

        applied = uvloop.run(_with_services(settings, lambda s: migrate(s.pool)))
        _print({"applied_now": applied})
        return 0
    if command == "plans" and args.plans_command == "create":
        plan = Plan(
            id=_checked(lambda: catalog_store.validate_plan_id(args.id)),
            name=args.name or args.id,
            currency=_checked(lambda: catalog_store.validate_currency(args.currency)),
            credit_limit=_amount(args.credit_limit, "--credit-limit"),
            min_balance=_amount(args.min_balance, "--min-balance"),
            max_lines=args.max_lines,
            max_call_duration=args.max_call_duration,
        )
        created = uvloop.run(
            _with_services(settings, lambda s: catalog_store.create_plan(s.pool, plan))
        )
        _print(plan_json(created))
        return 0
    if command == "plans":
        plans = uvloop.run(_with_services(settings, lambda s: catalog_store.list_plans(s.pool)))
        _print({"plans": [plan_json(p) for p in plans]})
        return 0
    if command == "tariffs":
        text = _read_csv(args.file)
        _compile_if_cold()
        rows = parse_deck(text)
        result = uvloop.run(
            _with_services(settings, lambda s: catalog_store.import_deck(s.pool, args.plan, rows))
        )
        _print(deck_import_json(result))
        return 0
    if command == "tokens":
        from ocs import api_tokens

        action = args.tokens_command
        if action == "create":
            token = uvloop.run(
                _with_services(settings, lambda s: api_tokens.create(s.pool, args.name, args.role))
            )
            _print({"name": args.name, "role": args.role, "token": token})
            return 0
        if action == "list":
            found = uvloop.run(_with_services(settings, lambda s: api_tokens.listed(s.pool)))
            _print(
                {
                    "tokens": [
                        {"name": t.name, "role": t.role, "created_at": t.created_at.isoformat()}
                        for t in found
                    ]
                }
            )
            return 0
        revoked = uvloop.run(
            _with_services(settings, lambda s: api_tokens.revoke(s.pool, args.name))
        )
        _print({"name": args.name, "revoked": revoked})
        return 0 if revoked else EXIT_REFUSED
    if command == "codes":
        from ocs.charging.code_lists import STANDARD, parse_code_list

        list_id = (
            STANDARD
            if args.plan is None
            else _checked(lambda: catalog_store.validate_plan_id(args.plan, "--plan"))
        )
        if args.codes_command == "import":
            text = _read_csv(args.file)
            _compile_if_cold()
            entries = parse_code_list(text)
            count = uvloop.run(
                _with_services(
                    settings, lambda s: catalog_store.import_code_list(s.pool, entries, list_id)
                )
            )
            _print({"plan": args.plan, "codes": count})
            return 0
        removed = uvloop.run(
            _with_services(settings, lambda s: catalog_store.remove_code_list(s.pool, list_id))
        )
        _print({"plan": args.plan, "removed": removed})
        return 0 if removed else EXIT_REFUSED
    if command == "accounts":
        action = args.accounts_command
        if action == "create":
            opening = _amount(args.balance, "--balance")
            limit = (
                None if args.credit_limit is None else _amount(args.credit_limit, "--credit-limit")
            )
            view = uvloop.run(
                _with_services(
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
            )
            _print(account_json(view))
        elif action == "show":
            view = uvloop.run(_with_services(settings, lambda s: s.accounts.show(args.id)))
            _print(account_json(view))
        else:
            amount = _amount(args.amount, "amount")
            result = uvloop.run(
                _with_services(settings, lambda s: s.accounts.topup(args.id, amount, args.topup_id))
            )
            _print(
                {
                    "account": args.id,
                    "amount": format_amount(result.amount),
                    "balance": format_amount(result.balance),
                    "repeated": result.repeated,
                }
            )
        return 0
    if command == "counters":
        report = uvloop.run(
            _with_services(
                settings, lambda s: s.counters.reset(args.plan, args.account, args.cycle)
            )
        )
        _print({"accounts": report.accounts, "counters": report.counters, "fees": report.fees})
        return 0
    if command == "rerate":
        from ocs.billing.rerate import rerate

        since, until = _time(args.since, "--since"), _time(args.until, "--until")
        _compile_if_cold()
        report = uvloop.run(
            _with_services(
                settings,
                lambda s: rerate(s.pool, s.catalog.snapshot, args.plan, since, until),
                catalog=True,
            )
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
                        "rated_now": None
                        if line.rated_now is None
                        else format_amount(line.rated_now),
                    }
                    for line in report.lines
                ],
            }
        )
        return 0
    if command == "pins":
        from datetime import datetime

        value = _amount(args.value, "--value")
        try:
            expires = None if args.expires is None else datetime.fromisoformat(args.expires)
        except ValueError:
            raise UsageError(f"--expires: not an ISO 8601 time: {args.expires!r}") from None
        if args.out.exists():
            raise UsageError(f"--out: {args.out} exists; PIN files are never overwritten")
        batch = uvloop.run(
            _with_services(
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
        )
        # Only the owner may read the file: it holds every PIN of the batch.
        args.out.touch(mode=0o600)
        args.out.write_text(batch.csv(), encoding="utf-8")
        _print({"batch": batch.id, "cards": len(batch.cards), "file": str(args.out)})
        return 0
    raise ConfigError(f"unknown command {command!r}")  # pragma: no cover - argparse guards


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ocs`` command line; returns the exit code."""
    from ocs.embedded import EmbeddedServerError, StoreConflictError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"ocs: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _run_command(args, settings, argv)
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
