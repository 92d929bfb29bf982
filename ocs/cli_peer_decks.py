"""``ocs tariffs import-peer``: a rate deck exported from A2Billing, ASTPP or MagnusBilling.

``ocs tariffs import-peer --plan P --format astpp FILE`` replaces the plan's
deck with the export, all or nothing, as ``ocs tariffs import`` does with ocs's
own CSV (ocs.decks.peers reads it; docs/peer-decks.md maps each column). A
refused export prints every problem, one a line, with its line and the peer's
column (``ocs.cli`` prints every refused deck so). ``--convert-only`` writes the
ocs deck CSV to stdout instead, touching no store.

Registered by ``ocs.cli`` (``add_commands``), after its own ``tariffs`` group, into
which ``import-peer`` goes; the shared helpers come from ``ocs.cli_support``, never
from ``ocs.cli``.
"""

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ocs.cli_support import (
    UsageError,
    add_command,
    checked,
    print_json,
    read_bytes,
    to_builtins,
    with_services,
)
from ocs.config import Settings
from ocs.decks.peers import PEER_FORMATS

if TYPE_CHECKING:
    from ocs.catalog.store import DeckImport
    from ocs.cli_support import Commands
    from ocs.services import Services


def add_tariff_commands(tariffs: "Commands") -> None:
    """Add ``import-peer`` to the ``ocs tariffs`` group (``ocs.cli`` hands it over)."""
    peer = add_command(
        tariffs,
        "import-peer",
        "replace a plan's rate deck with an A2Billing, ASTPP or MagnusBilling rate export",
        _import_peer,
    )
    peer.add_argument("--plan", help="the plan whose deck it replaces")
    peer.add_argument("--format", required=True, choices=PEER_FORMATS, help="whose export")
    peer.add_argument(
        "--convert-only",
        action="store_true",
        help="write the export as ocs deck CSV to stdout; import nothing",
    )
    peer.add_argument("file", type=Path, help="the export, a CSV file")


def _import_peer(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs tariffs import-peer``: replace a plan's deck with a peer's export, all or nothing."""
    from ocs import warm_up
    from ocs.catalog import store as catalog_store
    from ocs.decks.peers import peer_deck_to_ocs, read_peer_deck
    from ocs.views import deck_import_view

    # Bytes, undecoded: a line that is not UTF-8 is refused by its number.
    data = read_bytes(args.file, "file")
    if args.convert_only:
        sys.stdout.write(peer_deck_to_ocs(args.format, data))
        return 0
    if args.plan is None:
        raise UsageError("--plan: required, unless --convert-only")
    plan_id = checked(lambda: catalog_store.validate_plan_id(args.plan, "--plan"))
    if warm_up.cache_is_cold():  # the import's kernels, compiled once per install
        warm_up.warm_up()

    async def run(services: "Services") -> "DeckImport":
        """The plan's currency (a header may name the export's), then the import."""
        plans = await catalog_store.list_plans(services.pool)
        currency = next((p.currency for p in plans if p.id == plan_id), None)
        deck = read_peer_deck(args.format, data, currency=currency)
        return await catalog_store.import_deck(services.pool, plan_id, deck)

    print_json(to_builtins(deck_import_view(with_services(settings, run))))
    return 0
