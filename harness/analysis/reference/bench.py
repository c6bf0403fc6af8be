"""The benchmark pages and the README's speed tables, from one shipped pytest-benchmark session
(data/bench/benchmarks.parquet): every ratio divides two medians of that session, so they share
the machine's state, except where a benchmark timed both sides in alternation (a family's block:
the median of the pairs' ratios, which a slow phase of a shared machine moves less). `python -m pytest tests/benchmarks -o addopts="" --benchmark-only
--benchmark-json=results/bench/benchmarks_cpu.json`, then `moe-harness reference ship bench
results/bench/benchmarks_cpu.json`."""

from __future__ import annotations

import json
import math
import statistics

import pandas as pd

from harness.analysis.reference.base import Built, md_table, page
from harness.analysis.reference.data import Data


class Session:
    """A benchmark session's rows by key: medians in ms, ratios, targets and recorded info."""

    def __init__(self, rows: pd.DataFrame):
        self.rows = rows.set_index("key", drop=False)

    def __contains__(self, key: str) -> bool:
        return key in self.rows.index

    def ms(self, key: str) -> float:
        return float(self.rows.loc[key, "median"]) * 1e3

    def ratio(self, key: str, vs: str | None = None) -> float:
        """key / vs: where the benchmark timed the two in alternation, the median of those pairs'
        ratios (`paired_ratio`, robust to a shared machine's slow phases); else the two medians'."""
        recorded = self.rows.loc[key, "vs"] if key in self else None
        vs = vs or recorded
        if key not in self or vs not in self:
            return math.nan
        paired = self.info(key).get("paired_ratio")
        return float(paired) if paired is not None and vs == recorded else self.ms(key) / self.ms(vs)

    def info(self, key: str) -> dict:
        return json.loads(self.rows.loc[key, "info"] or "{}") if key in self else {}

    def goal(self, key: str) -> str:
        """The target the benchmark recorded, as the tables print it ('' where it has none)."""
        target = self.rows.loc[key, "target"] if key in self else None
        return f"<= {float(target):g}" if target is not None and pd.notna(target) else ""

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.rows.index if str(k).startswith(prefix)]

    def header(self) -> str:
        first = self.rows.iloc[0]
        return (f"one pytest-benchmark session of {str(first['datetime'])[:10]} on {first['machine']} "
                f"({first['cores']} cores), Python {first['python']}, commit {first['commit']}"
                f"{' plus uncommitted changes' if first['dirty'] else ''}")


def verdict(ratio: float, target) -> str:
    if target is None or pd.isna(target) or math.isnan(ratio):
        return ""
    return "meets" if ratio <= float(target) else "misses"


def bound_note(s: Session, key: str) -> str:
    """A scaling row's memory-traffic bound: its bytes at the measured bandwidth, and how far off."""
    info = s.info(key)
    if "bytes_moved" not in info:
        return ""
    return (f"{info['bytes_moved'] / 1e6:,.0f} MB at {info['bandwidth_gb_s']:.1f} GB/s: "
            f"bound {info['bound_ms']:.1f} ms, time {s.ms(key) / info['bound_ms']:.1f}x the bound")


def paired_note(s: Session, key: str) -> str:
    """'ratio: median of 15 alternating pairs (medians' ratio 1.083); ' where the ratio is paired."""
    info = s.info(key)
    if "paired_ratio" not in info:
        return ""
    vs = s.rows.loc[key, "vs"]
    return (f"ratio: median of {info['pairs']} alternating pairs (the medians' ratio {s.ms(key) / s.ms(vs):.3f}); ")


def rounds_note(s: Session, key: str) -> str:
    """A whole-run benchmark's measured reason: the threads each run kept, and how far its rounds
    (and its comparator's) spread, the noise its ratio sits in."""
    info, row = s.info(key), s.rows.loc[key]
    if "min_threads" not in info:
        return ""
    spread = f"rounds spread {row['max'] / row['min']:.2f}x (max / min of {int(row['rounds'])})"
    vs = row["vs"]
    if isinstance(vs, str) and vs in s:
        theirs = s.rows.loc[vs]
        spread += f", {vs}'s {theirs['max'] / theirs['min']:.2f}x"
    return f"fewest threads in each run {info['min_threads']}; {spread}"


