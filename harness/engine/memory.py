"""A run's peak device memory, estimated before it starts, and the refusal of a run that cannot fit.

The estimate traces two optimizer steps of one micro-batch on fake tensors (no memory, no device:
`FakeTensorMode`) under PyTorch's `MemTracker`, which counts what is alive at the peak: weights,
gradients, Adam's two moments, saved activations and temporaries. Under DDP a rank also holds its
gradient buckets (one more float32 copy of the weights). The count is of live tensors only: the
allocator's rounding and fragmentation and the kernels' workspaces come on top (on CPU, at size
`base`, the process grew 1.46x the estimate), so the estimate is a lower bound. A run is refused
only when even the lower bound exceeds what the device has free, and warned when it exceeds two
thirds of that.

A router whose number of assignments depends on the data (threshold selection), or that reads a
value on the host while it routes, cannot be traced on fake tensors; it is estimated as softmax
top-k at its `model.top_k` (a threshold router's mean k). A transformers family is
built by transformers, whose conversions do not run on fake tensors: no estimate (None).
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F

from harness.engine.config import RunConfig

GIB = 2**30
HEADROOM = 2 / 3  # NOTE: above this share of the free memory, what the estimate leaves out may not fit


class RunWontFit(RuntimeError):
    """The run's estimated peak memory exceeds what its device has free."""


def estimate_peak_bytes(cfg: RunConfig, world_size: int = 1) -> int | None:
    """Bytes one rank holds at the peak of a training step of `cfg` (None: a family, not estimated)."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    if cfg.model.family_class is not None:
        return None
    try:
        peak = _traced_peak(cfg)
    except (DataDependentOutputException, DynamicOutputShapeException):  # NOTE: a data-dependent count or a host read: estimate as top-k
        from harness.routing import get_router_config

        peak = _traced_peak(dataclasses.replace(cfg, router_cfg=get_router_config("softmax_topk")))
    params = sum(p.numel() for p in _param_shapes(cfg))
    return peak + (4 * params if world_size > 1 else 0)


def _param_shapes(cfg: RunConfig):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from harness.engine.model import build_model

    with FakeTensorMode():
        return list(build_model(cfg.model, cfg.router_cfg).parameters())


def _traced_peak(cfg: RunConfig) -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from harness.engine.model import build_model
    from harness.engine.optim import build_optimizer

    bf16 = cfg.train.dtype == "bfloat16" or (cfg.train.dtype == "auto" and cfg.train.device == "cuda")
    tc = cfg.train
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build_model(cfg.model, cfg.router_cfg)
        optimizer = build_optimizer(model, cfg)
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            for _ in range(2):  # NOTE: the second step holds Adam's moments beside the activations
                x = torch.randint(0, cfg.model.vocab_size, (tc.batch_size, cfg.model.seq_len))
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x)
                F.cross_entropy(logits.float().flatten(0, 1), x.flatten()).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                tracker.reset_mod_stats()
            peak = tracker.get_tracker_snapshot("peak")
    return int(max(stats["Total"] for stats in peak.values()))


def check_fits(cfg: RunConfig, device: torch.device, world_size: int = 1) -> str | None:
    """On CUDA: raise RunWontFit when the estimate exceeds the device's free memory (what this
    process holds counts as free); return the line that says the estimate (None elsewhere)."""
    if device.type != "cuda":
        return None
    need = estimate_peak_bytes(cfg, world_size)
    if need is None:
        return None
    free, total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device)
    line = (f"{cfg.variant}: estimated peak memory {need / GIB:.1f} GiB per rank at train.batch_size = "
            f"{cfg.train.batch_size}; {free / GIB:.1f} of {total / GIB:.1f} GiB free on {device}")
    if need > free:
        fits = max(1, int(cfg.train.batch_size * free / need))
        raise RunWontFit(f"{line}: it cannot fit. Lower train.batch_size (about {fits} may fit; raise "
                         "train.grad_accum to keep the tokens per step), use a smaller size, or a device "
                         "with more free memory (another process may hold this one)")
    if need > HEADROOM * free:
        warnings.warn(f"{line}: the estimate counts live tensors only (the allocator adds to it); it may run "
                      "out of memory", stacklevel=2)
    return line
