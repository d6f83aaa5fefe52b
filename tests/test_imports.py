"""The arrows of design.md point one way: no import cycle inside shortwan.

The graph is built from the source, so it sees every import: at the top of a module, under
``if TYPE_CHECKING:``, and inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import shortwan

PACKAGE = Path(shortwan.__file__).resolve().parent
ROOT = PACKAGE.name


def module_name(path: Path) -> str:
    """Return the dotted name of the module at ``path``."""
    parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> Iterator[str]:
    """Yield every module of the package that the module ``name`` imports, wherever it does."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        yield from imports_of_node(name, path, node)


def imports_of_node(name: str, path: Path, node: ast.AST) -> Iterator[str]:
    """Yield the modules that ``node``, a statement of the module ``name``, imports."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = name.split(".")
            # A package's own __init__ is level 1; a plain module's package is one up.
            keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
            base = ".".join(parts[:keep])
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            yield submodule if submodule in MODULES else target


def import_graph() -> dict[str, set[str]]:
    """Return, for each module of the package, the modules of the package it imports."""
    return {
        name: {target for target in imports_of(name, path) if target in MODULES}
        for name, path in MODULES.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected groups of more than one module, and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """No module of shortwan reaches itself through its imports, type-only ones included."""
    assert cycles(import_graph()) == []


def test_the_graph_sees_type_checking_and_function_imports() -> None:
    """Imports under TYPE_CHECKING and inside functions are edges of the graph too."""
    graph = import_graph()
    assert "shortwan.journal" in graph["shortwan._client"]  # under TYPE_CHECKING
    assert "shortwan.cli" in graph["shortwan.__main__"]  # inside run()


def test_cycle_finder_finds_a_circle() -> None:
    """The finder reports a circle of two modules and a module importing itself."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"c"}, "d": {"a"}}
    assert sorted(cycles(graph)) == [["a", "b"], ["c"]]


def test_the_command_line_imports_the_fake_only_inside_its_commands() -> None:
    """No module of shortwan.cli imports shortwan.testing at its top, only inside functions."""
    checked = 0
    for name, path in MODULES.items():
        if not name.startswith("shortwan.cli"):
            continue
        checked += 1
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tops = {target for node in tree.body for target in imports_of_node(name, path, node)}
        assert not {t for t in tops if t.startswith("shortwan.testing")}, name
    assert checked > 3


def test_the_redis_extra_is_imported_only_by_itself_and_inside_commands() -> None:
    """The core never imports shortwan.redis (an extra); the command line only inside functions."""
    checked = 0
    for name, path in MODULES.items():
        if name.startswith("shortwan.redis"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if name.startswith("shortwan.cli"):
            found = {t for node in tree.body for t in imports_of_node(name, path, node)}
        else:
            found = set(imports_of(name, path))
        assert not {t for t in found if t.startswith("shortwan.redis")}, name
        checked += 1
    assert checked > 30
    inside = set(imports_of("shortwan.cli._app", MODULES["shortwan.cli._app"]))
    assert "shortwan.redis" in inside  # the rule looks at a module that does import it
