"""The bias-controller interface, its registry, and the settings several controllers share.

A controller moves the selection bias b after each optimizer step (b enters selection only,
never a gate). It is one registered `nn.Module` subclass in a file of its own. It declares its
own settings (`params`, among them the shared `BIAS_RATE` and `BIAS_FREEZE` where it reads them)
and its facts: the selection rules it can steer (`selections`; None: any), the score functions it
has a meaning for (`score_funcs`; None: any), whether it sets the budget of a rule that needs one
(`sets_budget`, threshold selection) and whether it moves the bias at all (`moves_bias`). Each phase
of a forward is a hook with a default that does nothing, and the router calls every hook without
asking what the controller is: `initial_bias` (the bias to start from, from the first batch),
`observe` (each training forward's scores before they route), `selection_scores` (what the rule
ranks or thresholds), `reroute` (its own say over the training routing) and `loss` (balancing
through the gradient); `zero_experts` adds identity experts beside the FFN ones. Its buffers are its state: registered with `register_buffer`, they are
saved in the model's `state_dict` and so in checkpoints. After each optimizer step the router calls
`step` with the step's counts, summed over micro-batches and ranks. See docs/methods.md.

Legend: T = tokens, E = routed experts.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from harness.routing.config import router_fields
from harness.routing.params import Param, check_declarations
from harness.routing.registry import Registry, declarations

# NOTE: one declaration per shared knob, so router.bias_rate means one thing in every row
BIAS_RATE = Param(float, 1e-3, "bias update rate u: how far the rule moves each bias per step", low=0.0)
BIAS_FREEZE = Param(float, 0.0, "freeze the bias for this last fraction of training (DeepSeek-V3)", low=0.0,
                    high=1.0, high_open=True)


class BiasController(nn.Module, ABC):
    """The interface; subclasses implement `update` and, where they need to, the rest."""

    name = ""
    selections: tuple[str, ...] | None = ("topk",)  # the selection rules it can steer (None: any)
    score_funcs: tuple[str, ...] | None = None  # the router.score_func values it has a meaning for (None: any)
    sets_budget = False  # it can steer a rule that needs a controller (threshold)
    moves_bias = True  # False for the control arm and for controllers that only price (phi)
    params: dict[str, Param] = {}  # its own settings, set as router.<name>

    def __init__(self, num_experts: int, top_k: int, cfg):
        super().__init__()
        self.num_experts, self.top_k, self.cfg = num_experts, top_k, cfg

    @classmethod
    def check(cls, cfg) -> None:
        """ValueError for a router config this controller cannot steer (naming the keys and what is allowed)."""

    @classmethod
    def zero_experts(cls, cfg) -> int:
        """How many zero-computation experts (identity: they return their input) it routes beside the
        FFN experts (LongCat's); their bias stays 0, and the router records the FFN experts only."""
        return 0

    @classmethod
    def rate(cls, cfg) -> float | None:
        """u: the most a rule moves each bias in one step (None where no such rate drives it, e.g. an
        EMA). A controller that declares `bias_rate` has it; the dynamics measure travel in units of u."""
        return float(cls.setting(cfg, "bias_rate")) if "bias_rate" in cls.params else None

    @classmethod
    def speed(cls, cfg) -> float:
        """How far it moves per step, in its own units (`speed_of`): u for a rate-driven rule; an EMA
        controller reports its 1 - m. Runs record it as `controller_speed`, so the report can set
        controllers' settle steps and steady imbalance side by side against their speeds."""
        rate = cls.rate(cfg)
        return math.nan if rate is None else rate

    @classmethod
    def speed_of(cls, cfg) -> str | None:
        """What `speed` is, as a run row names it (None: nothing drives it)."""
        return "router.bias_rate" if cls.rate(cfg) is not None else None

    @classmethod
    def setting(cls, cfg, name: str):
        """One of its own settings in `cfg`: as set, else its declared default."""
        return cfg.params.get(name, cls.params[name].default)

    def param(self, name: str):
        """One of its own settings in its router's config."""
        return self.setting(self.cfg, name)

    def initial_bias(self, scores_TE: torch.Tensor, logits_TE: torch.Tensor) -> torch.Tensor | None:
        """[E] the bias to start from, given the first forward's scores and logits [T, E] (this rank's:
        a controller that starts from them gathers every rank's, `distributed.all_cat`, so that every
        rank starts at the same bias); None: start from 0."""
        return None

    def observe(self, scores_TE: torch.Tensor, logits_TE: torch.Tensor, bias_E: torch.Tensor) -> torch.Tensor | None:
        """See one training forward's scores and logits [T, E] before it routes, with the bias [E] it
        would route with (no gradient); a new bias returned is the one it routes with."""
        return None

    def selection_scores(self, rule, logits_TE: torch.Tensor, scores_TE: torch.Tensor, bias_E: torch.Tensor,
                         training: bool) -> torch.Tensor:
        """What the selection `rule` ranks or thresholds [T, E] (no gradient): the rule's own choice
        (scores plus bias), unless the controller decides in another space (Expert Threshold: logits)."""
        return rule.selection_scores(logits_TE, scores_TE, bias_E, self.cfg, training)

    def reroute(self, biased_TE: torch.Tensor, mask_TE: torch.Tensor) -> torch.Tensor:
        """The training forward's routing [T, E] (bool); `mask_TE` itself (the rule's) to leave it."""
        return mask_TE

    def loss(self, scores_TE: torch.Tensor) -> torch.Tensor | None:
        """A training forward's balancing loss, already weighted, that reaches the router weights; None: none."""
        return None

    def step(self, bias_E: torch.Tensor, counts_E: torch.Tensor, num_tokens: int, progress: float):
        """The new bias after an optimizer step (None leaves it): `update`, unless the bias is frozen
        for the last `bias_freeze_frac` of training (`progress` is the fraction done)."""
        if "bias_freeze_frac" in self.params and progress >= 1.0 - self.param("bias_freeze_frac"):
            return None
        return self.update(bias_E, counts_E, num_tokens)

    @abstractmethod
    def update(self, bias_E: torch.Tensor, counts_E: torch.Tensor, num_tokens: int) -> torch.Tensor | None:
        """The new bias [E] after a step with these counts (float32, summed over micro-batches and
        ranks) over `num_tokens` tokens; None leaves it."""


def _named(name: str, cls: type[BiasController]) -> type[BiasController]:
    check_declarations(f"bias controller {name!r}", cls.params, router_fields(), declarations())
    cls.name = name
    return cls


CONTROLLERS = Registry("bias controller", "router.bias_mode", prepare=_named)
register_controller = CONTROLLERS.register  # class decorator: @register_controller("name")
controller_names = CONTROLLERS.names
get_controller = CONTROLLERS.lookup
