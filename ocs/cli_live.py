"""``ocs calls`` and ``ocs top``: live views of calls and decisions for people at a terminal.

``ocs calls [--account A] [--once] [--interval S]`` shows the live calls, read from
Redis, in a table that refreshes until Ctrl-C; ``--once`` prints it once and exits
(for scripts: on a pipe the table is as wide as its rows, never cut to 80 columns).
``ocs top [--url URL] [--interval S]`` shows decisions per second and refusals by
reason, read from a running server's ``/metrics`` (by default the one this
configuration's ``http_host`` and ``http_port`` name), refreshing until Ctrl-C. The
reading and the tables are ``ocs.live_view``'s.

Registered by ``ocs.cli`` (``add_commands``); the shared helpers come from
``ocs.cli_support``, never from ``ocs.cli``.
"""

import argparse
import asyncio
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live

from ocs.cli_support import UsageError, add_command, with_services
from ocs.config import Settings

if TYPE_CHECKING:
    from rich.table import Table

    from ocs.cli_support import Commands
    from ocs.services import Services

# Wide enough for any row: on a pipe rich would otherwise cut the table to 80 columns.
PIPE_WIDTH = 1000
# Lines of the calls screen that are not rows: title, header, rule, caption, margins.
SCREEN_LINES_TAKEN = 7


def add_commands(commands: "Commands") -> None:
    """Register ``ocs calls`` and ``ocs top``."""
    calls = add_command(
        commands, "calls", "live calls in a table that refreshes (Ctrl-C to leave)", _calls
    )
    calls.add_argument("--account", help="only this account's live calls")
    calls.add_argument(
        "--once", action="store_true", help="print the table once and exit (for scripts)"
    )
    calls.add_argument("--interval", default="1", help="seconds between refreshes (default 1)")
    top = add_command(
        commands,
        "top",
        "decisions per second and refusals by reason of a running server (Ctrl-C to leave)",
        _top,
    )
    top.add_argument(
        "--url",
        help="the server's metrics URL (default: http://<http_host>:<http_port>/metrics)",
    )
    top.add_argument("--interval", default="2", help="seconds between readings (default 2)")


def _interval(text: str) -> float:
    """The ``--interval`` in seconds; a bad one is a usage error naming it."""
    try:
        seconds = float(text)
    except ValueError:
        raise UsageError(f"--interval: not a number of seconds: {text!r}") from None
    if not 0.1 <= seconds <= 3600:
        raise UsageError(f"--interval: expected seconds from 0.1 to 3600, got {text}")
    return seconds


def _console() -> Console:
    """stdout's console; on a pipe or a file, one as wide as the table needs."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)


def _calls(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs calls``: the live calls table, once or refreshing."""
    interval = _interval(args.interval)
    console = _console()
    # The catalog prices calls in time bands: their grants need it.
    with_services(
        settings, lambda s: _show_calls(s, console, args.account, args.once, interval), catalog=True
    )
    return 0


async def _show_calls(
    services: "Services", console: Console, account: str | None, once: bool, interval: float
) -> None:
    """Print the table once, or keep it on screen, read again every ``interval`` seconds."""
    from ocs.live_view import calls_table, read_live_calls

    async def table() -> "Table":
        calls = await read_live_calls(services, account)
        # On screen, the rows that fit (the terminal may be resized); printed once, all.
        rows = None if once else max(console.height - SCREEN_LINES_TAKEN, 1)
        return calls_table(calls, time.time(), account, rows)

    if once:
        console.print(await table())
        return
    with Live(await table(), console=console, auto_refresh=False) as live:
        while True:
            await asyncio.sleep(interval)
            live.update(await table(), refresh=True)


def _top(args: argparse.Namespace, settings: Settings) -> int:
    """``ocs top``: the server's decision rates and refusals, refreshing until Ctrl-C."""
    from ocs.live_view import DecisionReading, metrics_url, read_decisions, top_view

    interval = _interval(args.interval)
    url = args.url or metrics_url(settings.http_host, settings.http_port)
    previous: DecisionReading | None = None
    current: DecisionReading | None = None
    with Live(top_view(url, None, None), console=_console(), auto_refresh=False) as live:
        while True:
            error = None
            try:
                previous, current = current, read_decisions(url)
            except (OSError, ValueError) as exc:
                # Kept on screen and tried again: an operator watches through an outage.
                error = str(getattr(exc, "reason", None) or exc)
            live.update(top_view(url, previous, current, error), refresh=True)
            time.sleep(interval)
