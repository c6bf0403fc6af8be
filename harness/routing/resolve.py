"""A router config resolved once: every key and value checked, the names turned into the selection
rule and bias controller they register, and the result handed down to the router, the evaluator
and the run's metrics, which never look a name up again.

    cfg = resolve_router(RouterConfig(score_func="sigmoid").replace(bias_mode="loss_free", bias_rate=1e-2))
    cfg.rule, cfg.controller, cfg.param("bias_rate")

A setting that neither the chosen rule nor the chosen controller reads is refused, naming the
methods that do read it: `router.bias_rate` with `bias_mode = "quantile"` is an error, not a
number that changes the run id and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, get_args, get_origin, get_type_hints

from harness.routing.config import RouterConfig, router_fields
from harness.routing.controllers import CONTROLLERS
from harness.routing.params import Param
from harness.routing.registry import declarations
from harness.routing.selection import SELECTIONS


def declared() -> dict[str, Param]:
    """Every setting any registered rule or controller declares (name -> declaration)."""
    return {name: param for _, params in declarations() for name, param in params.items()}


def readers(name: str) -> list[str]:
    """`router.selection in [...]` / `router.bias_mode in [...]`: the methods that read a setting."""
    out = []
    for key, registry in (("router.selection", SELECTIONS), ("router.bias_mode", CONTROLLERS)):
        names = sorted(n for n, unit in registry.items() if name in unit.params)
        if names:
            out.append(f"{key} in {names}")
    return out


def resolve_router(cfg: RouterConfig, inherited: set[str] = frozenset()) -> RouterConfig:
    """`cfg` checked (unknown keys, types, ranges, how the methods fit together, their settings) with
    its rule and controller attached; ValueError naming the key, its value and what is allowed.
    Settings named in `inherited` (a preset's, not the user's) that the chosen methods do not read
    are dropped instead of refused."""
    check_fields(cfg)
    rule, controller = SELECTIONS.lookup(cfg.selection), CONTROLLERS.lookup(cfg.bias_mode)
    mine = {**rule.params, **controller.params}
    given = {k: v for k, v in cfg.params.items() if k in mine or k not in inherited}
    out = dataclasses.replace(cfg, params=check_settings(cfg, given, mine))
    out.rule, out.controller = rule, controller
    rule.check(out)
    controller.check(out)
    check_fit(out)
    return out


def check_fields(cfg: RouterConfig) -> None:
    """The router's own fields: allowed values and ranges."""
    hints = get_type_hints(RouterConfig)
    for name in router_fields():
        allowed, value = get_args(hints[name]) if get_origin(hints[name]) is Literal else (), getattr(cfg, name)
        if allowed and value not in allowed:
            raise ValueError(f"router.{name} = {value!r} is not allowed; choose one of {list(allowed)}")
    for name in ("aux_alpha", "z_loss_beta"):
        if not 0 <= getattr(cfg, name) < math.inf:
            raise ValueError(f"router.{name} = {getattr(cfg, name)!r} must be a finite number >= 0")
    if not 0 <= cfg.capacity_factor < math.inf:
        raise ValueError(f"router.capacity_factor = {cfg.capacity_factor!r} must be a finite number >= 0 "
                         "(0: no dropping)")
    if not 0 < cfg.route_scale < math.inf:
        raise ValueError(f"router.route_scale = {cfg.route_scale!r} must be a finite number > 0")


def check_settings(cfg: RouterConfig, given: dict, mine: dict[str, Param]) -> dict:
    """The settings `given`, each checked against the chosen methods' declaration (`mine`)."""
    out = {}
    for name, value in given.items():
        if name not in mine:
            who = readers(name)
            if not who:
                raise ValueError(f"unknown router key(s) [{name!r}]; allowed: "
                                 f"{router_fields() + sorted(declared())}")
            raise ValueError(f"router.{name} is not read by router.selection = {cfg.selection!r} or router.bias_mode = "
                             f"{cfg.bias_mode!r}; it is read by {' and '.join(who)}")
        out[name] = mine[name].check(f"router.{name}", value)
    return out


def check_fit(cfg: RouterConfig) -> None:
    """What only the rule, the controller and the fields together can check."""
    steers = cfg.controller.selections
    if steers is not None and cfg.rule.steered_as not in steers:
        raise ValueError(f"router.bias_mode = {cfg.bias_mode!r} steers selection in {list(steers)}, not "
                         f"router.selection = {cfg.selection!r}")
    if cfg.rule.needs_controller and not cfg.controller.sets_budget:
        budget = sorted(n for n, c in CONTROLLERS.items() if c.sets_budget and cfg.selection in (c.selections or ()))
        raise ValueError(f"router.selection = {cfg.selection!r} with router.bias_mode = {cfg.bias_mode!r}: "
                         f"{cfg.selection} selection needs a controller that sets its budget; use bias_mode in "
                         f"{budget}")
    if cfg.aux_counts == "unbiased" and cfg.selection != "topk":
        raise ValueError("router.aux_counts = 'unbiased' needs router.selection = 'topk'")
    if cfg.output_form == "magnitude" and (cfg.score_func == "softmax" or cfg.route_norm):
        raise ValueError(
            "router.output_form = 'magnitude' predicts each expert's output norm from its score, so "
            "it needs a non-negative, non-softmax score_func (sigmoid, relu, softplus) and "
            f"route_norm = false; got score_func={cfg.score_func!r}, route_norm={cfg.route_norm!r}"
        )
    for key, unit in (("router.selection", cfg.rule), ("router.bias_mode", cfg.controller)):
        if unit.score_funcs is not None and cfg.score_func not in unit.score_funcs:
            raise ValueError(f"{key} = {unit.name!r} has no meaning for router.score_func = {cfg.score_func!r}; "
                             f"it takes score_func in {list(unit.score_funcs)}")
