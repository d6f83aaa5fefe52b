"""The size rule of design.md: no module over 400 lines of code, no class over 250.

Lines of code are counted from the source itself: blank lines, comments and docstrings (any bare
string statement) do not count. Run this file as a script to print every module and class by size.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

import pytest

import shortwan

PACKAGE = Path(shortwan.__file__).resolve().parent
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250

_NOT_CODE = frozenset(
    {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
        tokenize.ENDMARKER,
    }
)


def code_lines(source: str, tree: ast.Module) -> set[int]:
    """Return the numbers of the lines of ``source`` that hold code."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _NOT_CODE:
            lines.update(range(token.start[0], token.end[0] + 1))
    for node in ast.walk(tree):
        is_doc = (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        if is_doc:
            lines.difference_update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def measure(path: Path) -> tuple[int, dict[str, int]]:
    """Return the lines of code of the module at ``path`` and of each class in it."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    lines = code_lines(source, tree)
    classes: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            span = range(first, (node.end_lineno or node.lineno) + 1)
            classes[node.name] = sum(1 for n in span if n in lines)
    return len(lines), classes


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_its_classes_are_within_the_size_rule(path: Path) -> None:
    """A module of shortwan has at most 400 lines of code and none of its classes over 250."""
    total, classes = measure(path)
    too_big = {name: n for name, n in classes.items() if n > MAX_CLASS_LINES}
    assert total <= MAX_MODULE_LINES, f"{total} lines of code"
    assert not too_big, f"classes over {MAX_CLASS_LINES} lines of code: {too_big}"


def test_counting_skips_docstrings_comments_and_blank_lines() -> None:
    """The count sees only code: a docstring, a comment and a blank line add nothing."""
    source = 'class A:\n    """Doc\n    more."""\n\n    # why\n    x = (\n        1\n    )\n'
    tree = ast.parse(source)
    assert code_lines(source, tree) == {1, 6, 7, 8}


def test_every_module_is_measured() -> None:
    """The rule covers the whole package, the fake server and the command line included."""
    names = {str(p.relative_to(PACKAGE)) for p in MODULES}
    assert {"__init__.py", "_client.py", "testing/__init__.py"} <= names


if __name__ == "__main__":
    sizes = []
    for module in MODULES:
        total, classes = measure(module)
        sizes.append((total, str(module.relative_to(PACKAGE)), classes))
    for total, name, classes in sorted(sizes, reverse=True):
        biggest = max(classes.items(), key=lambda item: item[1], default=("-", 0))
        sys.stdout.write(f"{total:5d}  {name:34s} largest class {biggest[0]} ({biggest[1]})\n")
