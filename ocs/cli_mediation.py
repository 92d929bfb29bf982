"""``ocs rate-types``, ``ocs overrides`` and ``ocs usage-templates``: mediation's admin commands.

``ocs rate-types list|add|delete|rates|set-rate|delete-rate``, ``ocs overrides
list|import|set|delete`` and ``ocs usage-templates list|show|add``, each a small
handler over ``ocs.mediation.store`` printing the admin API's own view of what it
did. Amounts are decimal strings of the plan's currency ("0.05"), converted
exactly to micro-units; an override table is a CSV file of ``from,to`` lines (a
``from,to`` header is optional); a template is its JSON definition, checked by
the same declaration as ``POST /v1/usage-templates``.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
import csv
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ocs.cli_support import (
    UsageError,
    add_command,
    add_group,
    amount_arg,
    checked,
    print_json,
    read_bytes,
    to_builtins,
    with_services,
)
from ocs.config import Settings
from ocs.errors import OcsError

if TYPE_CHECKING:
    import asyncpg

    from ocs.cli_support import Commands

T = TypeVar("T")


def add_commands(commands: "Commands") -> None:
    """Register ``ocs rate-types``, ``ocs overrides`` and ``ocs usage-templates``."""
    _add_rate_types(commands)
    _add_overrides(commands)
    _add_templates(commands)


def _add_rate_types(commands: "Commands") -> None:
    """rate-types list, add, delete, rates, set-rate and delete-rate."""
    group = add_group(commands, "rate-types", "rate types and plans' rates by rate type")
    add_command(group, "list", "list rate types", _rate_types_list)
    add = add_command(group, "add", "define a rate type (or give one a description)", _add)
    add.add_argument("name", help="e.g. 'Inbound Toll-free'")
    add.add_argument("--description", default="")
    delete = add_command(group, "delete", "delete a rate type nothing uses", _delete)
    delete.add_argument("name")
    rates = add_command(group, "rates", "list a plan's rates by rate type", _rates)
    rates.add_argument("--plan", required=True)
    rate = add_command(group, "set-rate", "set a plan's rate for a rate type", _set_rate)
    rate.add_argument("--plan", required=True)
    rate.add_argument("--rate-type", required=True)
    rate.add_argument("--name", required=True, help="as invoices name the usage")
    rate.add_argument("--price", required=True, help="per --per seconds or units, e.g. 0.05")
    rate.add_argument("--connect-fee", default="0", help="once per record, e.g. 0.10")
    rate.add_argument("--first-block", type=int, default=0, help="the least billed")
    rate.add_argument("--increment", type=int, default=1, help="the billing step")
    rate.add_argument("--per", type=int, default=60, help="60: a price per minute; 1: per unit")
    rate.add_argument("--currency", help="the plan's (the default); no other is taken")
    rate.add_argument("--tax-code")
    rate.add_argument("--gl-code")
    unset = add_command(group, "delete-rate", "remove a plan's rate for a rate type", _unset)
    unset.add_argument("--plan", required=True)
    unset.add_argument("--rate-type", required=True)


def _add_overrides(commands: "Commands") -> None:
    """overrides list, import, set and delete."""
    group = add_group(commands, "overrides", "suppliers' rate-type overrides")
    listed = add_command(group, "list", "list a supplier's overrides", _overrides_list)
    listed.add_argument("--supplier", required=True)
    imported = add_command(
        group, "import", "replace a supplier's overrides with a CSV file", _overrides_import
    )
    imported.add_argument("--supplier", required=True)
    imported.add_argument("file", type=Path, help="CSV lines from,to (a from,to header optional)")
    one = add_command(group, "set", "add or change one override", _overrides_set)
    one.add_argument("--supplier", required=True)
    one.add_argument("from_rate_type", metavar="FROM")
    one.add_argument("to_rate_type", metavar="TO")
    gone = add_command(group, "delete", "remove one override", _overrides_delete)
    gone.add_argument("--supplier", required=True)
    gone.add_argument("from_rate_type", metavar="FROM")


def _add_templates(commands: "Commands") -> None:
    """usage-templates list, show and add."""
    group = add_group(commands, "usage-templates", "versioned usage import templates")
    add_command(group, "list", "list stored templates", _templates_list)
    show = add_command(group, "show", "show a template's definition and versions", _show)
    show.add_argument("name")
    show.add_argument("--version", type=int, help="this version (default: the latest)")
    add = add_command(group, "add", "save a template (a changed one is a new version)", _save)
    add.add_argument("file", type=Path, help="the template's JSON definition")


def _on_conn(settings: Settings, action: "Callable[[asyncpg.Connection], Awaitable[T]]") -> T:
    """Run ``action`` on one PostgreSQL connection of the command's stores; its result."""

    async def run(services: Any) -> T:
        """The action on a connection taken from the pool."""
        async with services.pool.acquire() as conn:
            return await action(conn)

    return with_services(settings, run)


