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
