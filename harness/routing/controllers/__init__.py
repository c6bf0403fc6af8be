"""Bias controllers: how the selection bias b moves (b enters selection only, never a gate).

A controller is one registered `nn.Module` subclass in a file of its own. It declares the
router fields it reads (`fields`), the selection rules it can steer (`selections`; None: any),
whether it sets the budget of a rule that needs one (`sets_budget`, threshold selection),
whether it starts the bias from the first batch's scores (`init_from_scores`), and whether it
watches each training forward's scores (`observes`). Its buffers are its state: registered
with `register_buffer`, they are saved in the model's `state_dict` and so in checkpoints.
After each optimizer step the driver calls `update` with the step's counts, summed over
micro-batches and ranks. The router only dispatches through `get_controller`, and the allowed
values of `router.bias_mode` are the registered names. See docs/methods.md.

Legend: T = tokens, E = routed experts.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn

from harness.routing.params import Param
from harness.routing.units import UnitRegistry


class BiasController(nn.Module):
    """The interface; subclasses override `update` and, where they need to, the rest."""

    name = ""
    fields: tuple[str, ...] = ()  # the RouterConfig fields it reads
    selections: tuple[str, ...] | None = ("topk",)  # the selection rules it can steer (None: any)
    sets_budget = False  # it can steer a rule that needs a controller (threshold)
    init_from_scores = False  # `initial_bias` from the first batch's scores (every rank's)
    observes = False  # `observe` every training forward's scores
    params: dict[str, Param] = {}  # its own knobs, set as router.<name> (params.py)
    speed_of = "router.bias_rate"  # what sets how fast it moves (None: nothing), named as `speed` reports it

    @classmethod
    def speed(cls, cfg) -> float:
        """How far it moves per step, in its own units (`speed_of`): the rate u of a rule that
        moves each bias by at most u; an EMA controller overrides it with its 1 - m. Runs record
        it as `controller_speed`, so the report can set controllers' settle steps and steady
        imbalance side by side against their speeds."""
        return float(cfg.bias_rate) if cls.speed_of else float("nan")

    def __init__(self, num_experts: int, top_k: int, cfg):
        super().__init__()
        self.num_experts, self.top_k, self.cfg = num_experts, top_k, cfg

    @classmethod
    def check(cls, cfg) -> None:
        """ValueError for a router config this controller cannot steer (naming the keys and what is allowed)."""

    def param(self, name: str):
        """The value of one of its declared parameters (the default where the config leaves it)."""
        return self.cfg.params.get(name, self.params[name].default)

    def initial_bias(self, scores_TE: torch.Tensor) -> torch.Tensor:
        """[E] the bias to start from (init_from_scores only)."""
        raise NotImplementedError

    def observe(self, scores_TE: torch.Tensor) -> None:
        """See one training forward's scores [T, E] (observes only; no gradient)."""

    def update(self, bias_E: torch.Tensor, counts_E: torch.Tensor, num_tokens: int) -> torch.Tensor | None:
        """The new bias [E] after a step with these counts (float32, summed over micro-batches and
        ranks) over `num_tokens` tokens; None leaves it."""
        raise NotImplementedError


CONTROLLERS = UnitRegistry("bias controller", "router.bias_mode", instantiate=False)
register_controller = CONTROLLERS.register  # class decorator: @register_controller("name")
controller_names = CONTROLLERS.names


def get_controller(name: str) -> type[BiasController]:
    return CONTROLLERS.lookup(name)


# NOTE: every module of this folder is a controller that registers itself: a new one is its own file only
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
