"""What every `ocs` command module shares: registering a command with its handler and the
settings' flags, checking argument values (a bad one is a usage error naming it),
opening the stores for one action, and printing the result as JSON.

``ocs.cli`` builds the command line from these, and so do the command modules it
registers (``ocs.cli_rules``), which must not import ``ocs.cli`` itself.
"""

import argparse
import json
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from ocs.config import Settings, setting_flags, setting_help
from ocs.errors import OcsError, Reason
from ocs.money import MoneyError, parse_amount
from ocs.whole_numbers import MAX_BIGINT, positive_id

if TYPE_CHECKING:
    from ocs.services import Services

    # The object add_subparsers returns: where a command group's commands are added.
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

# What the exit codes mean to a supervisor (deploy/systemd: RestartPreventExitStatus=2,
# docs/operations.md "Exit codes"): 1, refused or failed now, and a later try may do
# (a backend down, a table locked by another transaction); 2, refused until someone
# changes the settings, the command line or the installed release, so that a unit stops
# with one line instead of restarting into the same refusal for ever.
EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_USAGE = 2  # as argparse's own usage errors

T = TypeVar("T")

Handler = Callable[[argparse.Namespace, Settings], int]
"""What runs one command: its parsed arguments and settings in, its exit code out."""

CONFIG_GROUP = "configuration (overrides OCS_* and --config)"

# Only the commands that listen (serve, demo) take the listening settings as flags;
# every other command opens the stores and logs, and would silently ignore them.
SERVING_ONLY = frozenset(
    {"http_host", "http_port", "workers", "radius_host", "radius_auth_port", "radius_acct_port"}
)


class UsageError(ValueError):
    """A command-line argument with a value the command cannot use; the message names it."""


def flag_name(setting: str) -> str:
    """The command-line flag of a setting: ``data_dir`` -> ``--data-dir``."""
    return "--" + setting.replace("_", "-")


def add_setting_flags(parser: argparse.ArgumentParser, *, serving: bool) -> None:
    """Give a command ``--config`` and the settings' flags, each with its declared help.

    Unset flags stay out of the namespace (SUPPRESS), so the TOML file and ``OCS_*``
    variables keep their values; load_settings parses what is given.
    """
    group = parser.add_argument_group(CONFIG_GROUP)
    group.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file")
    for name in setting_flags():
        if serving or name not in SERVING_ONLY:
            group.add_argument(
                flag_name(name),
                dest=name,
                default=argparse.SUPPRESS,
                # argparse formats help with %: a literal one must be doubled.
                help=setting_help(name).replace("%", "%%"),
            )


def add_command(
    commands: "Commands", name: str, help: str, run: Handler, *, serving: bool = False
) -> argparse.ArgumentParser:
    """Add one runnable command: its parser, the settings' flags, and its handler."""
    parser = commands.add_parser(name, help=help)
    add_setting_flags(parser, serving=serving)
    parser.set_defaults(run=run)
    return parser


def add_group(commands: "Commands", name: str, help: str) -> "Commands":
    """Add a command group (``ocs plans ACTION``): the object its actions are added to."""
    return commands.add_parser(name, help=help).add_subparsers(
        dest=f"{name}_command", required=True, metavar="ACTION"
    )


# --- argument checks -------------------------------------------------------------------


def amount_arg(text: str, flag: str) -> int:
    """An amount argument in micro-units; a bad one is a usage error naming ``flag``."""
    try:
        return parse_amount(text)
    except MoneyError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def positive_bigint(text: str) -> int:
    """An argparse ``type`` for a stored row's id (an invoice, a run, a subscription):
    1 to PostgreSQL BIGINT's maximum.

    argparse names the argument when this refuses (exit 2): past BIGINT an id reached
    PostgreSQL and failed there with a traceback; and ``int()`` alone reads 4,300 digits.
    """
    value = positive_id(text)
    if value is None:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number up to {MAX_BIGINT}, not {text[:40]!r}"
        )
    return value


def checked(check: Callable[[], T]) -> T:
    """Run an argument check that raises OcsError(invalid_field) as a usage error."""
    try:
        return check()
    except OcsError as exc:
        if exc.reason is Reason.INVALID_FIELD:
            raise UsageError(exc.message) from None
        raise


def date_arg(text: str | None, flag: str) -> date | None:
    """An optional YYYY-MM-DD date; a bad one is a usage error naming ``flag``."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag}: not a date (YYYY-MM-DD): {text!r}") from None


def time_arg(text: str | None, flag: str) -> datetime | None:
    """An optional ISO 8601 time with a zone; a bad one is a usage error naming ``flag``."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag}: not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise UsageError(f"{flag}: needs a time zone, e.g. 2026-11-01T00:00:00Z")
    return value


def read_bytes(path: Path, flag: str) -> bytes:
    """A file's bytes; one that cannot be read is a usage error naming ``flag``."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None


# --- running and output ----------------------------------------------------------------


def print_json(data: Any) -> None:
    """Write a command's result to stdout as indented JSON."""
    print(json.dumps(data, indent=2))


def to_builtins(value: Any) -> Any:
    """A view Struct (or a list of them) as JSON-ready builtins."""
    import msgspec

    return msgspec.to_builtins(value)


def with_services(
    settings: Settings,
    action: "Callable[[Services], Awaitable[T]]",
    *,
    catalog: bool = False,
    pepper: bool = False,
) -> T:
    """Open the stores, run ``action`` with the services, close them; its result.

    ``pepper``: the action makes or looks up PIN or password digests (decision 0054);
    other commands neither need nor make the pepper's file."""
    from ocs.runtime import open_runtime

    async def run() -> T:
        """The action inside one runtime, closed whatever the action raises."""
        # Most commands write or read single records: they need no catalog snapshot.
        async with open_runtime(
            settings, listen_catalog=False, load_catalog=catalog, pepper=pepper
        ) as services:
            return await action(services)

    return uvloop.run(run())


def progress_bar(unit: str) -> Any:
    """A started rich progress bar on stderr (stdout keeps the JSON answer), counting ``unit``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        unit,
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    bar.start()
    return bar
