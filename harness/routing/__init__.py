"""Routing: config axes, the router module, balancing methods and the preset registry."""

from harness.routing import presets as _presets  # noqa: F401  (registers the presets)
from harness.routing.config import RouterConfig, router_fields
from harness.routing.registry import ROUTERS, describe, get_router_config, register_router, router_names
from harness.routing.router import Router, RouterOutput

__all__ = [
    "ROUTERS", "Router", "RouterConfig", "RouterOutput", "describe", "get_router_config",
    "register_router", "router_fields", "router_names",
]
