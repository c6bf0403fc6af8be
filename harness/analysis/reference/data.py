"""A study's shipped data: the compact copy of a results folder that its reference page is built
from, in results/reference/data/<study>/.

    runs.parquet     every run's row, every seed (the config, the metrics, the versions and commit)
    steps.parquet    the step rows, thinned to at most MAX_STEP_ROWS per run (every evaluation
                     step and the last step kept)
    loads.parquet    the final evaluation's load rows (scopes global and batch)
    trials.parquet   a sweep's trials, as the study stored them

Parquet with zstd: all studies together stay within a few MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import tables

MAX_STEP_ROWS = 200
LOAD_SCOPES = ("global", "batch")


@dataclass
class Data:
    runs: pd.DataFrame
    steps: pd.DataFrame
    loads: pd.DataFrame
    trials: pd.DataFrame | None = None

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


def ship(folder: Path, dest: Path) -> list[Path]:
    """Compact a results folder (a suite's or a sweep's) into `dest`; returns the files written."""
    folder, dest = Path(folder), Path(dest)
    if not tables.has_results(folder):
        raise FileNotFoundError(2, "No results to ship", str(folder / "runs"))
    dest.mkdir(parents=True, exist_ok=True)
    frames = {"runs": tables.read(folder, "runs"), "steps": thin_steps(tables.read(folder, "steps")),
              "loads": final_loads(tables.read(folder, "loads"))}
    if (folder / "trials.parquet").is_file():
        frames["trials"] = pd.read_parquet(folder / "trials.parquet")
    written = []
    for name, frame in frames.items():
        path = dest / f"{name}.parquet"
        tables.write_atomic(path, lambda tmp, frame=frame: frame.to_parquet(tmp, index=False, compression="zstd"))
        written.append(path)
    return written


def load(folder: Path) -> Data:
    folder = Path(folder)
    if not (folder / "runs.parquet").is_file():
        raise FileNotFoundError(2, "No shipped data (moe-harness reference ship NAME RESULTS_DIR)", str(folder))
    read = {name: pd.read_parquet(folder / f"{name}.parquet") for name in ("runs", "steps", "loads")}
    trials = pd.read_parquet(folder / "trials.parquet") if (folder / "trials.parquet").is_file() else None
    return Data(**read, trials=trials)
