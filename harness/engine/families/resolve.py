"""A model family resolved once: `model.family` looked up in the registry a single time and its
class attached to the model config (`ModelConfig.family_class`, as `RouterConfig.rule` is attached
to a router config), and everything a family decides about a run beside its model: the router
swapped into it (the family's traits under the user's router.* settings, or its own routing for
`router = "native"`) and what it needs of the whole config (a sparse layer, a causal rule)."""

from __future__ import annotations

from typing import Any

from harness.engine.families.base import FAMILIES, HARNESS, NATIVE, Family, family_names, transformers_module
from harness.routing import ROUTERS, RouterConfig, get_router_config
from harness.routing.selection import SELECTIONS


def resolve_family(name: str) -> type[Family] | None:
    """The registered family class of `model.family` (None: the harness's own proxy); ValueError
    naming the allowed values for any other name."""
    if name == HARNESS:
        return None
    if name not in FAMILIES:
        raise ValueError(f"model.family = {name!r} is not allowed; choose one of {family_names()}")
    return FAMILIES[name]


def family_router(preset: str, model, overrides: dict[str, Any]) -> RouterConfig:
    """The run's router: the preset with the user's router.* settings; in a family, the family's traits
    first (its gate normalisation and scaling, DeepSeek's group limits) and the user's settings over
    them; `router = "native"`, the family's own routing (the family's module runs it untouched)."""
    family = model.family_class
    if family is None:
        if preset == NATIVE:
            raise ValueError(f"router = 'native' runs a model family's own router: set model.family to one of "
                             f"{family_names()[1:]}")
        return get_router_config(preset, **overrides)
    transformers_module()  # NOTE: a family needs the extra: say so before any run starts
    if preset == NATIVE and overrides:
        raise ValueError(f"router = 'native' is the family's router untouched: router.* settings do not apply; got "
                         f"{sorted(f'router.{k}' for k in overrides)}")
    base = family.native_preset if preset == NATIVE else preset
    selection = overrides.get("selection", ROUTERS.lookup(base)().selection)
    imposed = {k: v for k, v in family.router_traits(selection, model).items() if k not in overrides}
    try:
        return get_router_config(base, **{**imposed, **overrides})
    except ValueError as err:  # NOTE: say which of the offending values the family set, not the user
        named = {k: v for k, v in imposed.items() if k in str(err)}
        if not named:
            raise
        raise ValueError(f"{err} (model.family = {family.name!r} sets "
                         f"{', '.join(f'router.{k} = {v!r}' for k, v in named.items())} on every router swapped into "
                         "it; set the key yourself to override it)") from None


def check_moe_layers(model) -> None:
    """ValueError for a family model with no sparse layer (its first layers are dense)."""
    family = model.family_class
    if family is not None and family.moe_layers(model) < 1:
        dense = model.num_layers - family.moe_layers(model)
        raise ValueError(f"model.family = {family.name!r} with model.num_layers = {model.num_layers} has no MoE "
                         f"layer (the family's first {dense} layer(s) are dense): use model.num_layers >= {dense + 1}")


def check_family(model, router_cfg: RouterConfig) -> None:
    """A family needs at least one sparse layer, and evaluates token by token (a causal rule)."""
    family = model.family_class
    if family is None:
        return
    check_moe_layers(model)
    if router_cfg.controller.zero_experts(router_cfg) and not family.zero_experts:
        with_zero = sorted(n for n, f in FAMILIES.items() if f.zero_experts)
        raise ValueError(f"model.family = {family.name!r} has no zero-computation experts: router.bias_mode = "
                         f"{router_cfg.bias_mode!r} routes to some, so it runs in model.family = 'harness' or "
                         f"{with_zero} only")
    if not router_cfg.rule.causal:
        raise ValueError(f"model.family = {family.name!r} routes each token by itself at evaluation, so it needs a causal "
                         f"selection rule; router.selection = {router_cfg.selection!r} is not. Choose one of "
                         f"{sorted(n for n, r in SELECTIONS.items() if r.causal)}")
