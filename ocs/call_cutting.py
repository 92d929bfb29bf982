"""Cutting a live call from any process: charged up to now, and its NAS told to end it.

``call_cutter`` is what dunning takes (``dunning.CallCutter``): it cuts a call as
``DELETE /v1/calls/{call_id}`` does (``CallService.cut``), then asks the call's
NAS to hang up (RFC 5176 Disconnect-Request). A serving process has its RADIUS
server do that (``Services.disconnect``); a process without one (``ocs
billing-worker``) uses ``nas_disconnect``, which finds the NAS in the client
table in PostgreSQL and sends the request itself.
"""

from collections.abc import Awaitable, Callable

from ocs.charging.janitor import Disconnect
from ocs.charging.values import CallRecord
from ocs.radius.clients import load_client_table
from ocs.radius.disconnect import disconnect_call
from ocs.services import Services


def nas_disconnect(services: Services) -> Disconnect:
    """Disconnect-Requests from a process that runs no RADIUS server: each request reads
    the client table (NAS addresses, ports, secrets) as it is now."""

    async def disconnect(record: CallRecord) -> object:
        """Ask the call's NAS to end it."""
        clients = await load_client_table(services.pool, services.settings)
        return await disconnect_call(clients, record, services.settings.disconnect_timeout)

    return disconnect


def call_cutter(
    services: Services, disconnect: Disconnect | None = None
) -> Callable[[str, str], Awaitable[str | None]]:
    """Cut a live call as ``DELETE /v1/calls/{call_id}`` does: charged up to now, then its
    NAS sent a Disconnect-Request by ``disconnect`` (default: this process's RADIUS
    server, ``services.disconnect``). The NAS's answer, or None."""
    sender = disconnect if disconnect is not None else services.disconnect

    async def cut(account_id: str, call_id: str) -> str | None:
        """Cut one call; what its NAS said (None: no NAS to tell)."""
        # The account's own call of the id: another NAS client's call may hold the id's
        # reference (decision 0052).
        _charge, record = await services.calls.cut(call_id, account_id)
        outcome = None if sender is None else await sender(record)
        reason = getattr(outcome, "reason", None)
        return reason if isinstance(reason, str) else None

    return cut
