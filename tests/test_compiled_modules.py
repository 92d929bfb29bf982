"""The mypyc build (decision 0038): which modules it compiles, that none of them defines
a class whose options mypyc would drop, and that an extension whose source changed after
the build, or one that cannot be loaded here, is refused by name instead of running old
code: `ocs` stops with one log line and exit code 2, which systemd does not restart."""

import ast
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ocs import compiled
from ocs.compiled import (
    GROUP_LIBRARY,
    HOT_MODULES,
    SOURCES_FILE,
    StaleCompiledModule,
    UnloadableCompiledModule,
    UnreadableBuildRecord,
    check_compiled_loads,
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


def test_a_pure_tree_loads_nothing(tmp_path: Path) -> None:
    _package(tmp_path, "ocs.radius.server", "X = 1\n")
    check_compiled_loads(tmp_path)


def test_an_extension_without_its_shared_library_is_refused(tmp_path: Path) -> None:
    source = _package(tmp_path, "ocs.rating.rates", "X = 1\n")
    source.with_name(source.stem + EXTENSION).write_bytes(b"\x7fELF")

    with pytest.raises(UnloadableCompiledModule, match=r"ocs\.rating\.rates.*is missing"):
        check_compiled_loads(tmp_path)


# --- an unusable build, as `ocs serve` meets it ------------------------------------------


def _tree(tmp_path: Path) -> Path:
    """A copy of this ocs package, pure (no extension, no build record), under
    ``tmp_path``: the directory to put first on PYTHONPATH."""
    shutil.copytree(
        PACKAGE_ROOT,
        tmp_path / "ocs",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", SOURCES_FILE),
    )
    return tmp_path / "ocs"


def _built(package: Path, module: str, digest: str) -> Path:
    """Give ``module`` an extension file (not a loadable one) and record ``digest`` as
    the source it was built from, as a compiled build leaves them."""
    source = source_path(module, package)
    extension = source.with_name(source.stem + EXTENSION)
    extension.write_bytes(b"\x7fELF not a library")
    (package / SOURCES_FILE).write_text(json.dumps({module: digest}))
    return extension


def _serve(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m ocs serve`` on the tree at ``root``, with no ocs setting from here."""
    return _python(root, ["-m", "ocs", "serve"], **env)


def _python(root: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` on the tree at ``root``, with no ocs setting from here."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("OCS_")}
    clean.update(env, PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, *args],
        cwd=root,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_on_a_stale_module_stops_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    extension = _built(package, "ocs.radius.dedupe", "0" * 64)  # built from another source

    ran = _serve(tmp_path)

    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    line = json.loads(lines[0])
    assert line["level"] == "critical"
    assert line["logger"] == "ocs.compiled"
    assert line["modules"] == "ocs.radius.dedupe"
    assert "sources changed since the build" in line["problem"]
    assert line["files"] == str(extension)
    assert "OCS_MYPYC=1 pip install --no-build-isolation -e ." in line["action"]
    assert "go back to pure Python with `pip install -e .`" in line["action"]
    assert line["exit_code"] == 2


def test_serve_on_a_module_built_without_its_shared_library_stops_with_exit_code_2(
    tmp_path: Path,
) -> None:
    # Built elsewhere (another Python, another system) and copied without ocs__mypyc.
    package = _tree(tmp_path)
    module = "ocs.rating.rates"
    _built(package, module, source_digest(source_path(module, package)))

    ran = _serve(tmp_path)

    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    [line] = [json.loads(text) for text in ran.stderr.splitlines()]
    assert line["modules"] == module
    assert line["problem"] == f"{tmp_path / (GROUP_LIBRARY + EXTENSION)} is missing"


def test_serve_on_a_shared_library_it_cannot_load_stops_with_exit_code_2(
    tmp_path: Path,
) -> None:
    # A library the system's loader refuses (another platform's, or not one at all).
    package = _tree(tmp_path)
    module = "ocs.radius.server"
    _built(package, module, source_digest(source_path(module, package)))
    library = tmp_path / (GROUP_LIBRARY + EXTENSION)
    library.write_bytes(b"MZ not an ELF library at all")

    ran = _serve(tmp_path, OCS_LOG_FORMAT="text")

    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    [line] = ran.stderr.splitlines()
    assert line.startswith(
        f"CRITICAL ocs.compiled: compiled modules unusable, not starting: {module}"
    )
    assert f"problem={library}: " in line
    assert "action=rebuild with `OCS_MYPYC=1 pip install --no-build-isolation -e .`" in line


# `ocs --help` with the build's group library standing in as loaded: these tests cannot
# build mypyc's real one, and the check only needs the system's loader to accept each
# shim, which any real extension of this interpreter does.
_HELP_WITH_GROUP_LOADED = (
    "import runpy, sys, types;"
    f"sys.modules[{GROUP_LIBRARY!r}] = types.ModuleType({GROUP_LIBRARY!r});"
    "sys.argv = ['ocs', '--help'];"
    "runpy.run_module('ocs', run_name='__main__', alter_sys=True)"
)


def test_a_module_shipped_compiled_without_its_source_starts(tmp_path: Path) -> None:
    # A packager shipping the extensions without their .py: nothing contradicts the
    # build, so `ocs` starts (it crashed with FileNotFoundError and exit 1 before).
    loadable = next(
        path
        for loaded in list(sys.modules.values())
        if (path := getattr(loaded, "__file__", None) or "").endswith(EXTENSION)
    )  # msgspec's, at least: ocs imports it
    package = _tree(tmp_path)
    module = "ocs.radius.queue_delay"  # not imported by `--help`
    source = source_path(module, package)
    extension = _built(package, module, source_digest(source))
    shutil.copyfile(loadable, extension)
    shutil.copyfile(loadable, tmp_path / (GROUP_LIBRARY + EXTENSION))
    source.unlink()

    ran = _python(tmp_path, ["-c", _HELP_WITH_GROUP_LOADED])

    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    assert "serve" in ran.stdout
    assert stale_modules(package) == []


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (b"", "cannot be read: Expecting value"),
        (b'{"ocs.radius.dedupe": "ab', "cannot be read: Unterminated string"),
        (b"\xff\xfe", "cannot be read: 'utf-8' codec can't decode"),
        (b'["ocs.radius.dedupe"]', "is not the build's {module: sha256} record"),
    ],
    ids=["empty", "cut-short", "not-utf8", "not-an-object"],
)
def test_serve_on_an_unreadable_build_record_stops_with_one_line_and_exit_code_2(
    tmp_path: Path, record: bytes, problem: str
) -> None:
    package = _tree(tmp_path)
    module = "ocs.radius.dedupe"
    extension = _built(package, module, source_digest(source_path(module, package)))
    (package / SOURCES_FILE).write_bytes(record)

    ran = _serve(tmp_path)

    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    [line] = [json.loads(text) for text in ran.stderr.splitlines()]
    assert line["level"] == "critical"
    assert line["modules"] == module
    assert line["problem"].startswith(f"{package / SOURCES_FILE} {problem}")
    assert line["files"] == f"{package / SOURCES_FILE}, {extension}"
    assert "OCS_MYPYC=1 pip install --no-build-isolation -e ." in line["action"]
    assert line["exit_code"] == 2


def test_an_unreadable_build_record_is_refused_by_the_source_check(tmp_path: Path) -> None:
    source = _package(tmp_path, "ocs.radius.server", "X = 1\n")
    source.with_name(source.stem + EXTENSION).write_bytes(b"\x7fELF")
    (tmp_path / SOURCES_FILE).write_text("{")

    with pytest.raises(UnreadableBuildRecord, match=r"compiled_sources\.json: cannot be read"):
        check_compiled_sources(tmp_path)


def test_a_pure_tree_ignores_a_leftover_unreadable_record(tmp_path: Path) -> None:
    _package(tmp_path, "ocs.radius.server", "X = 1\n")
    (tmp_path / SOURCES_FILE).write_text("")
    assert stale_modules(tmp_path) == []
