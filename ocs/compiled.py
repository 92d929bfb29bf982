"""The modules a build may compile with mypyc, and whether this process runs them so.

The RADIUS and call path spends most of its CPU interpreting Python. A build made with
``OCS_MYPYC=1`` (``setup.py``, decision 0038) compiles the modules of ``HOT_MODULES`` to
C extensions that sit beside their sources and are imported in their place. Every other
module, and every build made without the variable, stays pure Python; both behave alike
and store the same bytes in Redis.

An extension built from a source that has changed since would run old code while the
source says otherwise. The build records each source's SHA-256 in ``SOURCES_FILE``;
``check_compiled_sources`` refuses to go on when a compiled module's source no longer
matches, naming the module and how to rebuild, or when that record cannot be read. A
module shipped without its ``.py`` has no source to contradict its extension and is not
refused. An extension that the system's loader refuses (built on another system), or
whose shared library ``ocs__mypyc`` is missing, is refused the same way by
``check_compiled_loads``. ``refuse_unusable_build``, run by ``import ocs``, turns any of
these into one log line and exit code 2: no restart would help, so the units do not
restart it (``RestartPreventExitStatus=2``).

A tree built for another Python or another architecture is not refused: its extensions
carry another ABI suffix, so this interpreter does not see them and imports the pure
sources (the ``ocs serving`` line then says ``compiled_modules=0 of N``). An extension file
truncated after the build is not detected either: the system's loader may crash on it.

This module imports nothing of ocs at import: ``setup.py`` reads it before ocs is
installed.
"""

import ctypes
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

# Dotted names. A compiled module must define no class with class-statement keywords
# (msgspec's ``frozen=True``, ``rename=``...): mypyc drops them (mypy issue 21938), so such
# classes live in modules kept out of this list (tests/test_compiled_modules.py checks).
HOT_MODULES: tuple[str, ...] = (
    "ocs.balances.autopipeline",
    "ocs.balances.keys",
    "ocs.balances.store",
    "ocs.balances.wire",
    "ocs.charging.lifecycle",
    "ocs.radius.access",
    "ocs.radius.accounting",
    "ocs.radius.attributes",
    "ocs.radius.call_identity",
    "ocs.radius.dedupe",
    "ocs.radius.lean.crypto",
    "ocs.radius.lean.fields",
    "ocs.radius.lean.reply",
    "ocs.radius.lean.request",
    "ocs.radius.queue_delay",
    "ocs.radius.server",
    "ocs.rating.rates",
    "ocs.rating.translation",
)

# Beside the package's __init__.py: {module: sha256 of the source it was compiled from}.
SOURCES_FILE = "compiled_sources.json"

# mypyc's shared library holding every compiled module's code: ``ocs__mypyc.<abi>.so``,
# beside the ocs package (the top level of the tree or of site-packages). Each module's
# own extension is a small shim that imports it.
GROUP = "ocs"
GROUP_LIBRARY = f"{GROUP}__mypyc"

# The exit code of a start that only a change by someone can fix (docs/operations.md).
EXIT_UNUSABLE_BUILD = 2

# How to get out of either refusal: a build from these sources, or none.
REBUILD_HINT = (
    "rebuild with `OCS_MYPYC=1 pip install --no-build-isolation -e .` (the deploy image:"
    " build it again), or go back to pure Python with `pip install -e .`, which removes"
    " the compiled files (or delete the files named)"
)

_PACKAGE_ROOT = Path(__file__).resolve().parent


class StaleCompiledModule(ImportError):
    """A compiled module's source changed after the build: the extension would run old code."""


class UnreadableBuildRecord(ImportError):
    """The build's record of its sources (``SOURCES_FILE``) cannot be read, or is not the
    ``{module: sha256}`` object the build writes: no compiled module can be checked."""

    def __init__(self, record: Path, problem: str) -> None:
        super().__init__(f"{record}: {problem}; {REBUILD_HINT}")
        self.record = record
        self.problem = problem


