"""The package's layers (issue 26): imports only go down, and no module imports its caller.

    cli                      the command line
    check/                   `moe-harness check`: someone else's router through the bug classes
    suites/                  suite and sweep files, the run queue, Optuna storages
    engine/   analysis/      one run | what the tables say (neither imports the other)
    routing/  data/          the methods | the corpora
    bottom                   tables, metric declarations, collectives, errors: nothing above

Every import counts, at the top of a module or inside a function: an import hidden in a function
to dodge a cycle is still an arrow upward.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "harness"
BOTTOM = {"harness", "harness._compat", "harness.errors", "harness.tables", "harness.metric_registry",
          "harness.distributed", "harness.steady_state"}
ALLOWED = {  # layer -> the layers it may import
    "bottom": {"bottom"},
    "data": {"data", "bottom"},
    "routing": {"routing", "bottom"},
    "engine": {"engine", "routing", "data", "bottom"},
    "analysis": {"analysis", "bottom"},
    "suites": {"suites", "engine", "analysis", "routing", "data", "bottom"},
    "check": {"check", "engine", "routing", "data", "bottom"},
    "cli": {"cli", "check", "suites", "engine", "analysis", "routing", "data", "bottom"},
}


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def layer(module: str) -> str:
    if module in BOTTOM:
        return "bottom"
    if module == "harness.cli":
        return "cli"
    part = module.split(".")[1]
    assert part in ALLOWED, f"{module} is in no layer: put it in a layer's folder or the bottom list"
    return part


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            base = node.module if node.level == 0 else ".".join(
                package.split(".")[: len(package.split(".")) - node.level + 1] + [node.module])
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        found |= {t for t in targets if t in known and t != module}
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(m, p, set(found)) for m, p in found.items()}


def test_every_import_goes_down_or_sideways_within_its_layer():
    upward = [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, targets in graph().items() for b in targets
              if layer(b) not in ALLOWED[layer(a)]]
    assert not upward, "\n".join(sorted(upward))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(10000)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_not_even_between_a_package_and_its_modules():
    assert not cycles(graph()), cycles(graph())


def test_the_checks_catch_an_upward_import_and_a_cycle():
    edges = graph()
    edges["harness.tables"] = edges["harness.tables"] | {"harness.engine.train"}
    assert any(layer(b) not in ALLOWED[layer(a)] for a, t in edges.items() for b in t)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_reading_results_does_not_import_the_trainer_or_torch():
    """`moe-harness report` and the statistics read tables: neither the engine nor torch comes with them."""
    import subprocess

    code = ("import sys; import harness.analysis.report, harness.analysis.rate, harness.analysis.sequential; "
            "print(sorted(m for m in sys.modules if m.startswith(('harness.engine', 'harness.routing', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
