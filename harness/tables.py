"""The result tables on disk: atomic writes under a lock, so nothing written is ever lost.

Each run appends its rows to steps.parquet and loads.parquet, then its row to runs.parquet;
a row in runs.parquet with status ok or diverged marks the run complete. Every write goes to a
temporary file that is renamed over the old one, and an exclusive lock on `.lock` serialises
writers (several sweep workers may share one folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

import pandas as pd

TABLES = ("steps", "loads", "runs")
COMPLETE = ("ok", "diverged")


@contextlib.contextmanager
def locked(folder: Path):
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> None:
    _write_atomic(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def read(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    return pd.read_parquet(path)


def complete_run_ids(folder: Path) -> set[str]:
    path = Path(folder) / "runs.parquet"
    if not path.is_file():
        return set()
    runs = pd.read_parquet(path, columns=["run_id", "status"])
    return set(runs.loc[runs["status"].isin(COMPLETE), "run_id"])


def append_rows(folder: Path, name: str, rows: list[dict], run_id: str) -> None:
    """Replace `run_id`'s rows of table `name` with `rows` (call under `locked`)."""
    path = Path(folder) / f"{name}.parquet"
    old = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
    if len(old):
        old = old[old["run_id"] != run_id]
    new = pd.DataFrame(rows)
    frames = [f for f in (old, new) if len(f)]
    if frames:
        write_parquet_atomic(path, pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0])


def append_run(folder: Path, result) -> None:
    """Write one run's steps, loads and record, in that order (the record marks completion)."""
    folder = Path(folder)
    run_id = result.record["run_id"]
    with locked(folder):
        append_rows(folder, "steps", result.steps, run_id)
        append_rows(folder, "loads", result.loads, run_id)
        append_rows(folder, "runs", [result.record], run_id)