# --- rate types ------------------------------------------------------------------------


def _rate_types_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs rate-types list``: every rate type."""
    from ocs.http.mediation_handlers import rate_type_view
    from ocs.mediation import store

    found = _on_conn(settings, store.list_rate_types)
    print_json({"rate_types": [to_builtins(rate_type_view(t)) for t in found]})
    return 0


def _add(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs rate-types add``: define a rate type, checked before any store opens."""
    from ocs.http.mediation_handlers import rate_type_view
    from ocs.mediation import store

    checked(lambda: store.validate_rate_type_name(args.name))
    found, made = _on_conn(
        settings, lambda c: store.create_rate_type(c, args.name, args.description)
    )
    print_json({**to_builtins(rate_type_view(found)), "created": made})
    return 0


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs rate-types delete``: delete a rate type (exit 1: none, or in use)."""
    from ocs.http.mediation_handlers import rate_type_view
    from ocs.mediation import store

    removed = _on_conn(settings, lambda c: store.delete_rate_type(c, args.name))
    print_json({"removed": to_builtins(rate_type_view(removed))})
    return 0


def _rates(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs rate-types rates``: a plan's rates by rate type."""
    from ocs.http.mediation_handlers import rate_type_rate_view
    from ocs.mediation import store

    found = _on_conn(settings, lambda c: store.rate_type_rates(c, args.plan))
    print_json({"plan": args.plan, "rates": [to_builtins(rate_type_rate_view(r)) for r in found]})
    return 0


