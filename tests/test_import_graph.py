"""The package map holds: imports inside ``ocs/`` point one way, with no loops and no private names.

Read from the source with ``ast`` (imports inside functions count: a loop closed
by a function-level import is still a loop), so the test needs no import of ocs.
The tests keep the same rule: no test module imports another (what several share
lives in tests/conftest.py or a helper module), and none imports a private name.
"""

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ocs"
TESTS = ROOT / "tests"


def module_name(path: Path) -> str:
    """``ocs/catalog/store.py`` -> ``ocs.catalog.store``; an ``__init__`` is its package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every ocs import in a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ocs" or node.module.startswith("ocs."):
                names = [alias.name for alias in node.names]
                submodules = [
                    f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES
                ]
                if submodules:
                    for sub in submodules:
                        yield sub, []
                    rest = [n for n in names if f"{node.module}.{n}" not in MODULES]
                    if rest:
                        yield node.module, rest
                else:
                    yield node.module, names
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ocs."):
                    yield alias.name, []


def module_graph() -> dict[str, set[str]]:
    """Each ocs module -> the ocs modules it imports (``from ocs.x import y`` of a
    submodule ``y`` counts as an import of ``ocs.x.y``)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _names in imports_of(path):
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def package_of(module: str) -> str:
    """The layer a module belongs to: its subpackage of ``ocs``, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_a_loop() -> None:
    assert cycles(module_graph()) == []


def test_packages_import_one_way() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for source, targets in module_graph().items():
        for target in targets:
            if package_of(source) != package_of(target) and target != "ocs":
                packages[package_of(source)].add(package_of(target))
    assert cycles(packages) == []


def test_no_file_imports_another_files_private_names() -> None:
    private = [
        f"{name} imports {target}.{imported}"
        for name, path in MODULES.items()
        for target, names in imports_of(path)
        for imported in names
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert private == []


def test_the_checker_finds_a_loop_and_a_package_loop() -> None:
    # The detector itself, on a graph with a known loop: a test that cannot fail is a defect.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("layer", ["ocs.numbers", "ocs.rating", "ocs.decks"])
def test_the_lower_layers_know_nothing_of_the_layers_above(layer: str) -> None:
    above = ("ocs.catalog", "ocs.charging", "ocs.http", "ocs.radius", "ocs.cli", "ocs.billing")
    reaching_up = sorted(
        f"{source} -> {target}"
        for source, targets in module_graph().items()
        if package_of(source) == layer
        for target in targets
        if package_of(target) in above
    )
    assert reaching_up == []


# -- the tests themselves ---------------------------------------------------------------


def suite_imports_of(source: str) -> Iterator[tuple[str, list[str]]]:
    """(tests module imported, names taken from it) for every import of the test suite in
    ``source``, a file of tests/: absolute (``tests.x``) and relative (``.x``) alike."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level > 0:
                if node.module:
                    yield f"tests.{node.module}", names
                else:
                    for name in names:  # from . import test_x
                        yield f"tests.{name}", []
            elif node.module == "tests":
                for name in names:  # from tests import test_x
                    yield f"tests.{name}", []
            elif node.module and node.module.startswith("tests."):
                yield node.module, names
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tests."):
                    yield alias.name, []


def is_test_module(module: str) -> bool:
    """``tests.test_x`` (or a name inside one) is a test module of the suite."""
    parts = module.split(".")
    return len(parts) > 1 and parts[0] == "tests" and parts[1].startswith("test_")


def imported_test_modules(source: str) -> list[str]:
    """The test modules ``source`` imports from."""
    return sorted({m for m, _names in suite_imports_of(source) if is_test_module(m)})


def private_test_imports(source: str) -> list[str]:
    """The private names ``source`` takes from a module of the test suite."""
    return sorted(
        f"{module}.{name}"
        for module, names in suite_imports_of(source)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    )


TEST_FILES = sorted(TESTS.rglob("*.py"))


def test_the_test_files_are_found() -> None:
    assert len(TEST_FILES) > 50
    assert TESTS / "conftest.py" in TEST_FILES


def test_no_test_module_imports_another_test_module() -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in TEST_FILES
        for module in imported_test_modules(path.read_text())
    ]
    assert found == []


def test_no_test_file_imports_another_files_private_names() -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in TEST_FILES
        for name in private_test_imports(path.read_text())
    ]
    assert found == []


def test_the_test_import_checker_finds_each_form() -> None:
    # The checker itself, on sources with known imports: a test that cannot fail is a defect.
    # Written with "suite" for "tests", so that grepping tests/ for such imports finds none.
    source = """
from suite.test_a import helper
from suite import test_b, helpers
from .test_c import fixture
from . import test_d
import suite.test_e
from suite.helpers import send, _secret
from suite.deck_helpers import HEADER

def inside() -> None:
    from suite.test_f import late
""".replace("suite", "tests")
    assert imported_test_modules(source) == [
        "tests.test_a",
        "tests.test_b",
        "tests.test_c",
        "tests.test_d",
        "tests.test_e",
        "tests.test_f",
    ]
    assert private_test_imports(source) == ["tests.helpers._secret"]
    assert imported_test_modules("from tests.helpers import send\nimport os\n") == []
