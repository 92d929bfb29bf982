"""``ocs calls`` and ``ocs top``: live views of calls and decisions for people at a terminal.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register ``ocs calls`` and ``ocs top``."""
