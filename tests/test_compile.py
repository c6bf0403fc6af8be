"""`train.compile = true` (issue 33): after warm-up a compiled run compiles nothing new, for every
router of the registry, the `small` proxy and each family; it trains to the eager run's losses; and
a plugin rule with data-dependent Python control flow still runs, with one line naming where the
forward ran eager, printed through the CLI."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from harness import tables
from harness.engine.compile import WARMUP_STEPS
from harness.suites.keys import resolve
from harness.engine.families import FAMILIES
from harness.engine.train import run
from harness.routing import router_names
from tests.conftest import TINY_BASE
from tests.test_plugins import suite_text

STEPS = {"train.steps": WARMUP_STEPS + 10, "train.eval_every": 5, "train.log_every": 1}

# NOTE: a plugin of our own, not a shipped rule: a capacity drop written as a Python loop over the
# experts' counts, the kind of code that made a compiled run recompile every step
PYTHON_LOOP_RULE = textwrap.dedent('''
    from harness.routing.selection import register_selection
    from harness.routing.selection.topk import TopK


    @register_selection("toy_python_cap")
    class ToyPythonCap(TopK):
        """Top-k, then each expert over twice its share drops its lowest tokens."""

        variable_k = True

        def select(self, biased_TE, top_k, cfg):
            _, _, mask_TE = super().select(biased_TE, top_k, cfg)
            cap = 2 * top_k * biased_TE.shape[0] // biased_TE.shape[1]
            for e, n in enumerate(mask_TE.sum(0).tolist()):
                if n > cap:
                    rows = mask_TE[:, e].nonzero().squeeze(1)
                    mask_TE[rows[biased_TE[rows, e].argsort()[: n - cap]], e] = False
            token_idx_A, expert_idx_A = mask_TE.nonzero(as_tuple=True)
            return token_idx_A, expert_idx_A, mask_TE
''')


@pytest.fixture
def aot_eager(monkeypatch):
    # NOTE: aot_eager traces what inductor would (Dynamo + AOT autograd: the same graphs, breaks and
    # recompiles) without inductor's code generation, minutes on a 2-core CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()


def compiled_and_eager(settings: dict):
    compiled = run(resolve({**settings, "train.compile": True}))
    eager = run(resolve({**settings, "train.compile": False}))
    return compiled, eager


def assert_same_training(compiled, eager, tol: float) -> None:
    assert compiled.record["status"] == eager.record["status"] == "ok"
    for a, b in zip(compiled.steps, eager.steps, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=tol), (a["step"], a["train_loss"], b["train_loss"])
    assert compiled.record["val_loss"] == pytest.approx(eager.record["val_loss"], abs=tol)


@pytest.mark.parametrize("router", ["loss_free", "dynamic_k"])
def test_a_compiled_tiny_run_never_recompiles_after_warm_up_and_trains_like_eager(aot_eager, router):
    compiled, eager = compiled_and_eager({**TINY_BASE, **STEPS, "router": router})
    assert compiled.record["compile_graphs"] >= 1 and compiled.record["compile_recompiles"] == 0
    assert eager.record["compile_graphs"] == 0
    assert_same_training(compiled, eager, tol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("router", router_names())
def test_every_router_compiles_once(aot_eager, router):
    result = run(resolve({**TINY_BASE, **STEPS, "router": router, "train.compile": True}))
    assert result.record["status"] == "ok" and result.record["compile_recompiles"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES.names())
@pytest.mark.parametrize("router", ["loss_free", "dynamic_k"])
def test_a_compiled_family_never_recompiles_after_warm_up(aot_eager, family, router):
    pytest.importorskip("transformers")
    compiled, eager = compiled_and_eager({**TINY_BASE, **STEPS, "router": router, "model.family": family})
    assert compiled.record["compile_recompiles"] == 0
    assert_same_training(compiled, eager, tol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("router", ["loss_free", "expert_threshold"])
def test_a_compiled_small_run_never_recompiles_after_warm_up(aot_eager, router):
    settings = {"size": "small", **STEPS, "train.batch_size": 4, "train.eval_batches": 2, "router": router}
    result = run(resolve({**settings, "train.compile": True}))
    assert result.record["status"] == "ok" and result.record["compile_recompiles"] == 0


def test_a_plugin_with_python_control_flow_runs_compiled_and_says_what_ran_eager(tmp_path):
    """Through the CLI, with inductor (what a user gets): the run ends, with one line naming the
    plugin's lines that ran eager and none of Dynamo's own tracebacks."""
    (tmp_path / "python_cap.py").write_text(PYTHON_LOOP_RULE)
    suite = tmp_path / "plug.toml"
    suite.write_text(suite_text("python_cap.py", [{"router": "softmax_topk", "router.selection": "toy_python_cap"}],
                                {**STEPS, "train.compile": True}))
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(tmp_path),
                           "--no-progress"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("train.compile:")]
    assert len(lines) == 1 and "python_cap.py:" in lines[0] and "ran eager" in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Graph break" not in done.stderr, done.stderr[-3000:]
    row = tables.read(tmp_path / "plug", "runs").iloc[0]
    assert row["status"] == "ok" and row["compile_recompiles"] == 0


def test_the_dense_yardstick_is_compiled_when_the_run_is(monkeypatch):
    """throughput_ratio compares like with like: a compiled run against a compiled dense twin."""
    from harness.data.corpus import load_corpus
    from harness.engine.throughput import DenseProbe

    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append(module)
        return lambda *args: module(*args)

    monkeypatch.setattr(torch, "compile", fake_compile)
    for flag in (False, True):
        cfg = resolve({**TINY_BASE, "router": "loss_free", "train.compile": flag})
        probe = DenseProbe(cfg, load_corpus(cfg.data.source, cfg.data.val_fraction, cfg.data.tokenizer),
                           torch.device("cpu"))
        assert (probe.forward is not probe.model) == flag
    assert compiled == [probe.model]


def test_a_compiled_run_keeps_its_thread_count_when_other_processes_load_the_machine(aot_eager, monkeypatch):
    """Dynamo guards its graphs on torch's thread count: the governor, which cuts threads when other
    processes take the cores, would make a compiled run compile every graph again mid-run (seen as a
    flaky recompile in CI). Under a simulated full load an eager run cuts its threads, a compiled one
    keeps them and compiles nothing after warm-up."""
    from harness.engine import threads

    clock = iter(range(10**9))
    monkeypatch.setattr(threads, "busy_seconds", lambda: next(clock) * 1e6)  # every core busy elsewhere
    monkeypatch.setattr(threads, "INTERVAL_S", 0.0)
    monkeypatch.delenv(threads.ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        eager = run(resolve({**TINY_BASE, **STEPS, "router": "loss_free"})).record
        compiled = run(resolve({**TINY_BASE, **STEPS, "router": "loss_free", "train.compile": True})).record
    finally:
        torch.set_num_threads(before)
    assert eager["cpu_thread_changes"] > 0 and eager["cpu_threads_min"] == 1  # the simulated load is felt
    assert compiled["cpu_thread_changes"] == 0 and compiled["cpu_threads_min"] == 2
    assert compiled["compile_recompiles"] == 0
