"""What the CUDA path does, exercised on CPU where CI has no GPU: bf16 autocast for a whole
training step, the grouped_mm experts, torch.compile, and (on CUDA only) no host sync."""

import contextlib
import functools
import sys

import pytest
import torch
import torch._dynamo as dynamo

from harness.suites.keys import resolve
from harness.engine.model import MoETransformer
from harness.routing import get_router_config, router_names
from harness.engine.train import Trainer, corpus_for, run
from tests.conftest import TINY_BASE

GPU_LIKE = {"model.expert_impl": "grouped_mm", "train.dtype": "bfloat16", "model.expert_hidden": 64}


@pytest.mark.parametrize("router", ["softmax_topk", "loss_free", "deepseek_v3", "dynamic_k"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_training_run_on_the_grouped_mm_path(tiny_settings, router, dtype):
    result = run(resolve({**tiny_settings, **GPU_LIKE, "router": router, "train.dtype": dtype}))
    assert result.record["status"] == "ok" and 0 < result.record["val_loss"] < 6


def test_grouped_mm_backward_always_gets_a_contiguous_output_gradient(tiny_settings, monkeypatch):
    real, seen = torch._grouped_mm, []

    def checked(*args, **kwargs):
        out = real(*args, **kwargs)
        if out.requires_grad:
            out.register_hook(lambda grad: seen.append(grad.is_contiguous()))
        return out

    monkeypatch.setattr(torch, "_grouped_mm", checked)
    cfg = resolve({**tiny_settings, **GPU_LIKE, "router": "loss_free"})
    trainer = Trainer(cfg, corpus_for(cfg), progress=False, on_eval=None)
    trainer.train_step(0)
    assert seen and all(seen), seen


@pytest.mark.slow
def test_top_k_routers_compile_to_one_graph_on_the_grouped_mm_path():
    """No graph break in the top-k path: static counts, no data-dependent Python reads. (Capacity
    dropping keeps a data-dependent number of assignments, so it breaks, like threshold selection, and
    so do zero-computation experts, which take a data-dependent share of the k.)"""
    for name in [n for n in router_names() if get_router_config(n).selection == "topk"
                 and not get_router_config(n).capacity_factor
                 and not get_router_config(n).controller.zero_experts(get_router_config(n))]:
        cfg = resolve({"router": name, "train.device": "cpu", **GPU_LIKE})
        torch.manual_seed(0)
        model = MoETransformer(cfg.model, cfg.router_cfg)
        x = torch.randint(0, 256, (2, 64))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)  # the first forward sets a quantile bias up (once, eagerly, as in training)
            dynamo.reset()
            explained = dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, (name, [str(b.reason)[:200] for b in explained.break_reasons])


@pytest.mark.slow
@pytest.mark.parametrize("gpu_like", [True, False])
def test_train_compile_runs_a_whole_training_run(tiny_settings, monkeypatch, gpu_like):
    # NOTE: aot_eager traces exactly what inductor would (dynamo + AOT autograd) without its
    # minutes of C++ code generation on a 2-core CPU; the README gives the inductor timing
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    settings = {**tiny_settings, "router": "loss_free", "train.compile": True, **(GPU_LIKE if gpu_like else {})}
    eager = run(resolve({**settings, "train.compile": False}))
    compiled = run(resolve(settings))
    assert compiled.record["status"] == "ok"
    assert compiled.record["val_loss"] == pytest.approx(eager.record["val_loss"], abs=5e-2 if gpu_like else 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("router", ["softmax_topk", "loss_free", "deepseek_v3"])
def test_a_cuda_training_step_never_syncs_the_host(router):
    """The only sync of a top-k step is the per-step loss read, made outside train_step."""
    cfg = resolve({**TINY_BASE, **GPU_LIKE, "router": router, "train.device": "cuda", "model.expert_hidden": 64})
    trainer = Trainer(cfg, corpus_for(cfg), progress=False, on_eval=None)
    trainer.train_step(0)  # warm-up: allocator, lazy init
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with contextlib.nullcontext():
            trainer.train_step(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


@contextlib.contextmanager
def harness_host_reads_raise():
    """Every read of a tensor's value on the host made by harness code raises: on CUDA each is a
    sync. The data path (harness/data: batches drawn by a CPU generator) and torch's own code are let
    through (Adam reads its CPU step counter)."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def guarded(name):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "/harness/" in caller and "/harness/data/" not in caller:
                raise AssertionError(f"Tensor.{name} read on the host from {caller}:{sys._getframe(1).f_lineno}")
            return saved[name](self, *args, **kwargs)
        return read

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, guarded(name))
        yield
    finally:
        for name, read in saved.items():
            setattr(torch.Tensor, name, read)


@pytest.mark.parametrize("router", [n for n in router_names() if get_router_config(n).selection != "threshold"])
def test_no_training_step_reads_a_tensor_on_the_host_early_or_late_in_a_run(router):
    """The CPU stand-in for CUDA's sync check, at step 2 and in the run's second half (where the bias
    dynamics start comparing update signs). Threshold selection syncs by design: its number of
    assignments is data-dependent (nonzero)."""
    cfg = resolve({**TINY_BASE, **GPU_LIKE, "router": router, "train.steps": 8, "train.grad_accum": 2})
    trainer = Trainer(cfg, corpus_for(cfg), progress=False, on_eval=None)
    for step in range(7):
        if step in (1, 6):
            with harness_host_reads_raise():
                trainer.train_step(step)
        else:
            trainer.train_step(step)
    assert len(trainer.metrics.costs) == 7 > cfg.train.steps // 2


@pytest.mark.slow
def test_the_prepared_gpu_probe_runs_clean_in_dry_mode(tmp_path):
    """tests/gpu_probe.py is the one command a lent GPU runs; its sections must keep working as the
    code changes, and --dry runs them at tiny shapes on CPU."""
    import json
    import subprocess
    from pathlib import Path

    probe = Path(__file__).with_name("gpu_probe.py")
    done = subprocess.run([sys.executable, str(probe), "--dry", "--out", str(tmp_path), "--budget-s", "400"],
                          capture_output=True, text=True, timeout=600, cwd=probe.parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    sections = json.loads((tmp_path / "gpu_probe.json").read_text())
    assert {"env", "syncs", "router", "experts", "family", "compile"} <= set(sections)
    assert not {name: s["error"] for name, s in sections.items() if "error" in s}
