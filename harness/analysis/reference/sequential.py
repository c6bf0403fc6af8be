"""The error rates of sequential seeds, by simulation (analysis/sequential.py): a study made by code,
not by runs. `moe-harness reference ship sequential` simulates it and stores the table; its page,
the docs/methods.md table and the README sentence are built from that table, and a slow test
simulates it again and finds the same numbers."""

from __future__ import annotations

import pandas as pd

from harness.analysis import sequential
from harness.analysis.reference.base import Built, md_table, page
from harness.analysis.reference.data import Data

PLAN = sequential.Plan(min=3, max=12, step=3)
SIMS = 20_000
CASES = [(0.0, None), (0.5, None), (1.0, None), (1.5, None), (2.0, None), (0.0, 0.75), (0.75, 0.75)]


def simulate() -> dict[str, pd.DataFrame]:
    """The simulation table: one row per (true difference, margin), SIMS sequences each (seed 0)."""
    return {"simulation": pd.DataFrame([sequential.simulate(d, PLAN, m, sims=SIMS) for d, m in CASES])}


def share(x: float) -> str:
    return "0" if x == 0 else f"{x:.3f}"


def table(sim: pd.DataFrame) -> str:
    rows = pd.DataFrame({"true difference d": sim["effect"].map("{:g}".format),
                         "margin": sim["margin"].map(lambda m: "none" if pd.isna(m) else f"{m:g}"),
                         "different": sim["different"].map(share), "equivalent": sim["equivalent"].map(share),
                         "inconclusive at max": sim["unresolved"].map(share), "mean seeds": sim["mean_seeds"].map("{:.1f}".format),
                         f"fixed {PLAN.max}: different": sim["fixed_different"].map(share),
                         "95 % at every look: different": sim["peeking_different"].map(share)})
    return md_table(rows, index=False)


def row(sim: pd.DataFrame, effect: float, margin: float | None) -> pd.Series:
    found = sim[(sim["effect"] == effect) & (sim["margin"].isna() if margin is None else sim["margin"] == margin)]
    return found.iloc[0]


@page("sequential", "sequential_simulation.md", make=simulate)
def sequential_page(data: dict[str, Data]) -> Built:
    sim = data["sequential"].tables["simulation"]
    null, edge, big, mid = row(sim, 0.0, None), row(sim, 0.75, 0.75), row(sim, 2.0, None), row(sim, 1.5, None)
    sims = int(sim["sims"].iloc[0])
    reading = (f"Under no difference the design's false \"different\" rate is {100 * null['different']:.1f} % (peeking at "
               f"95 % would give {100 * null['peeking_different']:.1f} %); a true difference at the margin is called "
               f"equivalent {100 * edge['equivalent']:.1f} % of the time. A difference of 2 sd is found with "
               f"{big['mean_seeds']:.1f} seeds on average instead of {PLAN.max} "
               f"({100 * (1 - big['mean_seeds'] / PLAN.max):.0f} % fewer runs for that comparison), 1.5 sd with "
               f"{mid['mean_seeds']:.1f}; a difference near the noise (0.5 to 1 sd) loses some power against the fixed "
               "design and saves few seeds.")
    intro = (f"Simulated (`sequential.simulate`, {sims:,} sequences per row, paired differences Normal(d, 1) so d and "
             f"the margin are in units of the seed-to-seed sd; plan min {PLAN.min}, max {PLAN.max}, step {PLAN.step}), "
             f"against the fixed {PLAN.max}-seed design's 95 % interval and against peeking with that interval at "
             "every look:")
    docs = "\n\n".join([intro, table(sim), reading])
    text = "\n\n".join(["# Sequential seeds: error rates by simulation",
                        "Data: `data/sequential/` (`moe-harness reference ship sequential` simulates it again; "
                        "a slow test checks the shipped table against a fresh simulation).", docs]) + "\n"
    readme = (f"Simulated ([docs/methods.md](docs/methods.md#seeds-that-stop), {sims:,} sequences "
              f"per case): {100 * null['different']:.1f} % false \"different\" under no difference, against "
              f"{100 * null['peeking_different']:.1f} % for a 95 % interval read at every look; a 2-sd difference "
              f"found with {big['mean_seeds']:.1f} seeds on average instead of {PLAN.max}.")
    return Built(text, {"sequential": docs, "sequential-readme": readme})
