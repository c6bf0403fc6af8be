"""The compile page: `train.compile = true` against eager, one optimizer step of the trainer at
each proxy size after the compiled run's warm-up, from one pytest-benchmark session
(the benchmark session of data/bench/, which bench.py's page shows whole)."""

from __future__ import annotations

import re

import pandas as pd

from harness.analysis.reference.base import Built, md_table, page
from harness.analysis.reference.bench import Session, full_table, verdict
from harness.analysis.reference.data import Data

SIZES = ("tiny", "small", "base")


def compile_rows(s: Session) -> pd.DataFrame:
    """Per size: eager and compiled ms per step, tokens/s of each, compiled / eager tokens/s."""
    rows = []
    for size in SIZES:
        eager, compiled = f"train_step_{size}[eager]", f"train_step_{size}[compiled]"
        if eager not in s or compiled not in s:
            continue
        noted = re.match(r"(\d+) tokens per step", str(s.rows.loc[compiled, "note"]))  # the benchmark's note
        tokens = int(noted[1]) if noted else None
        ratio = s.ratio(compiled, eager)
        rows.append({"size": size, "eager ms / step": f"{s.ms(eager):,.1f}", "compiled ms / step": f"{s.ms(compiled):,.1f}",
                     "eager tokens/s": f"{tokens / s.ms(eager) * 1e3:,.0f}" if tokens else "",
                     "compiled tokens/s": f"{tokens / s.ms(compiled) * 1e3:,.0f}" if tokens else "",
                     "compiled / eager tokens/s": f"{1 / ratio:.2f}",
                     "goal (>= 1)": verdict(ratio, 1.0),
                     "ratio from": (f"{s.info(compiled)['pairs']} alternating pairs" if "paired_ratio" in s.info(compiled)
                                    else "the two medians")})
    return pd.DataFrame(rows)


@page("bench_compile", "bench_compile_cpu.md", sources=("bench",))
def bench_compile(data: dict[str, Data]) -> Built:
    rows_all = data["bench"].tables["benchmarks"]
    s = Session(rows_all[rows_all["key"].astype(str).str.contains(r"\[(?:eager|compiled)\]$")])
    rows = compile_rows(s)
    wins = all(r == "meets" for r in rows["goal (>= 1)"]) if len(rows) else False
    text = "\n\n".join([
        "# train.compile on CPU",
        f"`python -m pytest tests/benchmarks/test_bench_compile.py -o addopts=\"\" --benchmark-only "
        f"--benchmark-json=...`: {s.header()}. One optimizer step of the trainer (forward, backward, clip, AdamW, "
        "the balancing update) with `router = \"loss_free\"`, each size's default batch, timed after the compiled "
        "run's warm-up steps, from the session `bench_cpu.md` shows. The ratio comes from steps timed in "
        "alternation where the row says so (a shared machine's slow phases then slow both sides alike; the medians "
        "beside it were timed a minute apart), else from the two medians. Data: "
        "`data/bench/`; this page: `moe-harness reference build bench_compile`.",
        md_table(rows, index=False) if len(rows) else "(not in this session)",
        ("Compiled is faster than eager at every size here. `train.compile` still defaults to false: a compiled "
         "run first spends its warm-up steps compiling (not timed here), which a short run may not earn back." if wins else
         "Compiled is not faster than eager at every size here, so `train.compile` defaults to false."),
        "## The session",
        md_table(full_table(s), index=False),
    ]) + "\n"
    return Built(text, {"compile": md_table(rows, index=False) if len(rows) else "(not in this session)"})
