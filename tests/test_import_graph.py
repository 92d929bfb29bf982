"""The package map holds: imports inside ``ocs/`` point one way, with no loops and no private names.

Read from the source with ``ast`` (imports inside functions count: a loop closed
by a function-level import is still a loop), so the test needs no import of ocs.
"""

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ocs"


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
