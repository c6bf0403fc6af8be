"""Expert Threshold routing (arXiv 2603.11535, eqs. 1-6, Algorithm 1; the authors' code): each
expert fires on the tokens whose raw logit clears its own threshold, the threshold an EMA of the
expert's K-th largest logit per batch, so the load is controlled on average while the number of
experts per token varies from 0 to n. Gates are the sigmoid scores, not renormalised.

    cut_i     = the K-th largest logit r[., i] of a micro-batch of T tokens, K = max(1, floor(T k / n))
    cut       = the mean of the step's micro-batches' cuts, over every rank too (as the code does)
    c_raw_i  <- beta c_raw_i + (1 - beta) cut_i       once per optimizer step, from 0
    c_i       = c_raw_i / (1 - beta^updates)           bias-corrected
    route:      t uses i  iff  r[t, i] > c_i           frozen at evaluation: causal, batch-independent

The controller decides in logit space, as the paper does: it hands the threshold rule r - c_i
in float64 (its `selection_scores`), with the router's bias b_i = -c_i, so that a cell fires
exactly when r > c_i however large the logits grow (in float32, sigmoid(r) - sigmoid(c) loses the
difference from r ~ 14 and is 0 for every r above ~16.6). In training only:

- warm-up (`et_warmup_steps`): the first steps route by expert choice, each expert its K best
  tokens of the micro-batch, while the EMA already tracks their cut-offs (the paper: 4,000 steps);
- capacity clamp (`et_capacity` = C, the paper's 0.5; 0 turns it off, the default): each expert's
  count is held in [(1 - C) K, (1 + C) K], an over-full one keeping its highest logits, a starved
  one filled with its next-highest tokens below the threshold.

K targets the model's k experts per token on average, floor(T k / n) as the authors' code takes it;
the paper's K = T / n is k = 1,
beside one shared expert. The EMA decay defaults to the code's 0.99 (a memory of about 100 steps),
not the paper's 0.999 (about 1,000 steps, longer than the harness's runs of a few hundred steps).
"""

from __future__ import annotations

from fractions import Fraction
import math

import torch

from harness import distributed
from harness.routing.controllers.base import BIAS_FREEZE, BiasController, register_controller
from harness.routing.params import Param


def per_expert_target(num_tokens: int, top_k: int, num_experts: int) -> int:
    """K: the tokens each expert should take of `num_tokens`, k per token on average."""
    return min(num_tokens, max(1, num_tokens * top_k // num_experts))  # NOTE: floor, as the authors' code


def kth_largest(values_TE: torch.Tensor, k: int) -> torch.Tensor:
    """[E] each column's k-th largest value."""
    return values_TE.topk(k, dim=0).values[-1]


def clamp_counts(biased_TE: torch.Tensor, mask_TE: torch.Tensor, target: int, capacity: float) -> torch.Tensor:
    """Each expert's selection held to [(1 - C) K, (1 + C) K] tokens: the over-full keep their best,
    the starved take their next best (by the biased score, which orders a column as its logits do)."""
    exact = Fraction(str(capacity))  # NOTE: exact: in floats, (1 - 0.7) * 10 is 3.0000000000000004, ceil 4
    most = min(biased_TE.shape[0], math.floor((1 + exact) * target))
    least = min(most, max(0, math.ceil((1 - exact) * target)))
    order_TE = torch.zeros_like(biased_TE, dtype=torch.long)
    ranks = torch.arange(biased_TE.shape[0], device=biased_TE.device)[:, None].expand_as(biased_TE)
    order_TE.scatter_(0, biased_TE.argsort(dim=0, descending=True), ranks)  # 0 = the column's best token
    return (mask_TE & (order_TE < most)) | (order_TE < least)


@register_controller("expert_threshold")
class ExpertThreshold(BiasController):
    selections = ("threshold",)
    score_funcs = ("sigmoid",)  # the gates: the paper's sigmoid scores (it routes on the logits)
    sets_budget = True
    params = {
        "et_beta": Param(float, 0.99, "EMA decay of the thresholds (the code's 0.99; the paper's 0.999)", low=0.0,
                         high=1.0, high_open=True),
        "et_warmup_steps": Param(int, 0, "optimizer steps routed by expert choice first (the paper: 4,000)", low=0),
        "et_capacity": Param(float, 0.0, "C of the training-only clamp [(1-C)K, (1+C)K]; 0 turns it off (the "
                                         "paper: 0.5)", low=0.0, high=1.0),
        "bias_freeze_frac": BIAS_FREEZE,
    }

    def __init__(self, num_experts, top_k, cfg):
        super().__init__(num_experts, top_k, cfg)
        self.register_buffer("threshold_raw", torch.zeros(num_experts, dtype=torch.float64))  # c_raw, logit space
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # EMA updates (bias correction)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))  # optimizer steps (warm-up)
        # this step's micro-batch cuts, summed, and how many (summed over ranks at the update)
        self.register_buffer("step_cuts", torch.zeros(num_experts + 1, dtype=torch.float64), persistent=False)

    @classmethod
    def rate(cls, cfg) -> None:
        return None  # NOTE: an EMA toward each step's cut-offs, not steps of a rate

    @classmethod
    def speed(cls, cfg) -> float:
        return 1.0 - float(cls.setting(cfg, "et_beta"))

    @classmethod
    def speed_of(cls, cfg) -> str:
        return "1 - router.et_beta"

    def thresholds(self) -> torch.Tensor:
        """[E] c: the bias-corrected EMA of the cut-offs, in logit space."""
        beta = self.param("et_beta")
        return self.threshold_raw / (1 - beta ** max(int(self.updates), 1))

    def initial_bias(self, scores_TE, logits_TE):
        # NOTE: before any update, the first batch's own cut-offs (every rank's batch, so every rank starts the same)
        logits_TE = distributed.all_cat(logits_TE)
        return -kth_largest(logits_TE, per_expert_target(logits_TE.shape[0], self.top_k, self.num_experts))

    def selection_scores(self, rule, logits_TE, scores_TE, bias_E, training):
        # NOTE: r - c in float64 is > 0 exactly when r > c (r is a float32; c = -b rounded to float32 moves
        # across no float32 logit but the one it rounds to), at any logit
        return logits_TE.detach().double() + bias_E.double()

    def observe(self, scores_TE, logits_TE, bias_E):
        cut_E = kth_largest(logits_TE, per_expert_target(logits_TE.shape[0], self.top_k, self.num_experts))
        self.step_cuts[:-1] += cut_E.double()
        self.step_cuts[-1] += 1

    def reroute(self, biased_TE, mask_TE):
        target = per_expert_target(biased_TE.shape[0], self.top_k, self.num_experts)
        if int(self.steps_seen) < self.param("et_warmup_steps"):  # expert choice: each expert its K best
            return clamp_counts(biased_TE, torch.zeros_like(mask_TE), target, 0.0)
        capacity = self.param("et_capacity")
        return clamp_counts(biased_TE, mask_TE, target, capacity) if capacity > 0 else mask_TE

    def update(self, bias_E, counts_E, num_tokens):
        cuts = distributed.all_sum_(self.step_cuts.clone())  # NOTE: the one collective of the update
        self.step_cuts.zero_()
        self.steps_seen += 1
        if not cuts[-1]:
            return None  # no training forward this step
        beta = self.param("et_beta")
        self.threshold_raw.mul_(beta).add_(cuts[:-1] / cuts[-1], alpha=1 - beta)
        self.updates += 1
        return -self.thresholds().to(bias_E)
