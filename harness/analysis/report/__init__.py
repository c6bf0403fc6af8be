"""A results folder's tables -> figures (`moe-harness plot`) and a report (`moe-harness report`).

    moe-harness plot results/smoke            # results/smoke/plots/*.png
    moe-harness report results/smoke          # results/smoke/report.html (+ report.md)

By job: summary.py (the tables: means, costs, paired differences), prose.py (the verdicts in words),
concordance.py (whether a ranking holds across architectures),
figures.py (the figures with their captions), sweep.py (a sweep's best trial and flat
optimum), page.py (Markdown and HTML written in step).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness import tables
from harness.steady_state import with_steady_state
from harness.analysis.report.concordance import add_concordance
from harness.analysis.report.figures import draw_figures
from harness.analysis.report.page import Page
from harness.analysis.report.prose import add_verdicts
from harness.analysis.report.sweep import flat_optimum, flat_sentence
from harness.analysis.report.summary import add_tables

__all__ = ["read_tables", "write_plots", "write_report"]


def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    folder = Path(folder)
    if not tables.has_results(folder):
        raise FileNotFoundError(2, "No results (run `moe-harness run SUITE.toml` or `moe-harness sweep` first)",
                                str(folder / "runs"))
    out = {name: tables.read(folder, name) for name in tables.TABLES}
    out["runs"] = with_steady_state(out["runs"], out["steps"])
    if (folder / "trials.parquet").is_file():
        out["trials"] = pd.read_parquet(folder / "trials.parquet")
    return out


def output_folder(folder: Path, out: str | Path | None) -> Path:
    """Where a report or its plots go: `out`, else the results folder itself, never a shipped study
    in results/reference (its files are checked against its data: a report there breaks the check)."""
    if out is not None:
        return Path(out)
    if tables.is_reference(folder):
        raise ValueError(f"{folder} is shipped reference data (results/reference), which reading commands never "
                         "write into; give --out FOLDER for the report and its plots")
    return folder


def write_plots(folder: str | Path, fmt: str = "png", out: str | Path | None = None) -> list[Path]:
    folder = Path(folder)
    data = read_tables(folder)
    dest = output_folder(folder, out)
    try:
        (dest / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {str(dest)!r}: cannot write the plots there ({err.strerror})") from err
    paths = []
    for name, fig, _ in draw_figures(data):
        path = dest / "plots" / f"{name}.{fmt}"
        fig.savefig(path, dpi=150, format=fmt)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """report.html (self-contained) and report.md (images in plots/) for a suite or sweep folder,
    written into it (or into `out`)."""
    folder = Path(folder)
    data = read_tables(folder)
    dest = output_folder(folder, out)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {str(dest)!r}: cannot write the report there ({err.strerror})") from err
    runs = data["runs"]
    name = str(runs["suite"].iloc[0]) if "suite" in runs else folder.name
    page = Page(dest, f"{name}: MoE load-balancing report")
    page.text(f"{len(runs)} runs, from `{folder}`.", f"{len(runs)} runs, from ", str(folder))
    if "trials" in data:  # NOTE: a sweep compares every trial with its best feasible one, not the first
        best, flat = flat_optimum(runs, data["trials"])
        runs = runs.assign(baseline=best["label"]) if best is not None else runs
        page.text(flat_sentence(data["trials"], best, flat))
    if add_verdicts(page, runs):  # NOTE: the answers first, where the suite asks for them
        page.section("Means over seeds")
    add_tables(page, runs)
    add_concordance(page, runs)
    (dest / "plots").mkdir(exist_ok=True)
    for stem, fig, caption in draw_figures(data):
        page.figure(stem, fig, caption)
    return page.write()
