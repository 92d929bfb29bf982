"""The mypyc build (decision 0038): which modules it compiles, that none of them defines
a class whose options mypyc would drop, and that an extension whose source changed after
the build is refused by name instead of running old code."""

import ast
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest

from ocs import compiled
from ocs.compiled import (
    HOT_MODULES,
    SOURCES_FILE,
    StaleCompiledModule,
    check_compiled_sources,
    running_compiled,
    source_digest,
    source_path,
    stale_modules,
)

PACKAGE_ROOT = Path(compiled.__file__).resolve().parent
EXTENSION = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.mark.parametrize("module", HOT_MODULES)
def test_a_compiled_module_awaits_nothing_inside_an_except_block(module: str) -> None:
    # Compiled, `except E: ... await x ... raise` crashed the interpreter re-raising
    # (session 20, the RADIUS accounting fallback), and an exception raised by an await
    # in a handler escaped the enclosing try. Such code keeps the error and acts after
    # the handler instead.
    tree = ast.parse(source_path(module, PACKAGE_ROOT).read_text())
    awaits = [
        sub.lineno
        for handler in ast.walk(tree)
        if isinstance(handler, ast.ExceptHandler)
        for sub in ast.walk(handler)
        if isinstance(sub, ast.Await)
    ]
    assert awaits == [], f"{module}: await inside an except block at lines {awaits}"


@pytest.mark.parametrize("module", HOT_MODULES)
def test_a_compiled_module_defines_no_class_with_class_keywords(module: str) -> None:
    # mypyc drops `class X(Struct, frozen=True, rename=...)`'s keywords: a msgspec Struct
    # defined in a compiled module would lose frozen, gc and its short Redis keys.
    tree = ast.parse(source_path(module, PACKAGE_ROOT).read_text())
    with_keywords = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(keyword.arg != "metaclass" for keyword in node.keywords)
    ]
    assert with_keywords == []


def test_the_call_record_keeps_its_short_keys_and_options() -> None:
    # The values the lifecycle passes around live outside the compiled modules: the
    # record's bytes in Redis are the same whichever build wrote them.
    from ocs.charging.values import CallRecord, Grant

    assert CallRecord.__struct_config__.frozen
    assert not CallRecord.__struct_config__.gc
    assert CallRecord.__struct_encode_fields__[:3] == ("a", "c", "p")
    assert Grant.__struct_config__.frozen


def _package(tmp_path: Path, module: str, source: str) -> Path:
    """A package tree holding ``module``'s source, as a build leaves it."""
    path = source_path(module, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


def test_an_extension_built_from_the_source_beside_it_is_accepted(tmp_path: Path) -> None:
    module = "ocs.radius.server"
    source = _package(tmp_path, module, "X = 1\n")
    source.with_name(source.stem + EXTENSION).write_bytes(b"\x7fELF")
    (tmp_path / SOURCES_FILE).write_text(json.dumps({module: source_digest(source)}))

    assert stale_modules(tmp_path) == []
    check_compiled_sources(tmp_path)


def test_an_extension_whose_source_changed_is_refused_by_name(tmp_path: Path) -> None:
    module = "ocs.charging.lifecycle"
    source = _package(tmp_path, module, "X = 1\n")
    source.with_name(source.stem + EXTENSION).write_bytes(b"\x7fELF")
    (tmp_path / SOURCES_FILE).write_text(json.dumps({module: source_digest(source)}))
    source.write_text("X = 2\n")  # edited after the build

    assert stale_modules(tmp_path) == [module]
    with pytest.raises(StaleCompiledModule, match=r"ocs\.charging\.lifecycle.*OCS_MYPYC=1"):
        check_compiled_sources(tmp_path)


def test_an_extension_without_the_build_record_is_refused(tmp_path: Path) -> None:
    module = "ocs.balances.wire"
    source = _package(tmp_path, module, "X = 1\n")
    source.with_name(source.stem + EXTENSION).write_bytes(b"\x7fELF")

    assert stale_modules(tmp_path) == [module]


def test_a_pure_tree_has_nothing_to_check(tmp_path: Path) -> None:
    _package(tmp_path, "ocs.radius.server", "X = 1\n")
    assert stale_modules(tmp_path) == []


def test_running_compiled_names_the_modules_loaded_as_extensions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extension = types.ModuleType("ocs.radius.dedupe")
    extension.__file__ = f"/srv/ocs/radius/dedupe{EXTENSION}"
    pure = types.ModuleType("ocs.radius.queue_delay")
    pure.__file__ = "/srv/ocs/radius/queue_delay.py"
    monkeypatch.setitem(sys.modules, "ocs.radius.dedupe", extension)
    monkeypatch.setitem(sys.modules, "ocs.radius.queue_delay", pure)

    assert "ocs.radius.dedupe" in running_compiled()
    assert "ocs.radius.queue_delay" not in running_compiled()
