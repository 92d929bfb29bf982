"""Invoice documents on the `ocs` command line: ``ocs invoices pdf ID [--out FILE]``.

Writes an invoice's PDF (``ocs.billing.documents``): a posted invoice's stored
copy, a draft's preview marked DRAFT. Without ``--out`` the file is named as
the API offers it (``<number>.pdf``) in the current directory.

Registered by ``ocs.cli`` (``add_commands``, ``add_invoice_commands``); the
shared helpers come from ``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ocs.cli_support import (
    UsageError,
    add_command,
    positive_bigint,
    print_json,
    with_services,
)
from ocs.config import Settings

if TYPE_CHECKING:
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register this module's top-level commands (none: its action is in ``invoices``)."""


def add_invoice_commands(invoices: "Commands") -> None:
    """Add ``pdf`` to the ``ocs invoices`` group."""
    pdf = add_command(invoices, "pdf", "write an invoice's PDF (a draft's preview)", _pdf)
    pdf.add_argument("id", type=positive_bigint, help="the invoice's id")
    pdf.add_argument(
        "--out", type=Path, help="the file to write (default: <number>.pdf in this directory)"
    )


def _pdf(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs invoices pdf``: write the PDF; print where and how large."""
    from ocs.billing import documents

    found = with_services(
        settings, lambda s: documents.invoice_document(s.pool, s.settings, args.id)
    )
    out: Path = args.out if args.out is not None else Path.cwd() / found.name
    try:
        documents.write_atomically(out, found.pdf)
    except OSError as exc:
        raise UsageError(f"--out: cannot write {out}: {exc.strerror}") from None
    print_json({"invoice": args.id, "file": str(out), "bytes": len(found.pdf)})
    return 0
