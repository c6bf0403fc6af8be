"""Routing: the router's fields (config.py), the methods (selection/ and controllers/, one file
each, with their own settings), a config resolved once (resolve.py), the named presets
(presets.py), shared tensor pieces (balancing.py) and the router module (router.py)."""

from harness.routing.config import RouterConfig, router_fields
from harness.routing.presets import ROUTERS, describe, get_router_config, register_router, router_names
from harness.routing.resolve import resolve_router
from harness.routing.router import Router, RouterOutput

__all__ = [
    "ROUTERS", "Router", "RouterConfig", "RouterOutput", "describe", "get_router_config",
    "register_router", "resolve_router", "router_fields", "router_names",
]
