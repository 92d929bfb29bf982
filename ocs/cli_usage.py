"""``ocs usage import``: rate and debit usage files through a usage import template.

``ocs usage import --template T [--version V] [--all-or-nothing] [--rejects-dir D]
FILE...`` prints the import's summary as JSON (counts, amounts by currency, the
rejects file and the first problems) and shows a progress bar on a terminal. It
exits 0 when the import ran (rejected rows are in its answer and rejects file), 1
when an all-or-nothing import was refused or nothing could be imported.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ocs.cli_support import (
    EXIT_REFUSED,
    add_command,
    add_group,
    print_json,
    progress_bar,
    to_builtins,
    with_services,
)
from ocs.config import Settings

if TYPE_CHECKING:
    from ocs.cli_support import Commands
    from ocs.mediation.importer import UsageImporter
    from ocs.services import Services


def add_commands(commands: "Commands") -> None:
    """Register ``ocs usage import``."""
    usage = add_group(commands, "usage", "usage files from switches, carriers and meters")
    parser = add_command(
        usage, "import", "rate and debit usage files through a usage import template", _import
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="files to import, in order")
    parser.add_argument("--template", required=True, help="usage import template (name)")
    parser.add_argument("--version", type=int, help="template version (default: the latest)")
    parser.add_argument(
        "--all-or-nothing",
        action="store_true",
        help="apply nothing if any row is bad (default: apply the good rows)",
    )
    parser.add_argument(
        "--rejects-dir", help="where the rejects file goes (default: beside the first file)"
    )


def importer_of(services: "Services") -> "UsageImporter":
    """The usage importer over one process's services."""
    from ocs.mediation.importer import UsageImporter

    return UsageImporter(
        services.pool,
        services.store,
        services.catalog,
        database_url=services.database_url,
        result_ttl=services.settings.stop_dedupe_ttl,
        supplier_wait=services.settings.usage_import_supplier_wait,
        ledger_wait=services.settings.usage_import_ledger_wait,
        save_every=services.settings.usage_import_save_every,
    )


def _count_lines(paths: list[str]) -> int:
    """Lines in the files (the progress bar's total; header and filtered rows included)."""
    total = 0
    for path in paths:
        with open(path, "rb") as stream:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))
    return total


def _import(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs usage import``: import the files and print the summary."""
    from ocs.mediation.importer import ImportRequest

    request = ImportRequest(
        template=args.template,
        files=tuple(args.files),
        mode="all_or_nothing" if args.all_or_nothing else "good_rows",
        version=args.version,
        rejects_dir=args.rejects_dir,
    )

    async def run(services: "Services") -> Any:
        bar = progress_bar("rows") if sys.stderr.isatty() else None
        task = None
        if bar is not None:
            task = bar.add_task("import", total=_count_lines(args.files))
        try:
            return await importer_of(services).run(
                request,
                None if bar is None else (lambda done: bar.update(task, completed=done)),
            )
        finally:
            if bar is not None:
                bar.stop()

    summary = with_services(settings, run, catalog=True)
    print_json(to_builtins(summary))
    return EXIT_REFUSED if summary.state == "refused" else 0
