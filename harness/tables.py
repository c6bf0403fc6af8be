"""The result tables on disk: one parquet file per run and table, written once, never rewritten.

A results folder is an Arrow dataset of three tables:

    runs/<key>.parquet     one row: the run's config, status and metrics
    steps/<key>.parquet    one row per logged step
    loads/<key>.parquet    one row per (evaluation step, layer, expert, scope)

`key` is the run_id (a sweep adds the trial number, since two trials may sample one config).
Each file is written to a hidden temporary name in the same folder and renamed, so a reader
never sees half a file; the runs/ file is written last, and its presence marks the run
complete. No lock and no rewrite: appending a run costs the same whatever the folder holds,
and workers on several machines may add runs to one folder on a shared filesystem.

A folder of single-file tables (runs.parquet / steps.parquet / loads.parquet: moe-harness 0.1's
layout, an `export`, or a study shipped in results/reference/data/) is read as it is: reading never
writes. Adding runs to one needs the per-run layout, made only by `moe-harness convert DIR`
(`convert_legacy`; the old files are kept under legacy/), which refuses results/reference.
`export()` writes the single-file tables for people who want one file, never into a results
folder's own tables.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TABLES = ("runs", "steps", "loads")
COMPLETE = ("ok", "diverged")  # statuses that count as done; failed runs are retried


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write) -> None:
    """Write through `write(tmp)` to a hidden temporary beside `path`, then rename it into place,
    with the mode a plain open() would give (0666 less the umask), not mkstemp's private 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))


def run_files(folder: Path, table: str) -> list[Path]:
    """The complete files of one table (hidden temporaries of a write in progress are skipped)."""
    directory = Path(folder) / table
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


def has_results(folder: Path) -> bool:
    folder = Path(folder)
    return bool(run_files(folder, "runs")) or (folder / "runs.parquet").is_file()


def is_single_file(folder: Path) -> bool:
    """Whether `folder` holds single-file tables (runs.parquet) and no per-run runs/ folder."""
    folder = Path(folder)
    return (folder / "runs.parquet").is_file() and not (folder / "runs").is_dir()


def is_reference(path: Path) -> bool:
    """Whether `path` lies inside a repository's results/reference/ (shipped studies: never written
    by a command that reads them)."""
    parts = Path(path).resolve().parts
    return any(a == "results" and b == "reference" for a, b in zip(parts, parts[1:]))


def read(folder: Path, table: str = "runs", columns: list[str] | None = None) -> pd.DataFrame:
    """One table of a results folder as a DataFrame; columns only some runs have are filled with nulls.
    Reads only: a single-file folder is read as it is, never converted."""
    folder = Path(folder)
    files = [folder / f"{table}.parquet"] if is_single_file(folder) else run_files(folder, table)
    files = [path for path in files if path.is_file()]
    with ThreadPoolExecutor(max_workers=8) as pool:  # NOTE: parquet decoding releases the GIL
        parts = [p for p in pool.map(lambda path: _read_file(path, columns), files) if p]
    if not parts:
        return pd.DataFrame(columns=columns or [])
    merged = pa.concat_tables(parts, promote_options="permissive")
    return merged.to_pandas()


def _read_file(path: Path, columns: list[str] | None) -> pa.Table | None:
    try:
        if columns is None:
            return pq.read_table(path)
        present = set(pq.read_schema(path).names)
        return pq.read_table(path, columns=[c for c in columns if c in present])
    except (OSError, pa.ArrowInvalid) as err:  # a file cut short by a dead filesystem: skip it, say so
        print(f"moe-harness: skipping unreadable result file {path} ({err})", file=sys.stderr)
        return None


def complete_run_ids(folder: Path) -> set[str]:
    runs = read(folder, "runs", columns=["run_id", "status"])
    if runs.empty:
        return set()
    return set(runs.loc[runs["status"].isin(COMPLETE), "run_id"])


def is_complete(folder: Path, run_id: str) -> bool:
    """Whether `run_id`'s runs/ file is there with a complete status (reads that one file only)."""
    path = Path(folder) / "runs" / f"{run_id}.parquet"
    if not path.is_file():
        return False
    part = _read_file(path, ["status"])
    return part is not None and part.num_rows > 0 and part.column("status")[0].as_py() in COMPLETE


