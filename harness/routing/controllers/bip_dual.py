"""BIP-based balancing, reconstructed (arXiv 2502.15451): per routing, the LP relaxation of
"maximise sum s[t,i] x[t,i] with at most k experts per token and at most k N / n tokens per
expert" is solved through its dual by coordinate minimisation, a few iterations at a time, and
the experts chosen are the top-k of s - q with the gates from the unshifted s. The structure is
the paper's (dual variables p per token and q per expert, q persisting per layer, truncated at 0
because the constraints are inequalities); the update below is a reconstruction of its dual
steps, matching two write-ups, not checked against the paper's algorithm:

    repeat T times (`bip_iters`):
        p_t = max(0, (k+1)-th largest over i of (s[t,i] - q_i))           every token
        q_i = max(0, (kN/n + 1)-th largest over t of (s[t,i] - p_t))      every expert
    route: top-k over i of s - q   (the bias is -q; the gates are s)

`bip_order` says when q moves. "after" (the default): from the whole step's tokens, every
micro-batch and rank, once the step is done, routing the next step; the order statistic over t is
read off a 1,024-bin histogram per expert summed over ranks, as quantile balancing pools a step.
"before": from each training micro-batch itself (every rank's, gathered) before it routes, so q
fits the very tokens it routes (the paper's "balanced from the first step"); that cannot pool a
step whose later micro-batches have not run. Evaluation routes with q frozen, causally.
"""

from __future__ import annotations

import torch

from harness import distributed
from harness.routing.controllers.base import BIAS_FREEZE, BiasController, register_controller
from harness.routing.controllers.quantile import QB_BINS, histogram_add_, histogram_quantiles
from harness.routing.params import Param


def token_duals(scores_TE: torch.Tensor, q_E: torch.Tensor, top_k: int) -> torch.Tensor:
    """[T] p_t = max(0, (k+1)-th largest of s[t] - q) (0 where a token has no (k+1)-th expert)."""
    if top_k >= scores_TE.shape[1]:
        return torch.zeros(scores_TE.shape[0], dtype=scores_TE.dtype, device=scores_TE.device)
    return (scores_TE - q_E).topk(top_k + 1, dim=1).values[:, -1].clamp_min(0)


def expert_duals(reduced_TE: torch.Tensor, rank: int) -> torch.Tensor:
    """[E] q_i = max(0, the rank-th largest of s[., i] - p over the tokens), exactly."""
    return reduced_TE.topk(min(rank, reduced_TE.shape[0]), dim=0).values[-1].clamp_min(0)


def capacity_rank(num_tokens: int, top_k: int, num_experts: int) -> int:
    """k N / n + 1: the order statistic of an expert's column that prices its capacity."""
    return int(num_tokens * top_k // num_experts) + 1


def solve(scores_TE: torch.Tensor, q_E: torch.Tensor, top_k: int, iters: int) -> torch.Tensor:
    """T coordinate steps of the dual on these tokens, exactly (order statistics by sorting)."""
    rank = capacity_rank(scores_TE.shape[0], top_k, scores_TE.shape[1])
    for _ in range(iters):
        p_T = token_duals(scores_TE, q_E, top_k)
        q_E = expert_duals(scores_TE - p_T[:, None], rank)
    return q_E


@register_controller("bip_dual")
class BipDual(BiasController):
    params = {
        "bip_iters": Param(int, 2, "coordinate steps of the dual per update (the paper's T; unknown, 1-4)", low=1,
                           high=32),
        "bip_order": Param(str, "after", "after: q from the whole step, for the next; before: from each micro-batch, "
                                         "before it routes", choices=("after", "before")),
        "bias_freeze_frac": BIAS_FREEZE,
    }

    def __init__(self, num_experts, top_k, cfg):
        super().__init__(num_experts, top_k, cfg)
        self.step_scores: list[torch.Tensor] = []  # NOTE: "after" only: this step's scores, this rank's

    @classmethod
    def rate(cls, cfg) -> None:
        return None  # NOTE: q is solved for, not stepped at a rate

    @classmethod
    def speed(cls, cfg) -> float:
        return float(cls.setting(cfg, "bip_iters"))

    @classmethod
    def speed_of(cls, cfg) -> str:
        return "router.bip_iters"

    def observe(self, scores_TE, logits_TE, bias_E):
        if self.param("bip_order") == "after":
            self.step_scores.append(scores_TE.detach().float())
            return None
        every = distributed.all_cat(scores_TE.detach().float())  # NOTE: the whole micro-batch, every rank's
        return -solve(every, -bias_E, self.top_k, self.param("bip_iters"))

    def update(self, bias_E, counts_E, num_tokens):
        if self.param("bip_order") == "before" or not self.step_scores:
            return None
        scores_TE, self.step_scores = torch.cat(self.step_scores), []
        q_E = -bias_E
        rank = capacity_rank(num_tokens, self.top_k, self.num_experts)
        for _ in range(self.param("bip_iters")):  # NOTE: one all-reduce of an [E, bins] histogram per iteration
            hist_EB = torch.zeros(self.num_experts, QB_BINS, dtype=torch.float64, device=scores_TE.device)
            histogram_add_(hist_EB, scores_TE - token_duals(scores_TE, q_E, self.top_k)[:, None])
            distributed.all_sum_(hist_EB)
            tokens = hist_EB[0].sum()  # NOTE: a tensor, never read on the host
            level = (tokens - rank) / (tokens - 1).clamp_min(1)  # NOTE: the rank-th largest is the (N - rank + 1)-th smallest
            q_E = histogram_quantiles(hist_EB, level).float().clamp_min(0)
        return -q_E
