"""Quantile balancing (Su, MoE series parts 6-7): an expert that should see a share k/n of the
tokens fires above its own (1 - k/n) score quantile, so the bias is set to minus that quantile
and smoothed across steps, b <- m b + (1 - m) b_new (m = qb_ema). With top-k each token keeps k
experts; with threshold selection each expert fires on about its quota (causal expert choice).

The quantile is taken over the whole optimizer step: every micro-batch's scores go into a
histogram per expert (`QB_BINS` bins over [0, 1], the range of sigmoid and softmax scores), the
histograms of all ranks are summed with one all-reduce, and the quantile is read off the pooled
histogram, interpolated within its bin (so within one bin width, 1/1024, of the exact quantile of
the pooled scores). Production frameworks pool the same way (Megatron, TransformerEngine).
"""

from __future__ import annotations

import torch

from harness import distributed
from harness.routing.controllers.base import BIAS_FREEZE, BiasController, register_controller
from harness.routing.params import Param

QB_BINS = 1024  # histogram bins over [0, 1]: the pooled quantile is exact within 1/QB_BINS


def expert_quantiles(scores_TE: torch.Tensor, top_k: int) -> torch.Tensor:
    """[E] each expert's exact (1 - k/n) quantile of its scores over these tokens."""
    return torch.quantile(scores_TE.detach().float(), 1 - top_k / scores_TE.shape[-1], dim=0)


def histogram_add_(hist_EB: torch.Tensor, scores_TE: torch.Tensor) -> None:
    """Add each expert's scores (in [0, 1]) to its row of `hist_EB` [E, B], in place."""
    num_experts, bins = hist_EB.shape
    bin_TE = (scores_TE.detach().float().clamp(0, 1) * bins).long().clamp_max(bins - 1)
    # NOTE: scatter_add into a fixed [E, B], not bincount: a static shape, so torch.compile does not break
    hist_EB.scatter_add_(1, bin_TE.T, torch.ones_like(bin_TE.T, dtype=hist_EB.dtype))


def histogram_quantiles(hist_EB: torch.Tensor, q: float) -> torch.Tensor:
    """[E] the q quantile of each expert's histogram over [0, 1], linear within its bin.

    Sample i of N (0-based, sorted) counts as the cdf's point i + 1/2, so the target count is
    q (N - 1) + 1/2: torch.quantile's (linear) definition, read off the histogram."""
    bins = hist_EB.shape[1]
    cdf_EB = hist_EB.cumsum(dim=1)
    target_E1 = q * (cdf_EB[:, -1:] - 1) + 0.5
    bin_E1 = torch.searchsorted(cdf_EB, target_E1).clamp_max(bins - 1)  # first bin whose cdf reaches it
    below_E1 = (cdf_EB.gather(1, bin_E1) - hist_EB.gather(1, bin_E1))
    within_E1 = (target_E1 - below_E1) / hist_EB.gather(1, bin_E1).clamp_min(1e-12)
    return ((bin_E1 + within_E1.clamp(0, 1)) / bins).squeeze(1)


@register_controller("quantile")
class Quantile(BiasController):
    params = {"qb_ema": Param(float, 0.9, "EMA of the bias across steps: b <- m b + (1 - m) b_new", low=0.0,
                              high=1.0, high_open=True),
              "bias_freeze_frac": BIAS_FREEZE}
    selections = ("topk", "threshold")
    sets_budget = True

    @classmethod
    def rate(cls, cfg) -> None:
        return None  # NOTE: an EMA toward a target, not steps of a rate: no travel in units of u

    @classmethod
    def speed(cls, cfg) -> float:
        return 1.0 - float(cls.setting(cfg, "qb_ema"))  # the share of the gap to the step's target closed per step

    @classmethod
    def speed_of(cls, cfg) -> str:
        return "1 - router.qb_ema"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.score_func not in ("sigmoid", "softmax"):
            raise ValueError(f"router.bias_mode = 'quantile' pools scores in a histogram over [0, 1], so it needs "
                             f"router.score_func in ['sigmoid', 'softmax'], not {cfg.score_func!r}")

    def __init__(self, num_experts, top_k, cfg):
        super().__init__(num_experts, top_k, cfg)
        # this step's scores, every micro-batch, per expert (summed over ranks at the update)
        self.register_buffer("step_hist", torch.zeros(num_experts, QB_BINS, dtype=torch.float64), persistent=False)

    def initial_bias(self, scores_TE, logits_TE):
        # NOTE: every rank's first batch, so every rank starts at the same bias
        return -expert_quantiles(distributed.all_cat(scores_TE), self.top_k)

    def observe(self, scores_TE, logits_TE, bias_E):
        histogram_add_(self.step_hist, scores_TE)

    def update(self, bias_E, counts_E, num_tokens):
        hist_EB = distributed.all_sum_(self.step_hist.clone())  # NOTE: the one collective of the update
        self.step_hist.zero_()
        target_E = -histogram_quantiles(hist_EB, 1 - self.top_k / self.num_experts).float()
        ema = self.param("qb_ema")
        # NOTE: a step with no training forward observed nothing and keeps the bias (no host read to ask)
        return torch.where(hist_EB.sum() > 0, bias_E * ema + (1 - ema) * target_E, bias_E)