class UnloadableCompiledModule(ImportError):
    """A compiled module's extension, or the shared library it needs, cannot be loaded
    here: the system's loader refuses it (built on another system), or ``ocs__mypyc``
    is missing."""

    def __init__(self, modules: list[str], files: list[Path], problem: str) -> None:
        super().__init__(
            f"compiled modules that cannot be loaded here: {', '.join(modules)} ({problem});"
            f" {REBUILD_HINT}"
        )
        self.modules = modules
        self.files = files
        self.problem = problem


def source_path(module: str, package_root: Path = _PACKAGE_ROOT) -> Path:
    """The ``.py`` file of ``module`` (a name of ``HOT_MODULES``) under ``package_root``."""
    return package_root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_digest(path: Path) -> str:
    """The SHA-256 of a source file, as the build records it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_files(module: str, package_root: Path = _PACKAGE_ROOT) -> list[Path]:
    """The extension files built for ``module``, if any (one per interpreter ABI)."""
    source = source_path(module, package_root)
    candidates = [
        source.with_name(source.stem + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES
    ]
    return [path for path in candidates if path.exists()]


def built_digests(package_root: Path = _PACKAGE_ROOT) -> dict[str, str]:
    """The build's record ``{module: sha256 of its source}``; empty when there is none.
    Raises ``UnreadableBuildRecord`` when it cannot be read or is not such an object."""
    record = package_root / SOURCES_FILE
    try:
        digests = json.loads(record.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise UnreadableBuildRecord(record, f"cannot be read: {exc}") from exc
    if not isinstance(digests, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in digests.items()
    ):
        raise UnreadableBuildRecord(record, "is not the build's {module: sha256} record")
    return digests


def stale_modules(package_root: Path = _PACKAGE_ROOT) -> list[str]:
    """The modules with an extension file whose source differs from the one compiled.
    A module whose ``.py`` is not there (a package shipped compiled only) has nothing
    to contradict its extension and is not stale. Raises ``UnreadableBuildRecord``
    when an extension exists and the build's record cannot be read."""
    built = [module for module in HOT_MODULES if compiled_files(module, package_root)]
    if not built:
        return []
    digests = built_digests(package_root)
    stale = []
    for module in built:
        source = source_path(module, package_root)
        if source.exists() and digests.get(module) != source_digest(source):
            stale.append(module)
    return stale


def check_compiled_sources(package_root: Path = _PACKAGE_ROOT) -> None:
    """Raise ``StaleCompiledModule`` when a compiled module no longer matches its source."""
    stale = stale_modules(package_root)
    if stale:
        raise StaleCompiledModule(
            f"compiled modules whose sources changed since the build: {', '.join(stale)}; "
            "rebuild with "
            "`OCS_MYPYC=1 pip install --no-build-isolation -e .`, or go back to pure "
            "Python with `pip install -e .` (which removes the compiled files)"
        )


