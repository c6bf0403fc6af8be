"""Bias controllers: how the selection bias b moves (b enters selection only, never a gate). The
interface and the shared settings are in base.py; every other module of this folder is a
controller that registers itself, so a new one is its own file only. See docs/methods.md."""

import importlib
import pkgutil

from harness.routing.controllers.base import (BIAS_FREEZE, BIAS_RATE, CONTROLLERS, BiasController, controller_names,
                                              get_controller, register_controller)

__all__ = ["BIAS_FREEZE", "BIAS_RATE", "CONTROLLERS", "BiasController", "controller_names", "get_controller",
           "register_controller"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
