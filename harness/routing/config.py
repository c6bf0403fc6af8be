"""Router configuration: the axes of docs/methods.md as fields of one dataclass.

A router is a score function x a selection rule x a balancing method (plus an expert output
form). Named presets (`presets.py`) are functions returning one of these; an ablation copies a
preset and changes one field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

ScoreFunc = Literal["softmax", "sigmoid", "relu", "softplus"]
OutputForm = Literal["plain", "magnitude"]
AuxScope = Literal["micro_batch", "sequence", "global_batch"]
BiasUpdate = Literal["sign", "rms", "linear"]
DynamicKRule = Literal["eq3", "eq4", "eq5"]
AuxCounts = Literal["dispatched", "unbiased"]
DropPolicy = Literal["probs", "position"]


@dataclass(kw_only=True)
class RouterConfig:
    # --- score function h: scores s = h(z), z = x W_r
    score_func: ScoreFunc = "softmax"
    # --- selection rule, a registered name (selection/): topk (top-k of s + b), threshold (every
    # expert with s + b > 0: dynamic k), expert_choice (Zhou et al. 2022: each expert takes its
    # C = chunk k / n best tokens of a chunk; not causal), or one a user registered
    selection: str = "topk"
    # expert choice: tokens per chunk (must divide a micro-batch's tokens); 0 = the whole micro-batch
    ec_chunk: int = 0
    # renormalise the gates over the selected experts (Mixtral, DeepSeek-V3)
    route_norm: bool = False
    # constant multiplier on the gates (DeepSeek-V3's routed scaling factor)
    route_scale: float = 1.0
    # capacity factor c (Switch, GShard, Megatron moe_expert_capacity_factor): each expert keeps at
    # most ceil(c T k / n) assignments of a micro-batch; 0 = dropless
    capacity_factor: float = 0.0
    # which over-capacity assignments are dropped: lowest gate first (probs) or latest token (position)
    drop_policy: DropPolicy = "probs"
    # S-BASE / Megatron sinkhorn: in training, select the top-k of the router logits after this many
    # Sinkhorn iterations (every expert's column normalised to T/n); plain top-k at evaluation;
    # gates from the plain scores. 0 disables it
    sinkhorn_iters: int = 0
    # group-limited routing (DeepSeek-V3 node-limited, HF/Megatron n_group / topk_group): experts in
    # n_group equal groups, a group scored by the sum of its 2 best (biased) scores, only the
    # topk_group best groups eligible; n_group = 1 disables it
    n_group: int = 1
    topk_group: int = 1
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
    # --- bias controller, a registered name (controllers/): none, loss_free (top-k), dynamic_k
    # (threshold), quantile (either), or one a user registered
    bias_mode: str = "none"
    # bias update rate u
    bias_rate: float = 1e-3
    # Loss-Free update form on e = F - Q: sign (paper), rms (Su), linear (e / Q)
    bias_update: BiasUpdate = "sign"
    # subtract the mean of each Loss-Free update so mean(b) stays fixed (torchtitan)
    bias_center: bool = False
    # freeze the bias (u = 0) for this last fraction of training (DeepSeek-V3)
    bias_freeze_frac: float = 0.0
    # quantile balancing (Su parts 6-7): b = -(1 - k/n) quantile of each expert's scores over the
    # step's tokens, smoothed b <- m b + (1 - m) b_new with m = qb_ema
    qb_ema: float = 0.9
    # dynamic-k update: Su eq. 3 (target k), eq. 4 (k as a ceiling), eq. 5 (simple)
    dynamic_k_rule: DynamicKRule = "eq3"
    # --- the parameters the selection rule and controller declare for themselves (params.py),
    # set as router.<name>; empty when they declare none
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_router_config(self)


def _choices(name: str) -> tuple:
    hint = get_type_hints(RouterConfig)[name]
    return get_args(hint) if get_origin(hint) is Literal else ()


def validate_router_config(cfg: RouterConfig) -> None:
    """Raise ValueError naming the key, its value and what is allowed."""
    for f in dataclasses.fields(cfg):
        allowed = _choices(f.name)
        value = getattr(cfg, f.name)
        if allowed and value not in allowed:
            raise ValueError(f"router.{f.name} = {value!r} is not allowed; choose one of {list(allowed)}")
    for name in ("aux_alpha", "z_loss_beta", "bias_rate"):
        if not 0 <= getattr(cfg, name) < math.inf:
            raise ValueError(f"router.{name} = {getattr(cfg, name)!r} must be a finite number >= 0")
    if not 0 <= cfg.capacity_factor < math.inf:
        raise ValueError(f"router.capacity_factor = {cfg.capacity_factor!r} must be a finite number >= 0 "
                         "(0: no dropping)")
    if cfg.ec_chunk < 0:
        raise ValueError(f"router.ec_chunk = {cfg.ec_chunk!r} must be >= 0 (0: the whole micro-batch)")
    _check_strategies(cfg)
    if cfg.sinkhorn_iters < 0:
        raise ValueError(f"router.sinkhorn_iters = {cfg.sinkhorn_iters!r} must be >= 0")
    if cfg.sinkhorn_iters and (cfg.selection != "topk" or cfg.bias_mode != "none"):
        raise ValueError("router.sinkhorn_iters > 0 balances the selection itself: it needs selection = 'topk' and "
                         "bias_mode = 'none'")
    if cfg.n_group < 1 or not 1 <= cfg.topk_group <= cfg.n_group:
        raise ValueError(f"router.n_group = {cfg.n_group!r}, router.topk_group = {cfg.topk_group!r}: need "
                         "n_group >= 1 and 1 <= topk_group <= n_group")
    if cfg.n_group > 1 and cfg.selection != "topk":
        raise ValueError("router.n_group > 1 (group-limited routing) needs router.selection = 'topk'")
    if cfg.aux_counts == "unbiased" and cfg.selection != "topk":
        raise ValueError("router.aux_counts = 'unbiased' needs router.selection = 'topk'")
    if not 0 < cfg.route_scale < math.inf:
        raise ValueError(f"router.route_scale = {cfg.route_scale!r} must be a finite number > 0")
    if not 0.0 <= cfg.bias_freeze_frac < 1.0:
        raise ValueError(f"router.bias_freeze_frac = {cfg.bias_freeze_frac!r} must be in [0, 1)")
    if not 0 <= cfg.qb_ema < 1:
        raise ValueError(f"router.qb_ema = {cfg.qb_ema!r} must be in [0, 1)")
    if cfg.output_form == "magnitude" and (cfg.score_func == "softmax" or cfg.route_norm):
        raise ValueError(
            "router.output_form = 'magnitude' predicts each expert's output norm from its score, so "
            "it needs a non-negative, non-softmax score_func (sigmoid, relu, softplus) and "
            f"route_norm = false; got score_func={cfg.score_func!r}, route_norm={cfg.route_norm!r}"
        )


def _check_strategies(cfg: RouterConfig) -> None:
    """The selection rule and the controller exist (registries), fit together, and accept the config."""
    from harness.routing.controllers import CONTROLLERS, get_controller  # NOTE: they import this module
    from harness.routing.selection import get_selection

    from harness.routing.params import check_params

    rule, controller = get_selection(cfg.selection), get_controller(cfg.bias_mode)
    rule.check(cfg)
    controller.check(cfg)
    check_params(cfg)
    steers = controller.selections
    if steers is not None and cfg.selection not in steers:
        raise ValueError(f"router.bias_mode = {cfg.bias_mode!r} steers selection in {list(steers)}, not "
                         f"router.selection = {cfg.selection!r}")
    if rule.needs_controller and not controller.sets_budget:
        budget = sorted(n for n, c in CONTROLLERS.items() if c.sets_budget and cfg.selection in (c.selections or ()))
        raise ValueError(f"router.selection = {cfg.selection!r} with router.bias_mode = {cfg.bias_mode!r}: "
                         f"{cfg.selection} selection needs a controller that sets its budget; use bias_mode in "
                         f"{budget}")


def router_fields() -> list[str]:
    """The router's own fields (the units' declared parameters are in params.py)."""
    return [f.name for f in dataclasses.fields(RouterConfig) if f.name != "params"]
