"""Dynamic k through the bias offset (Su part 4) with threshold selection s + b > 0: balance the
firing rates and hold the mean number of experts per token K at k (eq. 3), under k (eq. 4: k a
ceiling), or the simple per-expert rule (eq. 5). The bias starts at the common value that fires
T k experts on the first batch."""

from __future__ import annotations

import torch

from harness import distributed
from harness.routing.controllers.base import BIAS_FREEZE, BIAS_RATE, BiasController, register_controller
from harness.routing.params import Param


def dynamic_k_step(counts_E: torch.Tensor, num_tokens: int, top_k: int, rule: str) -> torch.Tensor:
    """[E] the direction the bias moves against: Su eq. 3, 4 or 5 on the step's firing rates."""
    num_experts = counts_E.numel()
    fire_rate_E = counts_E.float() / max(num_tokens, 1)  # Ft_i
    if rule == "eq5":
        return torch.sign(fire_rate_E - top_k / num_experts)
    mean_k = fire_rate_E.sum()  # K
    balance_E = torch.sign(fire_rate_E / mean_k.clamp_min(1e-12) - 1.0 / num_experts)
    budget = mean_k - top_k
    if rule == "eq4":  # k is a ceiling, not a target
        budget = budget.clamp_min(0.0)
    return balance_E - balance_E.mean() + torch.sign(budget)


def threshold_init_bias(scores_TE: torch.Tensor, top_k: int) -> float:
    """Common bias b such that s + b > 0 fires T k experts in all on this batch: the point
    bisection on b converges to, exactly (minus the midpoint of the (T k)-th and next score)."""
    flat = scores_TE.detach().float().flatten()
    want = min(scores_TE.shape[0] * top_k, flat.numel())
    top = flat.topk(min(want + 1, flat.numel())).values
    if want >= flat.numel():
        return float(-(top[-1]) + 1e-6)
    return float(-(top[want - 1] + top[want]) / 2)


@register_controller("dynamic_k")
class DynamicK(BiasController):
    params = {
        "bias_rate": BIAS_RATE,
        "dynamic_k_rule": Param(str, "eq3", "Su's update: eq3 (target k), eq4 (k as a ceiling), eq5 (simple)",
                                choices=("eq3", "eq4", "eq5")),
        "bias_freeze_frac": BIAS_FREEZE,
    }
    selections = ("threshold",)
    sets_budget = True

    def initial_bias(self, scores_TE, logits_TE):
        scores_TE = distributed.all_cat(scores_TE)  # NOTE: every rank's first batch: every rank starts the same
        return torch.full((self.num_experts,), threshold_init_bias(scores_TE, self.top_k), dtype=torch.float32,
                          device=scores_TE.device)

    def update(self, bias_E, counts_E, num_tokens):
        step_E = dynamic_k_step(counts_E, num_tokens, self.top_k, self.param("dynamic_k_rule"))
        return bias_E - self.param("bias_rate") * step_E
