"""Selection rules: which experts each token goes to, given the scores plus the bias. The
interface is in base.py; every other module of this folder is a rule that registers itself, so a
new rule is its own file only. See docs/methods.md."""

import importlib
import pkgutil

from harness.routing.selection.base import (CAUSAL_RULE, SELECTIONS, Selected, SelectionRule, get_selection,
                                            register_selection, selection_names)

__all__ = ["CAUSAL_RULE", "SELECTIONS", "Selected", "SelectionRule", "get_selection", "register_selection",
           "selection_names"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
