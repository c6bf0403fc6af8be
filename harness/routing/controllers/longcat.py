"""LongCat-Flash's zero-computation experts and their controller (arXiv 2509.01322, section 2.1;
reconstructed from the report's description, no code published): beside the n FFN experts, Z
zero-computation experts that return their input unchanged; top-k over all n + Z, so a token
takes between 0 and k FFN experts, and the expected number of FFN experts per token, the compute,
is steered to a budget K_e < k by a bias on the FFN experts only (the zero ones' stays 0):

    b_i <- b_i + mu_n (K_e / (k n) - T_i / (k T))     FFN expert i, once per optimizer step
    mu_n = mu / sqrt(n)                                 the n-th update (`zc_schedule`; a guess)

T_i the step's tokens on expert i and T the step's tokens: an expert over its share of the budget
(K_e T / n tokens) is lowered, one under it raised, so the FFN experts balance and their total
holds K_e per token while the zero experts take the rest. The gate of a zero expert scales the
token's own input. The router records the FFN experts alone: MaxVio over them, `mean_k` is FFN
experts per token and `compute_ratio` (mean_k / k) the share of the FFN compute used, so the
share saved is 1 - compute_ratio. LongCat-Flash: n = 512, Z = 256, k = 12, K_e about 8.
"""

from __future__ import annotations


import torch

from harness.routing.controllers.base import BIAS_FREEZE, BIAS_RATE, BiasController, register_controller
from harness.routing.params import Param


def longcat_step(counts_E: torch.Tensor, num_tokens: int, top_k: int, budget: float) -> torch.Tensor:
    """[E] K_e / (k n) - T_i / (k T): the FFN experts' distance to their share of the budget."""
    counts_E = counts_E.float()
    return (budget / counts_E.numel() - counts_E / max(num_tokens, 1)) / top_k


@register_controller("longcat")
class LongCat(BiasController):
    params = {
        "bias_rate": BIAS_RATE,
        "zc_experts": Param(int, 4, "Z: zero-computation (identity) experts beside the FFN experts", low=1),
        "zc_budget": Param(float, 2 / 3, "K_e / k: the FFN experts per token to steer to, as a share of k "
                                         "(LongCat: about 8 of 12)", low=0.0, high=1.0),
        "zc_schedule": Param(str, "inverse_sqrt", "the rate: constant, or inverse_sqrt (mu / sqrt(n) at the n-th "
                                                  "update; a guess)", choices=("constant", "inverse_sqrt")),
        "bias_freeze_frac": BIAS_FREEZE,
    }

    def __init__(self, num_experts, top_k, cfg):
        super().__init__(num_experts, top_k, cfg)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # in checkpoints: the schedule's n

    @classmethod
    def zero_experts(cls, cfg) -> int:
        return int(cls.setting(cfg, "zc_experts"))

    def update(self, bias_E, counts_E, num_tokens):
        self.updates += 1
        rate = self.param("bias_rate")
        if self.param("zc_schedule") == "inverse_sqrt":
            rate = rate / self.updates.double().sqrt()  # NOTE: on the device: no host read per step
        budget = self.param("zc_budget") * self.top_k
        return bias_E + rate * longcat_step(counts_E, num_tokens, self.top_k, budget)
