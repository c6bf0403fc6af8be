"""The training recipe every run shares: learning-rate schedule, autocast and AdamW."""

from __future__ import annotations

import contextlib
import math

import torch

from harness.engine.config import RunConfig


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr_ratio x cfg.lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def autocast_for(cfg: RunConfig):
    device, dtype = cfg.train.device, cfg.train.dtype
    if dtype == "bfloat16" or (dtype == "auto" and device == "cuda"):
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95), fused=cfg.train.device == "cuda")
