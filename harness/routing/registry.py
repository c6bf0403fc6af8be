"""A small registry of named router presets (lm-evaluation-harness style).

A preset is a function returning a RouterConfig; its docstring's first line is its
description. Add a variant with one decorated definition:

    @register_router("my_router")
    def my_router() -> RouterConfig:
        \"\"\"One line that `moe-harness list` prints.\"\"\"
        return replace(loss_free(), bias_update="rms")
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from harness.routing.config import RouterConfig, router_fields

PresetFn = Callable[[], RouterConfig]
ROUTERS: dict[str, PresetFn] = {}


def register_router(*names: str) -> Callable[[PresetFn], PresetFn]:
    def decorate(fn: PresetFn) -> PresetFn:
        for name in names:
            if name in ROUTERS:
                raise ValueError(f"router preset {name!r} is already registered")
            ROUTERS[name] = fn
        return fn

    return decorate


def router_names() -> list[str]:
    return sorted(ROUTERS)


def describe(name: str) -> str:
    doc = (get_preset_fn(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def get_preset_fn(name: str) -> PresetFn:
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; registered routers: {', '.join(router_names())}")
    return ROUTERS[name]


def get_router_config(name: str, **overrides) -> RouterConfig:
    """The preset's config with `overrides` applied (validated, unknown keys rejected)."""
    from harness.routing.params import declared

    params = declared()
    unknown = sorted(set(overrides) - set(router_fields()) - set(params))
    if unknown:
        raise ValueError(f"unknown router key(s) {unknown}; allowed: {router_fields() + sorted(params)}")
    preset = get_preset_fn(name)()
    fields = {k: v for k, v in overrides.items() if k not in params}
    mine = {k: v for k, v in overrides.items() if k in params}
    return dataclasses.replace(preset, **fields, params={**preset.params, **mine})
