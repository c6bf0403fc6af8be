"""Router configuration: the axes every router has, as fields of one dataclass, and the chosen
methods' own settings beside them.

A router is a score function x a selection rule x a balancing method (plus an expert output
form). The fields here are what every router reads; a selection rule's or a bias controller's
own knobs (`bias_rate`, `qb_ema`, `ec_chunk`, ...) are declared in that method's file and set in
`params`, by the same flat names (`router.bias_rate`). A RouterConfig is plain data: resolve.py
checks it once and attaches the rule and controller it names.

    cfg = RouterConfig(score_func="sigmoid", route_norm=True).replace(bias_mode="loss_free", bias_rate=1e-2)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

ScoreFunc = Literal["softmax", "sigmoid", "relu", "softplus", "sqrtsoftplus"]
OutputForm = Literal["plain", "magnitude"]
AuxScope = Literal["micro_batch", "sequence", "global_batch"]
AuxCounts = Literal["dispatched", "unbiased"]
DropPolicy = Literal["probs", "position"]


@dataclass(kw_only=True)
class RouterConfig:
    # --- score function h: scores s = h(z), z = x W_r
    score_func: ScoreFunc = "softmax"
    # a bias term in the router's linear map, z = x W_r + c (gpt-oss); it enters the logits, so the
    # gates and the gradient too: not the selection-only bias of a controller
    gate_bias: bool = False
    # --- selection rule, a registered name (selection/): topk (top-k of s + b), threshold (every
    # expert with s + b > 0: dynamic k), expert_choice (each expert takes its best tokens; not
    # causal), or one a user registered
    selection: str = "topk"
    # renormalise the gates over the selected experts (Mixtral, DeepSeek-V3)
    route_norm: bool = False
    # constant multiplier on the gates (DeepSeek-V3's routed scaling factor)
    route_scale: float = 1.0
    # capacity factor c (Switch, GShard, Megatron moe_expert_capacity_factor): each expert keeps at
    # most ceil(c T k / n) assignments of a micro-batch; 0 = dropless
    capacity_factor: float = 0.0
    # which over-capacity assignments are dropped: lowest gate first (probs) or latest token (position)
    drop_policy: DropPolicy = "probs"
    # --- expert output form: gate x E(x), or score x unit-RMS E(x) (Su part 1)
    output_form: OutputForm = "plain"
    # --- auxiliary loss, F/(T k) convention: value 1 when uniform (HF's is k times larger)
    aux_alpha: float = 0.0
    # tokens over which F and P are computed (global_batch: F over the whole optimizer step)
    aux_scope: AuxScope = "micro_batch"
    # F of the aux loss from the experts actually dispatched (Megatron), or from the top-k of the
    # unbiased scores (the DeepSeek-V3 paper's formula read literally); top-k selection only
    aux_counts: AuxCounts = "dispatched"
    # router z-loss coefficient (ST-MoE), combinable with any method; 0 disables it
    z_loss_beta: float = 0.0
    # --- bias controller, a registered name (controllers/): none, loss_free, dynamic_k, quantile,
    # smebu, or one a user registered. NOTE: the public key keeps its first name, router.bias_mode
    bias_mode: str = "none"
    # --- the chosen rule's and controller's own settings, by name (router.<name>), as set: each
    # is declared in its method's file (bias_rate in controllers/base.py, qb_ema in quantile.py, ...)
    params: dict[str, Any] = field(default_factory=dict)
    # the rule (a SelectionRule) and controller (a BiasController class) the names resolve to
    # (resolve.py); None until resolved. NOTE: typed Any: this module sits below the methods
    rule: Any = field(default=None, init=False, repr=False, compare=False)
    controller: Any = field(default=None, init=False, repr=False, compare=False)

    def replace(self, **settings: Any) -> RouterConfig:
        """A copy with `settings` applied: router fields by name, anything else a method's setting
        (checked when the copy is resolved)."""
        core = {k: v for k, v in settings.items() if k in router_fields()}
        mine = {k: v for k, v in settings.items() if k not in core}
        return dataclasses.replace(self, **core, params={**self.params, **mine})

    def param(self, name: str) -> Any:
        """A setting of the chosen rule or controller: as set, else its declared default."""
        if name in self.params:
            return self.params[name]
        for unit in (self.rule, self.controller):
            if unit is not None and name in unit.params:
                return unit.params[name].default
        raise KeyError(f"router.{name} is declared by neither router.selection = {self.selection!r} nor "
                       f"router.bias_mode = {self.bias_mode!r} (or the config is not resolved)")


def router_fields() -> list[str]:
    """The router's own fields (the methods' settings are declared in their files)."""
    return [f.name for f in dataclasses.fields(RouterConfig) if f.init and f.name != "params"]
