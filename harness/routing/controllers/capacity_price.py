"""Capacity-priced routing (Megatron-LM's capacity pricing, PR 4465, as its description states the
rule; its code was not read): each expert has a price lambda_i >= 0, charged only while it is over a
capacity cap, and tokens route by the top-k of their logits less the prices:

    load_i    = n_i / nbar            the step's assignments over the balanced share (nbar = sum / n)
    lambda_i <- max(0, lambda_i + eta (load_i - (1 + slack)))    once per optimizer step
    route:      top-k of z - lambda   (the logits; the gates stay the plain scores)

It is dual ascent on the constraint load_i <= 1 + slack, one-sided: the multiplier is projected
on lambda >= 0, so an expert under its cap is never subsidised and the slack tolerates loads up to
(1 + slack) times balanced for free (`dual_ascent` prices both ways, toward load 1 exactly). The
router's bias is b = -lambda, in logit units.
"""

from __future__ import annotations

import torch

from harness.routing.controllers.base import BIAS_FREEZE, BiasController, register_controller
from harness.routing.params import Param


def price_step(lambda_E: torch.Tensor, counts_E: torch.Tensor, eta: float, slack: float) -> torch.Tensor:
    """[E] the new prices: one projected step of dual ascent toward load <= 1 + slack."""
    counts_E = counts_E.float()
    load_E = counts_E / counts_E.mean().clamp_min(1e-12)
    return (lambda_E + eta * (load_E - (1.0 + slack))).clamp_min(0.0)


@register_controller("capacity_price")
class CapacityPrice(BiasController):
    params = {
        "cp_rate": Param(float, 1e-2, "eta: the price change per unit of load over the cap, in logits (a guess)",
                         low=0.0),
        "cp_slack": Param(float, 0.1, "the cap is (1 + slack) x the balanced load; 0: priced above balance",
                          low=0.0),
        "bias_freeze_frac": BIAS_FREEZE,
    }

    @classmethod
    def speed(cls, cfg) -> float:
        return float(cls.setting(cfg, "cp_rate"))

    @classmethod
    def speed_of(cls, cfg) -> str:
        return "router.cp_rate"

    def selection_scores(self, rule, logits_TE, scores_TE, bias_E, training):
        return logits_TE.detach() + bias_E  # NOTE: z - lambda, as the rule is stated, not s - lambda

    def update(self, bias_E, counts_E, num_tokens):
        return -price_step(-bias_E, counts_E, self.param("cp_rate"), self.param("cp_slack"))
