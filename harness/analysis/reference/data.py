"""A study's shipped data: the compact copy of a results folder that its reference page is built
from, in results/reference/data/<study>/.

    runs.parquet     every run's row, every seed (the config, the metrics, the versions and commit)
    steps.parquet    the step rows, thinned to at most MAX_STEP_ROWS per run (every evaluation
                     step and the last step kept)
    loads.parquet    the final evaluation's load rows (scopes global and batch)
    trials.parquet   a sweep's trials, as the study stored them

A benchmark session ships as benchmarks.parquet (one row per benchmark of pytest-benchmark's
--benchmark-json file: its statistics, its key and comparison, the machine and commit), and a
study made by code rather than runs (a simulation) as the tables its page's `make` returns.
Parquet with zstd: all studies together stay within a few MB.
"""

from __future__ import annotations

import math
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness import tables
from harness.steady_state import with_steady_state

MAX_STEP_ROWS = 200
LOAD_SCOPES = ("global", "batch")


@dataclass
class Data:
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    loads: pd.DataFrame = field(default_factory=pd.DataFrame)
    trials: pd.DataFrame | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # any other table (benchmarks, a simulation)

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"]


def thin_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_STEP_ROWS rows per run: every k-th logged step, every evaluation and the last."""
    parts = []
    for _, part in steps.sort_values(["run_id", "step"]).groupby("run_id", sort=False):
        every = max(1, math.ceil(len(part) / MAX_STEP_ROWS))
        keep = (pd.Series(range(len(part)), index=part.index) % every == 0) | (part["step"] == part["step"].max())
        if "val_loss" in part:
            keep |= part["val_loss"].notna()
        part = part[keep]
        parts.append(part.iloc[-MAX_STEP_ROWS:] if len(part) > MAX_STEP_ROWS else part)
    return pd.concat(parts, ignore_index=True) if parts else steps


def final_loads(loads: pd.DataFrame) -> pd.DataFrame:
    if not len(loads):
        return loads
    last = loads.groupby("run_id")["step"].transform("max")
    return loads[(loads["step"] == last) & loads["scope"].isin(LOAD_SCOPES)].reset_index(drop=True)


def ship(source: Path, dest: Path) -> list[Path]:
    """Compact a results folder (a suite's or a sweep's) or a pytest-benchmark JSON file into
    `dest`; returns the files written."""
    source = Path(source)
    if source.is_file() and source.suffix == ".json":
        return write_tables({"benchmarks": benchmark_rows(source)}, dest)
    if not tables.has_results(source):
        raise FileNotFoundError(2, "No results to ship (a results folder with runs/, or a --benchmark-json file)",
                                str(source / "runs"))
    frames = {"runs": tables.read(source, "runs"), "steps": thin_steps(tables.read(source, "steps")),
              "loads": final_loads(tables.read(source, "loads"))}
    if (source / "trials.parquet").is_file():
        frames["trials"] = pd.read_parquet(source / "trials.parquet")
    return write_tables(frames, dest)


def write_tables(frames: dict[str, pd.DataFrame], dest: Path) -> list[Path]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in frames.items():
        path = dest / f"{name}.parquet"
        tables.write_atomic(path, lambda tmp, frame=frame: frame.to_parquet(tmp, index=False, compression="zstd"))
        written.append(path)
    return written


def benchmark_rows(path: Path) -> pd.DataFrame:
    """One row per benchmark of a pytest-benchmark JSON file: name, group, the key, comparison and
    target the benchmark tagged itself with, its statistics in seconds, whatever else it recorded (`info`, JSON), and the session's
    machine, versions and commit (the raw timings are left out)."""
    expected = ("an object with 'benchmarks' (a list of records, each with 'name' and 'stats') and 'machine_info', as "
                "pytest --benchmark-json=FILE writes it")
    try:
        report = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a pytest-benchmark --benchmark-json file: not JSON ({err}); expected "
                         f"{expected}") from None
    if not isinstance(report, dict) or not isinstance(report.get("benchmarks"), list) or not isinstance(
            report.get("machine_info"), dict):
        raise ValueError(f"{path}: not a pytest-benchmark --benchmark-json file: got a JSON {type(report).__name__}"
                         f"{' without benchmarks and machine_info' if isinstance(report, dict) else ''}; expected "
                         f"{expected}")
    benchmarks, machine = report["benchmarks"], report["machine_info"]
    stats = ("median", "mean", "min", "max", "stddev", "iqr", "rounds")
    for i, bench in enumerate(benchmarks):
        if not isinstance(bench, dict) or "name" not in bench or not isinstance(bench.get("stats"), dict) or any(
                s not in bench["stats"] for s in stats):
            raise ValueError(f"{path}: benchmark record {i} ({bench.get('name', '?') if isinstance(bench, dict) else bench!r}) "
                             f"has no 'name' or no 'stats' with {list(stats)}; expected {expected}")
    commit = report.get("commit_info", {})
    session = {"machine": f"{machine.get('cpu', {}).get('brand_raw', machine.get('processor', ''))}",
               "cores": machine.get("cpu", {}).get("count"), "python": machine.get("python_version"),
               "commit": str(commit.get("id", ""))[:12], "dirty": bool(commit.get("dirty")),
               "datetime": report.get("datetime")}
    rows = []
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        rows.append({"name": bench["name"], "group": bench.get("group"), "key": info.get("key"), "vs": info.get("vs"),
                     "target": info.get("target"), "note": info.get("note", ""),
                     **{stat: bench["stats"][stat] for stat in stats},
                     "info": json.dumps({k: v for k, v in info.items() if k not in ("key", "vs", "target", "note")}),
                     **session})
    return pd.DataFrame(rows)


def load(folder: Path) -> Data:
    folder = Path(folder)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(2, "No shipped data (moe-harness reference ship NAME RESULTS_DIR)", str(folder))
    read = {path.stem: pd.read_parquet(path) for path in files}
    known = {name: read.pop(name) for name in ("runs", "steps", "loads", "trials") if name in read}
    if "runs" in known:  # NOTE: runs shipped before the trainer recorded their steady state get it from their steps
        known["runs"] = with_steady_state(known["runs"], known.get("steps"))
    return Data(**known, tables=read)
