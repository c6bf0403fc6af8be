"""The report's concordance section: for a suite over several architectures, the methods' order on
each family and whether the proxy's order carries over (analysis/concordance.py)."""

from __future__ import annotations

import pandas as pd

from harness.analysis import concordance
from harness.analysis.report.page import Page

METRICS = ("val_loss", "maxvio_global")


def add_concordance(page: Page, runs: pd.DataFrame) -> bool:
    """The section, where the runs span several model families; whether there was one."""
    ok = runs[runs["status"] == "ok"]
    if not len(ok) or not concordance.has_families(ok):
        return False
    page.section("Concordance across architectures")
    found = []
    for metric in METRICS:
        if metric not in ok:
            continue
        page.text(f"Methods by seed-mean {metric}, best first, on each family:")
        page.table(concordance.order(ok, metric).rename_axis("family"))
        found.append(concordance.pairs(ok, metric))
    pairs = pd.concat(found, ignore_index=True)
    shown = pairs.assign(**{"tau per seed [95 % CI]": [f"{r.tau_seed_mean:+.2f} [{r.low95:+.2f}, {r.high95:+.2f}]"
                                                         for r in pairs.itertuples()],
                            "tau": pairs["tau"].map("{:+.2f}".format)})
    page.table(shown[["metric", "a", "b", "methods", "tau", "tau per seed [95 % CI]", "seeds"]].set_index("metric"))
    page.text(concordance.carries_over(pairs) + " Kendall's tau of two families' orders (1: the same order, -1 "
              "reversed); the interval is over the per-seed taus (t, n - 1), so it is as wide as the seeds make it.")
    return True
