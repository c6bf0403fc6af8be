"""docs/methods.md describes every registered method and cites tests that exist."""

import re
from pathlib import Path

import pytest

from harness.routing.controllers import controller_names
from harness.routing.selection import selection_names

ROOT = Path(__file__).resolve().parent.parent
METHODS = (ROOT / "docs" / "methods.md").read_text()


@pytest.mark.parametrize("name", [f"selection:{n}" for n in selection_names()]
                         + [f"controller:{n}" for n in controller_names()])
def test_every_registered_method_has_a_row(name):
    kind, _, method = name.partition(":")
    folder = "selection" if kind == "selection" else "controllers"
    assert f"| `{method}` | `{folder}/{method}.py` |" in METHODS


def test_every_cited_test_exists():
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    cited = set(re.findall(r"`(test_\w+)`", METHODS))
    assert cited and not cited - defined, sorted(cited - defined)


def test_no_file_outside_the_repository_is_cited():
    for path in [*(ROOT / "harness").rglob("*.py"), ROOT / "README.md", ROOT / "docs" / "methods.md"]:
        assert "ROUTING.md" not in path.read_text(), path


def test_no_class_over_150_lines_and_no_function_over_40():
    """Issue 18's shape of the package: a new piece of state or logic goes where it belongs."""
    import ast

    long = []
    for path in (ROOT / "harness").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = 150 if isinstance(node, ast.ClassDef) else 40 if isinstance(node, ast.FunctionDef) else None
            if limit and node.end_lineno - node.lineno + 1 > limit:
                long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
