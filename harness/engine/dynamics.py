"""How a bias controller moved: the dynamics columns of every run that has one (issue 21).

    settle_step      the first step from which MaxVio_batch (layer mean) shows no trend to the end
                     (steady_state.settle_step: the log-slope's Newey-West interval contains 0, on
                     a grid of every 5 % of the steps); NaN where the last quarter still trends
    maxvio_batch_sd  the spread (sd) of MaxVio_batch over the second half: steady imbalance is
                     maxvio_batch (its mean) +/- this
    bias_spread      max_e b_e - min_e b_e at the end, layer mean
    bias_travel      bias_spread / u: the fewest steps a rule moving each bias by at most u per step
                     needs to build that spread
    bias_flip_share  over the second half, the share of (layer, expert, step) updates whose sign
                     differs from that expert's previous update (1: pure oscillation, 0: steady drift)
    bias_drift       RMS over experts of b(end) - b(3/4 of the run), layer mean, in units of u: how far
                     the bias still wanders over the last quarter

    controller_speed how far the controller moves per step in its own units, `controller_speed_of`
                     (router.bias_rate for a rate-driven rule, 1 - router.qb_ema for the EMA one)

u is the controller's router.bias_rate (NaN travel and drift where it is 0). The accumulators are
updated once per step from the bias before and after the update, so nothing is kept per step.
"""

from __future__ import annotations

import math

import torch

from harness.steady_state import settle_step


class BiasDynamics:
    """Per-step accumulators of one run's bias updates (all layers at once, [L, E])."""

    def __init__(self, steps: int, rate: float):
        self.steps, self.rate = steps, rate
        self.prev_sign = None  # [L, E] sign of each expert's last nonzero update
        self.flips = self.compared = 0.0  # NOTE: tensors once counted, read in summary(): no host sync per step
        self.q3 = None  # [L, E] the bias at 3/4 of the run
        self.last = None  # [L, E] the bias after the latest update

    def update(self, step: int, before_LE: torch.Tensor, after_LE: torch.Tensor) -> None:
        """The bias of every layer before and after step `step`'s update (1-based)."""
        sign = torch.sign(after_LE - before_LE)
        if self.prev_sign is not None and step > self.steps // 2:
            both = (sign != 0) & (self.prev_sign != 0)
            self.flips = self.flips + (both & (sign != self.prev_sign)).sum()
            self.compared = self.compared + both.sum()
        self.prev_sign = torch.where(sign != 0, sign, self.prev_sign) if self.prev_sign is not None else sign
        if step == (3 * self.steps) // 4:
            self.q3 = after_LE.clone()
        self.last = after_LE.clone()

    def summary(self, vio: list[float]) -> dict:
        half = vio[len(vio) // 2:]
        sd = float(torch.tensor(half).std()) if len(half) > 1 else math.nan
        out = {"settle_step": settle_step(vio), "maxvio_batch_sd": sd}
        if self.last is None:
            return out
        spread = float((self.last.max(dim=-1).values - self.last.min(dim=-1).values).mean())
        per_u = (lambda x: x / self.rate) if self.rate > 0 else (lambda x: math.nan)
        drift = float((self.last - self.q3).square().mean(dim=-1).sqrt().mean()) if self.q3 is not None else math.nan
        flips, compared = float(self.flips), float(self.compared)
        out.update(bias_spread=spread, bias_travel=per_u(spread), bias_drift=per_u(drift),
                   bias_flip_share=flips / compared if compared else math.nan)
        return out

    def state_dict(self) -> dict:
        on_cpu = {k: None if v is None else v.cpu() for k, v in (("prev_sign", self.prev_sign), ("q3", self.q3),
                                                                   ("last", self.last))}
        return {"flips": float(self.flips), "compared": float(self.compared), **on_cpu}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        for name, value in state.items():
            setattr(self, name, value.to(device) if isinstance(value, torch.Tensor) else value)
