"""``ocs tariffs import-peer``: a rate deck exported from A2Billing, ASTPP or MagnusBilling.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register the peer deck import command."""
