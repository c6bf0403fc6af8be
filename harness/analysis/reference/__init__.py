"""The published answers, rebuilt from the data that ships with them (results/reference/).

Every study the README or a reference page quotes ships its data beside its page:
results/reference/data/<study>/ holds the runs table of every seed, the step rows thinned to at
most 200 per run, and the final evaluation's load rows (data.py). A page is the output of code
(one module per page here): its tables, numbers and figures are computed from that data each
time, and the README's blocks between `<!-- reference:NAME -->` and `<!-- /reference:NAME -->`
are too. The blocks of docs/methods.md are filled the same way. The prose is written in the page's module,
beside the numbers it states; a claim of
order, equivalence or "no dependence" is printed with the verdict that backs it.

    moe-harness reference ship methods results/methods     # compact a results folder into data/methods/
    moe-harness reference ship bench results/bench/benchmarks_cpu.json   # a benchmark session
    moe-harness reference ship sequential                  # a study its page makes by code (a simulation)
    moe-harness reference build                            # rewrite every page, figure and README block
    moe-harness reference check                            # exit 1 if any page or block differs from its data

A page module registers itself (base.py): `@page("methods", "methods_cpu.md", sources=("methods",))`
on a function from the sources' Data to a Built page.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import re
from pathlib import Path

import matplotlib.pyplot as plt

from harness import tables
from harness.analysis.reference.base import PAGES, Built, Page
from harness.analysis.reference import data
from harness.analysis.reference.data import load

BLOCK = re.compile(r"(<!-- reference:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /reference:(?P=name) -->)", re.S)


BLOCK_FILES = ("README.md", "docs/methods.md")  # the files whose reference blocks pages fill


def ship(root: Path, name: str, source: Path | None = None) -> list[Path]:
    """Compact a results folder or a benchmark JSON file into results/reference/data/<name>/
    (data.py); without a source, store what the page `name` makes (a simulation)."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"reference ship: name {name!r} must be a plain folder name (letters, digits, '_', '-')")
    dest = root / "results" / "reference" / "data" / name
    if source is not None:
        return data.ship(source, dest)
    made = {p.name: p.make for p in PAGES.values() if p.make is not None}
    if name not in made:
        raise ValueError(f"reference ship {name}: give its results folder (only {sorted(made)} are made by code)")
    return data.write_tables(made[name](), dest)


def pages(names: list[str] | None) -> list[Page]:
    unknown = sorted(set(names or []) - set(PAGES))
    if unknown:
        raise ValueError(f"unknown reference page(s) {unknown}; pages: {sorted(PAGES)}")
    return [PAGES[n] for n in (names or sorted(PAGES))]


def render(entry: Page, root: Path) -> Built:
    data = {source: load(root / "results" / "reference" / "data" / source) for source in entry.sources}
    return entry.build(data)


def build(root: Path, names: list[str] | None = None) -> list[Path]:
    """Rewrite the pages (and their figures) and the README blocks from the shipped data."""
    written, blocks = [], {}
    for entry in pages(names):
        built = render(entry, root)
        path = root / "results" / "reference" / entry.file
        tables.write_text_atomic(path, built.text)
        written.append(path)
        for file, fig in built.figures.items():
            fig.savefig(path.parent / file, dpi=110)
            plt.close(fig)
            written.append(path.parent / file)
        blocks.update(built.readme)
    for name in BLOCK_FILES:
        tables.write_text_atomic(root / name, fill_blocks((root / name).read_text(), blocks))
    return written + [root / name for name in BLOCK_FILES]


def fill_blocks(text: str, blocks: dict[str, str], strict: bool = False) -> str:
    """`text` with each README block that `blocks` names replaced by its content."""
    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in blocks:
            if strict:
                raise ValueError(f"README block {name!r} is built by no reference page")
            return match[0]
        return match[1] + blocks[name].rstrip("\n") + "\n" + match[4]
    return BLOCK.sub(replace, text)


def check(root: Path, names: list[str] | None = None) -> list[str]:
    """The differences between the committed pages and README blocks and what their data gives, and
    any file of results/reference that no page makes (empty: every number is what the data says)."""
    problems, blocks, made = [], {}, set()
    for entry in pages(names):
        built = render(entry, root)
        path = root / "results" / "reference" / entry.file
        problems += differences(path, path.read_text() if path.is_file() else "", built.text)
        blocks.update(built.readme)
        made |= {entry.file, *built.figures}
        for fig in built.figures.values():
            plt.close(fig)
    texts = {name: (root / name).read_text() for name in BLOCK_FILES}
    missing = sorted(set(blocks) - {m["name"] for text in texts.values() for m in BLOCK.finditer(text)})
    problems += [f"{' or '.join(BLOCK_FILES)}: no block <!-- reference:{name} --> for it" for name in missing]
    if names is None:
        problems += [f"{path}: made by no reference page from shipped data (register its page and ship its data, "
                     "or remove it)" for path in sorted((root / "results" / "reference").glob("*.*"))
                     if path.is_file() and path.name not in made]
        for name, text in texts.items():
            try:
                problems += differences(root / name, text, fill_blocks(text, blocks, strict=True))
            except ValueError as error:  # a block that no page builds
                problems.append(f"{root / name}: {error}")
    return problems


def differences(path: Path, committed: str, rebuilt: str) -> list[str]:
    diff = list(difflib.unified_diff(committed.splitlines(), rebuilt.splitlines(), str(path), "from its data",
                                     lineterm="", n=0))
    return [f"{path}: differs from what its data gives:\n" + "\n".join(diff[:40])] if diff else []


# NOTE: every other module of this folder is a page that registers itself
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "data"):
        importlib.import_module(f"{__name__}.{_module.name}")
