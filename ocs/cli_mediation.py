"""``ocs rate-types``, ``ocs overrides`` and ``ocs usage-templates``: mediation's admin commands.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocs.cli_support import Commands


def add_commands(commands: "Commands") -> None:
    """Register the mediation admin commands."""