def append_run(folder: Path, result, key: str | None = None) -> None:
    """Write one run's steps, loads and record, in that order (the record marks completion)."""
    folder = Path(folder)
    check_appendable(folder)
    key = key or result.record["run_id"]
    for table, rows in (("steps", result.steps), ("loads", result.loads), ("runs", [result.record])):
        (folder / table).mkdir(parents=True, exist_ok=True)
        path = folder / table / f"{key}.parquet"
        if rows:
            write_parquet_atomic(path, pd.DataFrame(rows))
        else:  # NOTE: a rerun of a failed run must not leave the old attempt's rows behind
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def check_appendable(folder: Path) -> None:
    """ValueError unless runs can be added to `folder` (new, or in the per-run layout)."""
    if is_single_file(folder):
        raise ValueError(f"{folder} holds single-file tables (runs.parquet: moe-harness 0.1, an export or shipped "
                         f"data), to which runs cannot be added; run `moe-harness convert {folder}` once to split "
                         "them into one file per run (the old files are kept in legacy/), or give another --out")


def convert_legacy(folder: Path) -> bool:
    """Split a single-file folder into per-run files (`moe-harness convert`); the old files move to
    legacy/. False when there is nothing to convert; never inside results/reference."""
    folder = Path(folder)
    if not is_single_file(folder):
        return False
    if is_reference(folder):
        raise ValueError(f"{folder} is shipped reference data (results/reference): it is read as it is and never "
                         "converted; copy it elsewhere to add runs to it")
    print(f"moe-harness: converting {folder} from single-file tables to one file per run "
          f"(the old files are kept in {folder / 'legacy'})", file=sys.stderr)
    frames = {t: pd.read_parquet(folder / f"{t}.parquet") for t in TABLES if (folder / f"{t}.parquet").is_file()}
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".convert."))
    for table in ("steps", "loads", "runs"):  # runs last: a reader stopped midway sees nothing half-done
        (staging / table).mkdir()
        frame = frames.get(table)
        if frame is None:
            continue
        for run_id, part in frame.groupby("run_id", sort=False):
            part.reset_index(drop=True).to_parquet(staging / table / f"{run_id}.parquet", index=False)
    (folder / "legacy").mkdir(exist_ok=True)
    for table in TABLES:
        with contextlib.suppress(FileExistsError, OSError):
            os.replace(staging / table, folder / table)
    for table in TABLES:
        if (folder / f"{table}.parquet").is_file():
            os.replace(folder / f"{table}.parquet", folder / "legacy" / f"{table}.parquet")
    shutil.rmtree(staging, ignore_errors=True)
    return True


def export(folder: Path, dest: Path | None = None) -> list[Path]:
    """Single-file runs.parquet / steps.parquet / loads.parquet of a folder, in `dest` (default folder/export)."""
    folder = Path(folder)
    dest = Path(dest) if dest else folder / "export"
    check_export_destination(folder, dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # FileExistsError: a file of that name
        what = "is a file, not a folder" if dest.exists() else f"cannot be created ({err.strerror})"
        raise ValueError(f"--to {str(dest)!r} {what}; name a folder (new or existing) for the exported tables") from err
    paths = []
    for table in TABLES:
        path = dest / f"{table}.parquet"
        write_parquet_atomic(path, read(folder, table))
        paths.append(path)
    return paths


def check_export_destination(folder: Path, dest: Path) -> None:
    """ValueError when `dest` would put single-file tables where a results folder reads its own:
    the folder itself, inside any results folder's runs/, steps/ or loads/, or another results folder."""
    source, target = Path(folder).resolve(), Path(dest).resolve()
    why = ""
    if target == source:
        why = "is the results folder itself"
    elif (target / "runs").is_dir() or (target / "runs.parquet").is_file():
        why = "is a results folder (it has runs)"
    else:
        for parent in (target, *target.parents):
            if parent.name in TABLES and (parent.parent / "runs").is_dir():
                why = f"is inside the table folder {parent}, where every file is read as a run's rows"
                break
    if why:
        raise ValueError(f"--to {str(dest)!r} {why}: the exported files would be read back as results; name a "
                         f"folder outside the tables (default: {Path(folder) / 'export'})")