def full_table(s: Session) -> pd.DataFrame:
    rows = []
    for key, row in s.rows.iterrows():
        r = s.ratio(key) if isinstance(row["vs"], str) else math.nan
        target = row["target"] if pd.notna(row["target"]) else None
        rows.append({"benchmark": key, "median ms": f"{s.ms(key):,.2f}", "compared with": row["vs"] or "",
                     "ratio": "" if math.isnan(r) else f"{r:.3f}", "target": "" if target is None else f"<= {target:g}",
                     "": verdict(r, target), "note": paired_note(s, key) + (row["note"] or bound_note(s, key) or rounds_note(s, key))})
    return pd.DataFrame(rows).fillna("")


def speed_rows(s: Session) -> list[tuple[str, str, str]]:
    """(measure, ratio, target) for the README's performance table, where the session has them."""
    out = []
    if "moe_layer@ref" in s:
        out.append(("MoE layer / dense SwiGLU of equal active width (T 4096, d 256, H 512, 16 experts, k 2)",
                    f"{s.ratio('moe_layer@ref'):.2f}", "<= 1.2"))
    routers = {k: s.ratio(k) for k in s.keys("router[")}
    if routers:
        worst = max(routers, key=routers.get)
        out.append((f"router forward + backward + update / MoE layer, worst preset ({worst[7:-5]})",
                    f"{routers[worst]:.3f}", "<= 0.05"))
    peers = {k: s.ratio(k) for k in s.keys("hf_mixtral[")}
    if peers:
        best = min(peers, key=peers.get)
        out.append((f"Hugging Face Mixtral block, fastest backend ({best[11:-5]}) / ours", f"{peers[best]:.2f}",
                    ">= 1"))
    for experts in (64, 256):
        if f"moe_layer@E={experts}" in s:
            out.append((f"{experts} experts / 8 experts, fixed active size", f"{s.ratio(f'moe_layer@E={experts}'):.2f}",
                        "<= 1.5"))
    if "bound_ms" in s.info("moe_layer@E=256"):
        out.append(("256-expert layer time / its memory-traffic bound",
                    f"{s.ms('moe_layer@E=256') / s.info('moe_layer@E=256')['bound_ms']:.1f}", "<= 1.3"))
    for tokens in (1024, 16384):
        if f"moe@T={tokens}" in s:
            out.append((f"MoE / dense at {tokens} tokens", f"{s.ratio(f'moe@T={tokens}'):.2f}",
                        s.goal(f"moe@T={tokens}") if tokens == 1024 else ""))
    if "train_step_small[moe]" in s:
        out.append(("training step of the `small` model, MoE / dense FFN", f"{s.ratio('train_step_small[moe]'):.2f}",
                    s.goal("train_step_small[moe]") or "<= 1.25"))
    return out


def family_rows(s: Session) -> pd.DataFrame:
    """A row per family the session timed (every family the harness had then)."""
    rows = []
    for family in [k.split("@", 1)[1] for k in s.keys("train_step_small@")]:
        if f"moe_block@{family}[harness]" not in s:
            continue
        harness, native = f"moe_block@{family}[harness]", f"moe_block@{family}[native]"
        rows.append({"family": family, "training step / the proxy's": f"{s.ratio(f'train_step_small@{family}'):.2f}",
                     "MoE block, harness router / its own (goal <= 1.05)":
                         f"{s.ratio(harness):.3f} ({verdict(s.ratio(harness), 1.05)})",
                     "router's share of its block, harness / own":
                         f"{s.ratio(f'gate@{family}[harness]'):.3f} / {s.ratio(f'gate@{family}[native]'):.3f}"})
    return pd.DataFrame(rows)


