"""Quantile balancing (Su, MoE series parts 6-7): an expert that should see a share k/n of the
tokens fires above its own (1 - k/n) score quantile, so the bias is set to minus that quantile
and smoothed across steps, b <- m b + (1 - m) b_new (m = qb_ema). With top-k each token keeps k
experts; with threshold selection each expert fires on about its quota (causal expert choice)."""

from __future__ import annotations

import torch

from harness import distributed
from harness.routing.controllers import BiasController, register_controller


def expert_quantiles(scores_TE: torch.Tensor, top_k: int) -> torch.Tensor:
    """[E] each expert's (1 - k/n) quantile of its scores over these tokens."""
    return torch.quantile(scores_TE.detach().float(), 1 - top_k / scores_TE.shape[-1], dim=0)


@register_controller("quantile")
class Quantile(BiasController):
    fields = ("qb_ema", "bias_freeze_frac")
    selections = ("topk", "threshold")
    sets_budget = True
    init_from_scores = True
    observes = True

    def __init__(self, num_experts, top_k, cfg):
        super().__init__(num_experts, top_k, cfg)
        # the sum of this step's per-micro-batch quantiles, and how many
        self.register_buffer("step_quantile", torch.zeros(num_experts + 1), persistent=False)

    def initial_bias(self, scores_TE):
        return -expert_quantiles(scores_TE, self.top_k)

    def observe(self, scores_TE):
        self.step_quantile[:-1] += expert_quantiles(scores_TE, self.top_k)
        self.step_quantile[-1] += 1

    def update(self, bias_E, counts_E, num_tokens):
        step_quantile = distributed.all_sum_(self.step_quantile.clone())
        self.step_quantile.zero_()
        target_E = -step_quantile[:-1] / step_quantile[-1].clamp_min(1)  # the step's mean quantile
        return bias_E * self.cfg.qb_ema + (1 - self.cfg.qb_ema) * target_E
