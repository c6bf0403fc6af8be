"""phi-balancing, reconstructed (arXiv 2605.15403; from two implementations that cite its
Algorithm 1 and the derivation in its abstract): the experts are priced by the gradient of a
convex potential phi at an EMA of their routing probabilities, and the router pays that price
through a loss; selection is unchanged, balance comes through the gradient.

    pbar = the batch mean of the full (pre-top-k) routing probabilities (s / sum s: the softmax
           for a softmax router), with its gradient
    m   <- (1 - eta) m + eta stopgrad(pbar)          m starts uniform, 1 / n
    pi   = stopgrad(grad phi(m)), centred             negative entropy: 1 + log m;  Euclidean: m
    loss = w n sum_i pbar_i pi_i                       w = `phi_weight` (the sources use about 1e-3 n)

With the Euclidean potential this is the Switch loss with the batch fractions replaced by their
EMA. Centring pi changes the loss's value (0 when m is uniform), not its gradient (pbar sums to 1).
With gradient accumulation and data parallel the EMA moves once per optimizer step, by the
step's pbar averaged over every micro-batch and rank, so every rank keeps the same prices.
The bias-style variants found online do not follow from the paper and are left out.
"""

from __future__ import annotations

import torch

from harness import distributed
from harness.routing.controllers.base import BiasController, register_controller
from harness.routing.balancing import recomputing
from harness.routing.params import Param


def price(ema_E: torch.Tensor, potential: str) -> torch.Tensor:
    """[E] the centred price grad phi(m)."""
    raw_E = 1 + torch.log(ema_E.clamp_min(1e-12)) if potential == "entropy" else ema_E
    return raw_E - raw_E.mean()


@register_controller("phi_balance")
class PhiBalance(BiasController):
    selections = None
    moves_bias = False
    params = {
        "phi_weight": Param(float, 1e-3, "w: the loss is w n sum_i pbar_i pi_i", low=0.0),
        "phi_rate": Param(float, 0.01, "eta: the EMA rate of the probabilities m", low=0.0, high=1.0),
        "phi_potential": Param(str, "entropy", "phi: negative entropy (pi = 1 + log m) or euclidean (pi = m)",
                               choices=("entropy", "euclidean")),
    }

    def __init__(self, num_experts, top_k, cfg):
        super().__init__(num_experts, top_k, cfg)
        self.register_buffer("ema", torch.full((num_experts,), 1.0 / num_experts, dtype=torch.float32))  # m
        # this step's pbar of each micro-batch, summed, and how many (summed over ranks at the update)
        self.register_buffer("step_pbar", torch.zeros(num_experts + 1, dtype=torch.float64), persistent=False)

    @classmethod
    def speed(cls, cfg) -> float:
        return float(cls.setting(cfg, "phi_rate"))

    @classmethod
    def speed_of(cls, cfg) -> str:
        return "router.phi_rate"

    def loss(self, scores_TE):
        pbar_E = (scores_TE / scores_TE.sum(dim=-1, keepdim=True).clamp_min(1e-20)).mean(dim=0)
        if not recomputing():  # NOTE: a forward recomputed in the backward adds no second pbar (Megatron issue 1330)
            with torch.no_grad():
                self.step_pbar[:-1] += pbar_E.double()
                self.step_pbar[-1] += 1
        weight = self.param("phi_weight") * self.num_experts
        return weight * (pbar_E * price(self.ema, self.param("phi_potential"))).sum()

    def update(self, bias_E, counts_E, num_tokens):
        pooled = distributed.all_sum_(self.step_pbar.clone())
        self.step_pbar.zero_()
        # NOTE: a step with no training forward (pooled[-1] == 0) keeps the EMA, decided on the device
        rate = self.param("phi_rate") * (pooled[-1] > 0).float()
        self.ema.mul_(1 - rate).add_((pooled[:-1] / pooled[-1].clamp_min(1)).float() * rate)
        return None
