"""`train.compile = true` against eager: one optimizer step of the trainer (forward, backward,
clip, AdamW, balancing update) at each proxy size, after the compiled run's warm-up. Goal (issue
33): compiled at least as fast as eager at every size; where it is not, the default stays eager
and the page says so with these figures."""

from __future__ import annotations

import pytest
import torch

from harness.engine.compile import WARMUP_STEPS
from harness.suites.keys import resolve
from harness.engine.train import Trainer, corpus_for
from tests.benchmarks.conftest import PROFILES, op_profile, paired_ratio, profile_note, sync, tag


def warm_step(device, size: str, compiled: bool):
    """One trainer step of `size` as a closure, after the warm-up steps (a compiled run's compile)."""
    cfg = resolve({"size": size, "router": "loss_free", "train.device": device.type, "train.compile": compiled})
    trainer = Trainer(cfg, corpus_for(cfg), progress=False, on_eval=None)
    steps = iter(range(10**9))

    def step():
        lm, _, _ = trainer.train_step(next(steps))
        sync(device)
        return lm

    for _ in range(WARMUP_STEPS + 1):  # NOTE: compiles (or warms the allocator) outside the timing
        step()
    step.tokens = trainer.tokens_per_step
    return step


@pytest.mark.benchmark(group="compile")
@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("size", ["tiny", "small", "base"])  # NOTE: a size's two sides timed one after the other
def test_train_step_compiled_against_eager(benchmark, device, size, mode):
    step = warm_step(device, size, mode == "compiled")
    loss = benchmark.pedantic(step, rounds=10 if size == "base" else 20, warmup_rounds=1)
    key, eager = f"train_step_{size}[{mode}]", f"train_step_{size}[eager]"
    profile = op_profile(step, calls=1 if size == "base" else 5)  # NOTE: after the timed rounds
    note, paired = f"{step.tokens} tokens per step", {}
    if mode == "compiled" and eager in PROFILES:
        note += "; " + profile_note(profile, PROFILES[eager], "eager")
        if size != "base":  # NOTE: base's eager twin would add its warm-up and pairs, minutes at 15 s a step
            paired = paired_ratio(step, warm_step(device, size, False))
    tag(benchmark, key, vs=eager if mode == "compiled" else None, target=1.0 if mode == "compiled" else None,
        profile=profile, note=note, **paired)
    assert torch.isfinite(loss)
