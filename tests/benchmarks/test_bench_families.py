"""Speed of the transformers families as the proxy (issue 28): each family's training step against
the harness proxy of the same size name (the same active width, depth, experts and k), and the
harness router inside a family's MoE block against the family's own router.

The block goal: a block whose gate is the harness Router (configured as the family's own routing)
takes at most 5 % longer than the untouched block, so a suite's throughput differences between
methods are the methods', not the swap's. The gate rows give each router's share of its block
(gate alone / whole block).

    python -m pytest tests/benchmarks/test_bench_families.py -o addopts="" --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.engine.families.resolve import family_router
from harness.suites.keys import resolve
from harness.engine.families import FAMILIES, FamilyLM, sparse_blocks, transformers_module
from harness.engine.model import model_config
from harness.engine.train import Trainer, corpus_for
from tests.benchmarks.conftest import fwd_bwd, paired_ratio, tag

pytest.importorskip("transformers", reason="install the transformers extra: pip install -e '.[transformers]'")

SIZE = "small"
BLOCK_GOAL = 1.05


@pytest.mark.benchmark(group="family_step")
@pytest.mark.parametrize("family", ["harness", *FAMILIES.names()])
def test_family_train_step(benchmark, device, family):
    cfg = resolve({"size": SIZE, "router": "loss_free", "model.family": family, "train.device": device.type})
    trainer = Trainer(cfg, corpus_for(cfg), progress=False, on_eval=None)
    lm, _, counts_LE = benchmark(lambda: trainer.train_step(0))
    params = sum(p.numel() for p in trainer.model.parameters())
    tag(benchmark, f"train_step_{SIZE}@{family}", vs=None if family == "harness" else f"train_step_{SIZE}@harness",
        note=f"{params / 1e6:.2f} M parameters, {len(trainer.layers)} MoE layers")
    assert torch.isfinite(lm) and int(counts_LE.sum()) > 0


class Outputs(nn.Module):
    """A block or gate as fwd_bwd wants it: its floating outputs as one tensor."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        out = self.module(x)
        parts = out if isinstance(out, tuple) else (out,)
        return torch.cat([t.flatten() for t in parts if torch.is_tensor(t) and t.is_floating_point()])


def block_of(family: str, router: str, device) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """The first routed MoE block of the family's `small` model (DeepSeek-V4's hash layers route by
    token id, not by a gate, and are passed over), with the harness router written as the family's
    own routing ("harness") or the family's gate untouched ("native"); its gate; and its input."""
    model, spec = model_config(SIZE, family=family), FAMILIES.lookup(family)
    torch.manual_seed(0)
    if router == "harness":
        lm = FamilyLM(model, family_router("native", model, {})).hf
    else:
        transformers = transformers_module()
        lm = getattr(transformers, spec.model_class)(getattr(transformers, spec.config_class)(**spec.hf_config(model)))
        spec.prepare(lm, model)
    block = [b for b in sparse_blocks(lm, spec.gate_name) if not spec.keeps_own(b)][0].float().to(device)
    gate = getattr(block, spec.gate_name)
    if router == "harness":
        gate.seq_len = model.seq_len
    x = torch.randn(16, model.seq_len, model.dim, device=device)
    return block, gate, x


@pytest.mark.benchmark(group="family_block")
@pytest.mark.parametrize("router", ["native", "harness"])
@pytest.mark.parametrize("family", FAMILIES.names())  # NOTE: a family's two sides timed one after the other
def test_family_moe_block(benchmark, device, family, router):
    block, _, x = block_of(family, router, device)
    step = fwd_bwd(Outputs(block), x)
    out = benchmark(step)
    # NOTE: the goal's ratio from the two blocks timed in alternation (paired_ratio), not from two
    # medians a minute apart: on a shared VM that ratio moved by up to 0.2 between sessions
    paired = paired_ratio(step, fwd_bwd(Outputs(block_of(family, "native", device)[0]), x)) \
        if router == "harness" else {}
    tag(benchmark, f"moe_block@{family}[{router}]",
        vs=f"moe_block@{family}[native]" if router == "harness" else None,
        target=BLOCK_GOAL if router == "harness" else None, profile=step, **paired)
    assert torch.isfinite(out).all()


@pytest.mark.benchmark(group="family_gate")
@pytest.mark.parametrize("router", ["native", "harness"])
@pytest.mark.parametrize("family", FAMILIES.names())  # NOTE: a family's two sides timed one after the other
def test_family_gate_share(benchmark, device, family, router):
    _, gate, x = block_of(family, router, device)
    out = benchmark(fwd_bwd(Outputs(gate), x.reshape(-1, x.shape[-1])))
    tag(benchmark, f"gate@{family}[{router}]", vs=f"moe_block@{family}[{router}]",
        note="the ratio is the gate's share of its block")
    assert torch.isfinite(out).all()
