"""SMEBU, soft-clamped momentum expert bias updates (Arcee's Trinity Large report, arXiv 2602.17004,
the load-balancing section): the Loss-Free step with the sign replaced by a tanh of the relative
violation, centred, and smoothed by momentum, because sign steps kept oscillating as the expert
count grew (256 experts, top-4).

With the step's relative violation e_i = (c_i - mean c) / mean c (0 balanced, -1 an idle expert):

    step_i = -u tanh(kappa e_i)           soft clamp: about -u kappa e_i near balance, at most u
    step_i <- step_i - mean(step)         centred: the mean of the bias stays where it is
    m <- beta m + (1 - beta) step         momentum (smebu_momentum = beta)
    b <- b + m

NOTE on provenance: the report's own equations could not be read here; this order and the
defaults kappa = 2, beta = 0.5 follow a secondary summary of that section (normalised violation,
tanh soft clamp, mean-centred update, momentum) and an independent public implementation. The
test checks this rule on hand-made counts; it is not checked against the report's equation numbers.
"""

from __future__ import annotations

import torch

from harness.routing.controllers.base import BIAS_FREEZE, BIAS_RATE, BiasController, register_controller
from harness.routing.params import Param


def smebu_step(counts_E: torch.Tensor, rate: float, kappa: float) -> torch.Tensor:
    """[E] the centred, soft-clamped step before momentum."""
    counts_E = counts_E.float()
    violation_E = (counts_E - counts_E.mean()) / counts_E.mean().clamp_min(1e-12)
    step_E = -rate * torch.tanh(kappa * violation_E)
    return step_E - step_E.mean()


@register_controller("smebu")
class Smebu(BiasController):
    params = {"bias_rate": BIAS_RATE, "bias_freeze_frac": BIAS_FREEZE,
              "smebu_kappa": Param(float, 2.0, "tanh steepness: the step is about u kappa e near balance",
                                   low=1e-6, high=1e6),
              "smebu_momentum": Param(float, 0.5, "momentum beta of the bias velocity", low=0.0, high=0.999)}

    def __init__(self, num_experts, top_k, cfg):
        super().__init__(num_experts, top_k, cfg)
        self.register_buffer("velocity", torch.zeros(num_experts, dtype=torch.float32))  # in checkpoints

    def update(self, bias_E, counts_E, num_tokens):
        beta = self.param("smebu_momentum")
        step_E = smebu_step(counts_E, self.param("bias_rate"), self.param("smebu_kappa"))
        self.velocity.mul_(beta).add_(step_E.to(self.velocity), alpha=1 - beta)
        return bias_E + self.velocity
