"""The peak-memory estimate made before a CUDA run starts, and the refusal of a run that cannot fit
(exercised on CPU with the device's free memory stubbed)."""

import pytest
import torch

from harness.engine import memory
from harness.suites.keys import resolve
from tests.conftest import TINY_BASE


def config(**settings):
    return resolve({**TINY_BASE, "router": "loss_free", **settings})


def test_the_estimate_holds_weights_and_adam_and_grows_with_the_micro_batch():
    small, large = (memory.estimate_peak_bytes(config(**{"train.batch_size": b})) for b in (4, 32))
    params = sum(p.numel() for p in memory._param_shapes(config()))
    assert small > 12 * params  # float32 weights and Adam's two moments at least
    assert large > small
    assert memory.estimate_peak_bytes(config(**{"train.batch_size": 4}), world_size=2) == small + 4 * params


@pytest.mark.parametrize("router", ["dynamic_k", "expert_choice", "expert_threshold"])
def test_a_router_with_data_dependent_counts_is_estimated_as_top_k(router):
    assert memory.estimate_peak_bytes(config(router=router)) == memory.estimate_peak_bytes(
        config(router="softmax_topk"))


def test_a_family_is_not_estimated():
    assert memory.estimate_peak_bytes(config(**{"model.family": "qwen3_moe"})) is None


def free_memory(monkeypatch, free_bytes):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 80 * memory.GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)


def test_a_run_that_cannot_fit_is_refused_naming_what_to_change(monkeypatch):
    cfg = config(**{"train.batch_size": 32})
    need = memory.estimate_peak_bytes(cfg)
    free_memory(monkeypatch, need // 2)
    with pytest.raises(memory.RunWontFit, match=r"train\.batch_size = 32.*cannot fit.*about 1[56] may fit"):
        memory.check_fits(cfg, torch.device("cuda"))


def test_a_run_near_the_limit_starts_with_a_warning_and_one_that_fits_says_its_estimate(monkeypatch):
    cfg = config()
    need = memory.estimate_peak_bytes(cfg)
    free_memory(monkeypatch, int(need * 1.2))
    with pytest.warns(UserWarning, match="may run out of memory"):
        memory.check_fits(cfg, torch.device("cuda"))
    free_memory(monkeypatch, need * 10)
    assert "estimated peak memory" in memory.check_fits(cfg, torch.device("cuda"))


def test_cpu_runs_are_not_checked():
    assert memory.check_fits(config(), torch.device("cpu")) is None
