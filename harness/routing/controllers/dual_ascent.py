"""Dual-ascent bias (the primal-dual reading of Loss-Free, arXiv 2512.03915): the bias is the
Lagrange multiplier of the load constraint of the assignment LP, and moves by gradient ascent on
its dual, in proportion to each expert's violation:

    b_i <- b_i + eps_n (nbar - n_i),   nbar = the balanced load (the step's assignments / n)

after each optimizer step, on the step's counts (every micro-batch and rank); the updated bias
routes the next batch. `da_schedule = "constant"` keeps eps_n = eps_0; "inverse" decays it as
eps_0 / n (n the update's number): the paper's logarithmic-regret result needs a decaying step
whose exact schedule could not be read, and 1/n is the usual choice for such bounds, a guess.
With eps_i = u / |nbar - n_i| (one step per expert) the update is the sign rule of Loss-Free,
b_i + u sign(nbar - n_i) (tested), so the sign rule is this controller with a step that ignores
how large the violation is.
"""

from __future__ import annotations

import torch

from harness.routing.controllers.base import BIAS_FREEZE, BiasController, register_controller
from harness.routing.params import Param


def dual_ascent_step(counts_E: torch.Tensor, eps) -> torch.Tensor:
    """[E] eps (nbar - n): the dual-ascent step on the step's counts (`eps` a number or [E])."""
    counts_E = counts_E.float()
    return eps * (counts_E.mean() - counts_E)


@register_controller("dual_ascent")
class DualAscent(BiasController):
    params = {
        "da_eps": Param(float, 1e-4, "eps_0: the bias change per assignment of violation", low=0.0),
        "da_schedule": Param(str, "constant", "constant eps_0, or inverse: eps_0 / n at the n-th update (a guess)",
                             choices=("constant", "inverse")),
        "bias_freeze_frac": BIAS_FREEZE,
    }

    def __init__(self, num_experts, top_k, cfg):
        super().__init__(num_experts, top_k, cfg)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # in checkpoints: the schedule's n

    @classmethod
    def speed(cls, cfg) -> float:
        return float(cls.setting(cfg, "da_eps"))

    @classmethod
    def speed_of(cls, cfg) -> str:
        return "router.da_eps"

    def update(self, bias_E, counts_E, num_tokens):
        self.updates += 1
        eps = self.param("da_eps") / (int(self.updates) if self.param("da_schedule") == "inverse" else 1)
        return bias_E + dual_ascent_step(counts_E, eps)
