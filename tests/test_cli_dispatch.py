"""The `ocs` command line is a table of handlers, and its setting flags come from ocs.config.

Each runnable command is registered with its handler on its argparse parser; a
setting declared with ``flag=True`` is a flag of ``ocs serve`` with the help it was
declared with, and of every other command unless only a listening server uses it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ocs.cli
from ocs.cli import build_parser, command_parsers
from ocs.cli_support import SERVING_ONLY, flag_name
from ocs.config import setting_flags, setting_help

COMMANDS = [
    ("serve",),
    ("demo",),
    ("warm-up",),
    ("db", "migrate"),
    ("reconcile",),
    ("plans", "create"),
    ("plans", "list"),
    ("tariffs", "import"),
    ("codes", "import"),
    ("codes", "remove"),
    ("tokens", "create"),
    ("tokens", "list"),
    ("tokens", "revoke"),
    ("credentials", "rekey"),
    ("accounts", "create"),
    ("accounts", "show"),
    ("accounts", "topup"),
    ("counters", "reset"),
    ("rerate",),
    ("pins", "generate"),
    ("pins", "discard"),
    ("billing-worker",),
    ("plans", "billing"),
    ("billing", "run"),
    ("billing", "post"),
    ("billing", "resume"),
    ("billing", "retry-sessions"),
    ("invoices", "list"),
    ("invoices", "show"),
    ("invoices", "void"),
    ("invoices", "unbilled"),
    ("invoices", "preview"),
    ("subscriptions", "create"),
    ("subscriptions", "list"),
    ("subscriptions", "status"),
    ("subscriptions", "add-charge"),
    ("charges", "create"),
    ("charges", "list"),
    ("taxes", "create"),
    ("taxes", "list"),
    ("taxes", "assign"),
    ("taxes", "unassign"),
    ("taxes", "exempt"),
    ("taxes", "unexempt"),
    ("taxes", "code"),
    ("surcharges", "create"),
    ("surcharges", "list"),
    ("surcharges", "remove"),
    ("bundles", "create"),
    ("bundles", "list"),
    ("bundles", "attach"),
    ("bundles", "detach"),
    ("reports", "mrr"),
    ("reports", "deferred"),
    ("reports", "revenue"),
    ("rate-types", "list"),
    ("rate-types", "add"),
    ("rate-types", "delete"),
    ("rate-types", "rates"),
    ("rate-types", "set-rate"),
    ("rate-types", "delete-rate"),
    ("overrides", "list"),
    ("overrides", "import"),
    ("overrides", "set"),
    ("overrides", "delete"),
    ("usage-templates", "list"),
    ("usage-templates", "show"),
    ("usage-templates", "add"),
    ("usage", "import"),
    ("tariffs", "import-peer"),
    ("calls",),
    ("top",),
    ("payments", "add"),
    ("payments", "list"),
    ("payments", "refund"),
    ("payments", "import"),
    ("dunning", "settings"),
    ("dunning", "run"),
    ("dunning", "show"),
    ("invoices", "pdf"),
    ("number-sets", "create"),
    ("number-sets", "list"),
    ("number-sets", "import"),
    ("number-sets", "assign"),
    ("numbers", "take"),
    ("numbers", "release"),
    ("numbers", "list"),
    ("ivr", "plan"),
    ("ivr", "account"),
    ("webhooks", "add"),
    ("webhooks", "list"),
    ("webhooks", "remove"),
    ("webhooks", "disable"),
    ("webhooks", "enable"),
    ("events", "list"),
    ("events", "replay"),
    ("events", "replay-skipped"),
    ("events", "deliver"),
]


def _one_line(text: str) -> str:
    """Help text with every run of whitespace made one space: wrapping is the terminal's."""
    return " ".join(text.split())


def _flags(usage: str) -> set[str]:
    """The long options a usage or help text names."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", usage))


def test_every_command_has_its_own_handler() -> None:
    parsers = command_parsers(build_parser())
    assert sorted(parsers) == sorted(COMMANDS)
    handlers = {path: parser.get_default("run") for path, parser in parsers.items()}
    for path, handler in handlers.items():
        assert callable(handler), f"ocs {' '.join(path)} has no handler"
        assert handler.__doc__, f"the handler of ocs {' '.join(path)} says what it does"
    # One small function per command, not one big one switching on the name.
    assert len(set(handlers.values())) == len(handlers)


def test_every_flagged_setting_is_a_flag_of_serve_with_its_declared_help(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    environ["COLUMNS"] = "400"  # no wrapping inside a help line
    done = subprocess.run(
        [sys.executable, "-m", "ocs", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environ,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = _one_line(done.stdout)
    assert setting_flags(), "ocs.config declares the flags"
    for name in setting_flags():
        flag = flag_name(name)
        assert f"{flag} {name.upper()} {_one_line(setting_help(name))}" in text, flag
    assert _flags(done.stdout) == {"--help", "--config", *map(flag_name, setting_flags())}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_each_command_takes_the_setting_flags_that_concern_it(
    path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    flags = _flags(command_parsers(build_parser())[path].format_help())
    serving = path in {("serve",), ("demo",)}
    for name in setting_flags():
        # The listening settings would be silently ignored by a command that does not listen.
        wanted = serving or name not in SERVING_ONLY
        assert (flag_name(name) in flags) is wanted, (path, name)
    assert "--config" in flags


def test_the_listening_settings_are_declared_flags() -> None:
    assert set(setting_flags()) >= SERVING_ONLY


def test_no_if_chain_on_the_command_name_is_left() -> None:
    source = Path(ocs.cli.__file__).read_text(encoding="utf-8")
    assert not re.search(r"\bif\s+\w*command\w*\s*(==|!=|in\b)", source)
    assert "args.command" not in source
    assert "_run_command" not in source
    assert "_SETTING_FLAGS" not in source
