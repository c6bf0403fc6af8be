"""Benchmark helpers and the ratio table printed (and written) at the end of a benchmark run.

Each benchmark names itself with `extra_info["key"]`, and may name the benchmark it is compared
with (`vs`) and the target ratio (`target`). All ratios come from one pytest session, so
they share the machine's state. Run with:

    python -m pytest tests/benchmarks -o addopts="" --benchmark-only
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

RESULTS = Path(__file__).resolve().parents[2] / "results" / "bench"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(module: torch.nn.Module, x: torch.Tensor, extra_loss=None):
    """A closure: zero grads, forward, backward with a fixed upstream gradient.

    The input needs a gradient, as it does inside a network: otherwise autograd skips the
    input-gradient matmuls (a third of the backward) and flatters the layer.
    """
    x = x.detach().requires_grad_()
    grad = torch.randn_like(module(x))

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        loss = (out * grad).sum()
        if extra_loss is not None:
            loss = loss + extra_loss(module)
        loss.backward()
        sync(x.device)
        return out

    return step


MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_grouped_mm")


def op_profile(step, calls: int = 5) -> dict:
    """Where one call of `step` spends its time, by torch.profiler (outside the timed rounds):
    the self time of the matmul kernels and of everything else, in ms per call."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    events = prof.key_averages()
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / calls / 1e3
    total = sum(e.self_cpu_time_total for e in events) / calls / 1e3
    return {"matmul_ms": matmul, "other_ms": total - matmul,
            "matmul_calls": sum(e.count for e in events if e.key in MATMULS) // calls}


def profile_note(mine: dict, theirs: dict, what: str, detail: str = "") -> str:
    """A measured reason for a ratio: the matmul and the other time of both sides, per call."""
    return (f"profile, ms per call: matmuls {mine['matmul_ms']:.1f} in {mine['matmul_calls']} calls, "
            f"{mine['matmul_ms'] / max(theirs['matmul_ms'], 1e-9):.2f}x {what}'s {theirs['matmul_ms']:.1f} in "
            f"{theirs['matmul_calls']}{f' ({detail})' if detail else ''}; the rest {mine['other_ms']:.1f} against "
            f"{theirs['other_ms']:.1f}")


def paired_ratio(mine, theirs, pairs: int = 15) -> dict:
    """`mine` over `theirs` timed in alternation (after the timed rounds): the median of `pairs`
    per-pair ratios. A slow phase of a shared machine (seconds long) then slows both sides of a
    pair alike, where two benchmarks' medians, timed a minute apart, each get their own phase."""
    import statistics
    import time

    ratios = []
    for _ in range(pairs):
        timed = []
        for step in (theirs, mine):
            start = time.perf_counter()
            step()
            timed.append(time.perf_counter() - start)
        ratios.append(timed[1] / timed[0])
    return {"paired_ratio": statistics.median(ratios), "pairs": pairs}


PROFILES: dict[str, dict] = {}  # NOTE: by key, this session; a comparator runs before what it is compared with


def tag(benchmark, key: str, vs: str | None = None, target: float | None = None, profile=None, **info) -> None:
    """Name a benchmark, what it is compared with and its goal. With `profile` (the timed step), the
    step is profiled after its rounds, and a row whose comparator was profiled too gets the split
    of both as its note, the measured reason of its ratio."""
    if profile is not None:  # NOTE: the step to profile, or a profile already taken (op_profile)
        PROFILES[key] = info["profile"] = profile if isinstance(profile, dict) else op_profile(profile)
        if vs in PROFILES and "note" not in info:
            info["note"] = profile_note(PROFILES[key], PROFILES[vs], vs)
    benchmark.extra_info.update({"key": key, "vs": vs, "target": target, **info})


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hardware(device_type: str) -> str:
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def ratio_rows(benchmarks) -> list[dict]:
    by_key = {b.extra_info.get("key"): b for b in benchmarks if b.extra_info.get("key")}
    rows = []
    for key, bench in by_key.items():
        median_ms = bench["median"] * 1e3
        vs, target = bench.extra_info.get("vs"), bench.extra_info.get("target")
        ratio = median_ms / (by_key[vs]["median"] * 1e3) if vs in by_key else None
        if ratio is not None and bench.extra_info.get("paired_ratio") is not None:  # NOTE: the alternating pairs'
            ratio = bench.extra_info["paired_ratio"]
        verdict = "" if ratio is None or target is None else ("meets" if ratio <= target else "MISSES")
        rows.append({"benchmark": key, "median_ms": median_ms, "vs": vs or "", "ratio": ratio,
                     "target": target, "verdict": verdict, "note": bench.extra_info.get("note", "")})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| benchmark | median ms | compared with | ratio | target | | note |", "|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else ""
        target = f"<= {r['target']}" if r["target"] is not None else ""
        lines.append(f"| {r['benchmark']} | {r['median_ms']:.2f} | {r['vs']} | {ratio} | {target} | {r['verdict']} "
                     f"| {r.get('note', '')} |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b]
    rows = ratio_rows(benchmarks)
    if not rows:
        return
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    header = (f"moe-harness benchmark ratios ({device_type}: {hardware(device_type)}; torch {torch.__version__}, "
              f"Python {platform.python_version()})")
    table = format_table(rows)
    terminalreporter.write_sep("=", "ratios (one run)")
    terminalreporter.write_line(header)
    terminalreporter.write_line(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ratios_{device_type}.md").write_text(f"{header}\n\n{table}\n")