def group_library(package_root: Path = _PACKAGE_ROOT) -> Path | None:
    """The shared library of the compiled modules built for this interpreter, beside
    the package; None when there is none."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package_root.parent / f"{GROUP_LIBRARY}{suffix}"
        if path.exists():
            return path
    return None


def _load_group_library(path: Path) -> None:
    """Load the shared library as the module the shims import (its init defines the
    modules' entry points; no module's code runs yet). Raises ``ImportError`` or
    ``OSError`` when it cannot be loaded here."""
    if GROUP_LIBRARY in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(GROUP_LIBRARY, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"not an extension module: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[GROUP_LIBRARY] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[GROUP_LIBRARY]
        raise


def check_compiled_loads(package_root: Path = _PACKAGE_ROOT) -> None:
    """Raise ``UnloadableCompiledModule`` when a compiled module's extension could not
    be imported here, before any of them is: its shared library missing or refused
    (built on another system), or the shim itself refused by the loader. Loads
    no module's code (each shim only by the system's loader), so it costs ``import ocs``
    nearly nothing; a pure tree has nothing to check."""
    built = {module: compiled_files(module, package_root) for module in HOT_MODULES}
    built = {module: files for module, files in built.items() if files}
    if not built:
        return
    library = group_library(package_root)
    if library is None:
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        missing = package_root.parent / f"{GROUP_LIBRARY}{suffix}"
        files = [path for files in built.values() for path in files]
        raise UnloadableCompiledModule(list(built), files, f"{missing} is missing")
    try:
        _load_group_library(library)
    except (ImportError, OSError) as exc:
        raise UnloadableCompiledModule(list(built), [library], f"{library}: {exc}") from exc
    for module, files in built.items():
        try:
            for path in files:
                ctypes.CDLL(str(path))  # the system's loader only: no module code runs
        except OSError as exc:
            raise UnloadableCompiledModule([module], files, str(exc)) from exc


def refuse_unusable_build(package_root: Path = _PACKAGE_ROOT) -> None:
    """Stop the process with one log line and exit code 2 when a compiled module is
    stale or cannot be loaded (``check_compiled_sources``, ``check_compiled_loads``), or
    the build's record of its sources cannot be read, instead of a traceback and exit 1,
    which systemd would restart for ever."""
    try:
        stale = stale_modules(package_root)
    except UnreadableBuildRecord as exc:
        built = [module for module in HOT_MODULES if compiled_files(module, package_root)]
        # The extensions are named too: deleting the record alone would only turn this
        # refusal into the stale one; deleting every file named leaves pure Python.
        files = [exc.record] + [
            path for module in built for path in compiled_files(module, package_root)
        ]
        _log_refusal(built, files, f"{exc.record} {exc.problem}")
        raise SystemExit(EXIT_UNUSABLE_BUILD) from None
    if stale:
        files = [path for module in stale for path in compiled_files(module, package_root)]
        problem = "their sources changed since the build: the extensions would run old code"
        _log_refusal(stale, files, problem)
        raise SystemExit(EXIT_UNUSABLE_BUILD)
    try:
        check_compiled_loads(package_root)
    except UnloadableCompiledModule as exc:
        _log_refusal(exc.modules, exc.files, exc.problem)
        raise SystemExit(EXIT_UNUSABLE_BUILD) from None


def _log_refusal(modules: list[str], files: list[Path], problem: str) -> None:
    """The refusal's one line on stderr, in the log format the environment asks for
    (``OCS_LOG_FORMAT``; JSON unless on a terminal): no settings are read yet."""
    # Imported here: setup.py reads this module before ocs is installed.
    from ocs.config import resolved_log_format
    from ocs.logs import JsonFormatter, TextFormatter

    fmt = resolved_log_format(os.environ.get("OCS_LOG_FORMAT", "auto"))
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    record = logging.makeLogRecord(
        {
            "name": "ocs.compiled",
            "levelno": logging.CRITICAL,
            "levelname": "CRITICAL",
            "msg": f"compiled modules unusable, not starting: {_named(modules)}",
            "modules": ", ".join(modules),
            "problem": problem,
            "files": ", ".join(str(path) for path in files),
            "action": REBUILD_HINT,
            "exit_code": EXIT_UNUSABLE_BUILD,
        }
    )
    print(formatter.format(record), file=sys.stderr, flush=True)


def running_compiled() -> list[str]:
    """The modules of ``HOT_MODULES`` this process has imported as compiled extensions."""
    compiled = []
    for module in HOT_MODULES:
        loaded = sys.modules.get(module)
        path = getattr(loaded, "__file__", None) or ""
        if path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            compiled.append(module)
    return compiled


def _named(modules: list[str]) -> str:
    """The modules for a message: a few by name, many by their count."""
    if len(modules) <= 3:
        return ", ".join(modules)
    return f"{len(modules)} modules ({modules[0]}, ...)"