def contention_rows(s: Session) -> list[tuple[str, str, str]]:
    if not {"alone[auto]", "alone[fixed]", "pair[auto]"} <= set(s.rows.index):
        return []
    alone = statistics.median(s.info("alone[auto]")["throughput_ratios"])
    pair = statistics.median(s.info("pair[auto]")["throughput_ratios"])
    out = [("a run alone, following free cores / with fixed threads, one per core", f"{s.ratio('alone[auto]'):.2f}",
            "<= 1.05"),
           ("each of two runs started together / one run alone", f"{s.ratio('pair[auto]'):.2f}", "<= 2.5"),
           ("`throughput_ratio` beside a second run / alone (medians)", f"{pair / alone:.2f}", "within 15 %")]
    ratios = s.info("identical_runs").get("throughput_ratios")
    if ratios:
        quiet, busy = ratios[:3], ratios[3:]
        out.append(("spread (max / min) of `throughput_ratio` over 3 identical runs, alone / beside a second run",
                    f"{max(quiet) / min(quiet):.2f} / {max(busy) / min(busy):.2f}", "<= 1.10"))
    return out


def triples(rows: list[tuple[str, str, str]]) -> str:
    return md_table(pd.DataFrame(rows, columns=["measure", "ratio", "target"]), index=False)


@page("bench", "bench_cpu.md")
def bench(data: dict[str, Data]) -> Built:
    s = Session(data["bench"].tables["benchmarks"])
    families = family_rows(s)
    text = "\n\n".join([
        "# Benchmarks on CPU",
        f"`python -m pytest tests/benchmarks -o addopts=\"\" --benchmark-only --benchmark-json=...`: {s.header()}. "
        "Every ratio divides two medians of this session, except where its note says it is the median of "
        "alternating pairs. Data: `data/bench/`; this page: `moe-harness reference "
        "build bench`. Earlier sessions' tables were not shipped with their data; git history has them.",
        md_table(full_table(s), index=False),
        "## The transformers families (issue 28)",
        "Each family's `small` training step (loss_free, the harness trainer's step) against the proxy's; its "
        "first MoE block, forward and backward, with the harness Router written as the family's own routing "
        "against the untouched block; and each router's share of its block (the gate alone over the whole block).",
        md_table(families, index=False) if len(families) else "(not in this session)",
    ]) + "\n"
    speed = triples(speed_rows(s)) + ("\n\n" + md_table(families, index=False) if len(families) else "")
    readme = {"performance": speed,
              "contention": triples(contention_rows(s)),
              "tables-scale": tables_sentence(s), "tokenizer": tokenizer_sentence(s)}
    return Built(text, readme)


def tables_sentence(s: Session) -> str:
    small, big, read = ("append a run to a folder of 10 runs", "append a run to a folder of 1000 runs",
                        "read runs/ of 1000 runs")
    if not {small, big, read} <= set(s.rows.index):
        return ""
    return (f"Appending a run took {s.ms(big):.1f} ms to a folder of 1,000 runs against {s.ms(small):.1f} ms to one of "
            f"10 (ratio {s.ratio(big, small):.2f}); reading 1,000 runs back took {s.ms(read) / 1e3:.1f} s "
            "([table](results/reference/bench_cpu.md)).")


def tokenizer_sentence(s: Session) -> str:
    train, first, cached, raw = ("train bpe:4096 on the stdlib training split",
                                 "first load of stdlib with bpe:4096 (train + encode + cache)",
                                 "cached load of stdlib with bpe:4096", "load stdlib as bytes")
    if not {train, first, cached, raw} <= set(s.rows.index):
        return ""
    megabytes = s.info(train).get("megabytes")
    size = f"the stdlib's {megabytes:.0f} MB training split" if megabytes else "the stdlib's training split"
    return (f"Training `bpe:4096` on {size} took {s.ms(train) / 1e3:.1f} s, the first load with encoding "
            f"{s.ms(first) / 1e3:.1f} s, a cached load {s.ms(cached) / 1e3:.2f} s (bytes: {s.ms(raw) / 1e3:.2f} s), "
            f"in the benchmark session of [results/reference/bench_cpu.md](results/reference/bench_cpu.md) "
            "(`tests/benchmarks/test_bench_tokenizer.py`).")
