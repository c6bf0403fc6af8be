"""Loss-Free balancing (Wang et al. 2024, Algorithm 1; Su part 3): after each step,
b <- b - u f(F - Q), F the step's load fractions, Q = 1/n, f = sign (the paper), rms (e / RMS(e),
Su: the same RMS as sign, so the same u works) or linear (e / Q); optionally centred so mean(b)
stays fixed (torchtitan)."""

from __future__ import annotations

import torch

from harness.routing.controllers.base import BIAS_FREEZE, BIAS_RATE, BiasController, register_controller
from harness.routing.params import Param


def loss_free_step(counts_E: torch.Tensor, rule: str, center: bool) -> torch.Tensor:
    """[E] the direction f(F - Q) the bias moves against."""
    num_experts = counts_E.numel()
    frac_E = counts_E.float() / counts_E.float().sum().clamp_min(1.0)
    err_E = frac_E - 1.0 / num_experts
    if rule == "sign":
        step_E = torch.sign(err_E)
    elif rule == "rms":
        step_E = err_E / err_E.square().mean().sqrt().clamp_min(1e-12)
    else:  # linear: relative violation e / Q, independent of the batch size
        step_E = err_E * num_experts
    return step_E - step_E.mean() if center else step_E


@register_controller("loss_free")
class LossFree(BiasController):
    params = {
        "bias_rate": BIAS_RATE,
        "bias_update": Param(str, "sign", "the update form on e = F - Q: sign (the paper), rms (Su: e / RMS(e)), "
                                          "linear (e / Q)", choices=("sign", "rms", "linear")),
        "bias_center": Param(bool, False, "subtract the mean of each update so mean(b) stays fixed (torchtitan)"),
        "bias_freeze_frac": BIAS_FREEZE,
    }

    def update(self, bias_E, counts_E, num_tokens):
        step_E = loss_free_step(counts_E, self.param("bias_update"), self.param("bias_center"))
        return bias_E - self.param("bias_rate") * step_E
