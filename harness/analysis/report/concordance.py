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
    shown = pairs.assign(**{"tau [95 % bootstrap over seeds]": [f"{r.tau:+.2f} [{r.low95:+.2f}, {r.high95:+.2f}]"
                                                                  for r in pairs.itertuples()],
                            "permutation p": pairs["p_permutation"].map("{:.2g}".format)})
    page.table(shown[["metric", "a", "b", "methods", "tau [95 % bootstrap over seeds]", "permutation p", "seeds"]]
               .set_index("metric"))
    page.text(concordance.carries_over(pairs) + " Kendall's tau of two families' orders of the seed means (1: the "
              "same order, -1 reversed); the interval resamples the seeds, the permutation test shuffles one order "
              "(docs/methods.md, Concordance). Exploratory: unadjusted.")
    return True