def _set_rate(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs rate-types set-rate``: a plan's rate for a rate type, checked before any store
    opens; amounts are decimal strings of the plan's currency."""
    from ocs.http.mediation_handlers import rate_type_rate_view
    from ocs.mediation import store

    price = amount_arg(args.price, "--price")
    connect_fee = amount_arg(args.connect_fee, "--connect-fee")
    rate = checked(
        lambda: store.make_rate(
            price=price,
            connect_fee=connect_fee,
            first_block=args.first_block,
            increment=args.increment,
            per=args.per,
        )
    )
    found = _on_conn(
        settings,
        lambda c: store.set_rate_type_rate(
            c,
            args.plan,
            args.rate_type,
            args.name,
            rate,
            currency=args.currency,
            tax_code=args.tax_code,
            gl_code=args.gl_code,
        ),
    )
    print_json(to_builtins(rate_type_rate_view(found)))
    return 0


def _unset(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs rate-types delete-rate``: remove a plan's rate for a rate type (exit 1: none)."""
    from ocs.http.mediation_handlers import rate_type_rate_view
    from ocs.mediation import store

    removed = _on_conn(
        settings, lambda c: store.delete_rate_type_rate(c, args.plan, args.rate_type)
    )
    print_json({"removed": to_builtins(rate_type_rate_view(removed))})
    return 0


# --- overrides -------------------------------------------------------------------------


def _overrides_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs overrides list``: a supplier's overrides."""
    from ocs.http.mediation_handlers import override_table
    from ocs.mediation import store

    found = _on_conn(settings, lambda c: store.list_overrides(c, args.supplier))
    print_json(to_builtins(override_table(args.supplier, found)))
    return 0


def override_rows(text: str, source: str) -> tuple[list[tuple[str, str]], list[int]]:
    """An override CSV's (from, to) pairs and the line each came from; blank lines are
    skipped, and a first line ``from,to`` is the header. A line that is not two cells
    is a usage error naming ``source`` and the line."""
    pairs: list[tuple[str, str]] = []
    lines: list[int] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    first = True
    try:
        for row in reader:
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            header, first = first and [c.lower() for c in cells] == ["from", "to"], False
            if header:
                continue
            if len(cells) != 2:
                raise UsageError(f"{source} line {reader.line_num}: expected two cells, from,to")
            pairs.append((cells[0], cells[1]))
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise UsageError(f"{source} line {reader.line_num}: not valid CSV: {exc}") from None
    return pairs, lines


def _overrides_import(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs overrides import``: replace a supplier's override table with a CSV file, all
    or nothing; a bad pair names its line."""
    from ocs.http.mediation_handlers import override_table
    from ocs.mediation import store

    source = str(args.file)
    try:
        text = read_bytes(args.file, "FILE").decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    pairs, lines = override_rows(text, source)
    try:
        found = _on_conn(settings, lambda c: store.replace_overrides(c, args.supplier, pairs))
    except OcsError as exc:
        raise _at_line(exc, source, lines) from None
    print_json(to_builtins(override_table(args.supplier, found)))
    return 0


def _at_line(error: OcsError, source: str, lines: list[int]) -> OcsError:
    """A refusal naming a pair (``overrides[2].to_rate_type``) as the file's line and cell."""
    field = error.field or ""
    prefix = f"{field}: "
    if field.startswith("overrides[") and "]" in field and error.message.startswith(prefix):
        n = int(field[len("overrides[") : field.index("]")])
        if n < len(lines):
            cell = "to" if field.endswith("to_rate_type") else "from"
            where = f"{source} line {lines[n]}, {cell}"
            return OcsError(
                error.reason, f"{where}: {error.message[len(prefix) :]}", field=error.field
            )
    return error


def _overrides_set(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs overrides set``: add or change one of a supplier's overrides."""
    from ocs.http.mediation_handlers import override_view
    from ocs.mediation import store

    found = _on_conn(
        settings,
        lambda c: store.set_override(c, args.supplier, args.from_rate_type, args.to_rate_type),
    )
    print_json(to_builtins(override_view(found)))
    return 0


def _overrides_delete(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs overrides delete``: remove one of a supplier's overrides (exit 1: none)."""
    from ocs.http.mediation_handlers import override_view
    from ocs.mediation import store

    removed = _on_conn(
        settings, lambda c: store.delete_override(c, args.supplier, args.from_rate_type)
    )
    print_json({"removed": to_builtins(override_view(removed))})
    return 0


# --- usage import templates -----------------------------------------------------------


def _templates_list(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs usage-templates list``: every stored template."""
    from ocs.http.mediation_handlers import template_summary_view
    from ocs.mediation import store

    found = _on_conn(settings, store.list_templates)
    print_json({"templates": [to_builtins(template_summary_view(t)) for t in found]})
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs usage-templates show``: a template's definition and versions (exit 1: none)."""
    from ocs.http.mediation_handlers import template_view

    if args.version is not None and args.version < 1:
        raise UsageError("--version: expected 1 or more")
    shown = _on_conn(settings, lambda c: template_view(c, args.name, args.version))
    print_json(to_builtins(shown))
    return 0


def _save(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs usage-templates add``: save a template from its JSON file, checked before any
    store opens (a mistake names the field); a changed definition is a new version."""
    from ocs.mediation import store
    from ocs.mediation.template import template_from_json

    raw = read_bytes(args.file, "FILE")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{args.file}: not valid JSON: {exc}") from None
    template = checked(lambda: template_from_json(data))
    version, new = _on_conn(settings, lambda c: store.store_template(c, template))
    print_json(
        {"name": template.name, "supplier": template.supplier, "version": version, "new": new}
    )
    return 0
