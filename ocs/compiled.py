"""The modules a build may compile with mypyc, and whether this process runs them so.

The RADIUS and call path spends most of its CPU interpreting Python. A build made with
``OCS_MYPYC=1`` (``setup.py``, decision 0038) compiles the modules of ``HOT_MODULES`` to
C extensions that sit beside their sources and are imported in their place. Every other
module, and every build made without the variable, stays pure Python; both behave alike
and store the same bytes in Redis.

An extension built from a source that has changed since would run old code while the
source says otherwise. The build records each source's SHA-256 in ``SOURCES_FILE``;
``check_compiled_sources`` refuses to go on when a compiled module's source no longer
matches, naming the module and how to rebuild.

This module imports nothing of ocs: ``setup.py`` reads it before ocs is installed.
"""

import hashlib
import importlib.machinery
import json
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

_PACKAGE_ROOT = Path(__file__).resolve().parent


class StaleCompiledModule(ImportError):
    """A compiled module's source changed after the build: the extension would run old code."""


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


def stale_modules(package_root: Path = _PACKAGE_ROOT) -> list[str]:
    """The modules with an extension file whose source differs from the one compiled."""
    record = package_root / SOURCES_FILE
    built = [module for module in HOT_MODULES if compiled_files(module, package_root)]
    if not built:
        return []
    digests: dict[str, str] = json.loads(record.read_text()) if record.exists() else {}
    return [
        module
        for module in built
        if digests.get(module) != source_digest(source_path(module, package_root))
    ]


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


def running_compiled() -> list[str]:
    """The modules of ``HOT_MODULES`` this process has imported as compiled extensions."""
    compiled = []
    for module in HOT_MODULES:
        loaded = sys.modules.get(module)
        path = getattr(loaded, "__file__", None) or ""
        if path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            compiled.append(module)
    return compiled
