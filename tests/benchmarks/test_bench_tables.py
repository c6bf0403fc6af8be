"""Cost of the results folder as it grows (issue 10): appending a run must cost the same at 10
runs as at 1,000, and reading 1,000 runs back must stay a matter of seconds.

A synthetic run has the shape of a `small` ablation run: one runs row of about 90 columns,
60 step rows and 2 x 4 x 16 load rows per evaluation, 3 evaluations.
"""

from __future__ import annotations

import itertools

import pytest

from harness import tables
from harness.engine.train import RunResult
from tests.benchmarks.conftest import tag

COUNTER = itertools.count()


def synthetic_run() -> RunResult:
    i = next(COUNTER)
    run_id = f"{i:012x}"
    record = {"run_id": run_id, "status": "ok", "variant": f"v{i % 11}", "seed": i % 3, "val_loss": 1.4 + i * 1e-6,
              **{f"metric_{j}": float(j) for j in range(85)}}
    steps = [{"run_id": run_id, "step": s, "train_loss": 2.0, "lr": 1e-3, "maxvio_batch": 0.3} for s in range(60)]
    loads = [{"run_id": run_id, "step": s, "layer": layer, "expert": e, "scope": scope, "load": 1 / 16}
             for s in (200, 400, 600) for layer in range(4) for e in range(16) for scope in ("batch", "global")]
    return RunResult(record, steps, loads)


def fill(folder, n: int) -> None:
    for _ in range(n):
        tables.append_run(folder, synthetic_run())


@pytest.mark.parametrize("existing", [10, 1000])
def test_append_one_run(benchmark, tmp_path, existing):
    fill(tmp_path, existing)
    benchmark.pedantic(lambda: tables.append_run(tmp_path, synthetic_run()), rounds=20, warmup_rounds=2)
    tag(benchmark, f"append a run to a folder of {existing} runs", vs="append a run to a folder of 10 runs"
        if existing != 10 else None, target=1.5 if existing != 10 else None)
    assert len(tables.run_files(tmp_path, "runs")) == existing + 22


def test_read_1000_runs(benchmark, tmp_path):
    fill(tmp_path, 1000)
    runs = benchmark.pedantic(lambda: tables.read(tmp_path, "runs"), rounds=3, warmup_rounds=1)
    tag(benchmark, "read runs/ of 1000 runs")
    steps = tables.read(tmp_path, "steps")
    assert len(runs) == 1000 and len(steps) == 60_000
