"""Parameters a selection rule or a bias controller declares for itself.

A unit lists its own knobs in `params = {"name": Param(float, 0.9, "what it does", low=0, high=1)}`;
a suite, a sweep or `--set` then sets them as `router.<name>`, like any router field. They are
checked against the declaration (type, bounds, choices), refused with the allowed names when the
chosen rule and controller do not declare them, and written to the run row as `router.<name>`
(with the default where unset) so the tables say what ran. A config that uses no declared
parameter keeps the run_id it had before parameters existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    type: type  # float, int, bool or str
    default: Any
    help: str  # one line: what it does
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple = ()  # allowed values for a str

    def check(self, key: str, value: Any) -> Any:
        """The value, as its type, or ValueError naming `key` and what is allowed."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {float: number, int: number and isinstance(value, int), bool: isinstance(value, bool),
              str: isinstance(value, str)}[self.type]
        if not ok:
            raise ValueError(f"{key} expects a value of type {self.type.__name__}, got {value!r} ({self.help})")
        if self.choices and value not in self.choices:
            raise ValueError(f"{key} = {value!r} is not allowed; choose one of {list(self.choices)}")
        if number and (not math.isfinite(value) or (self.low is not None and value < self.low)
                       or (self.high is not None and value > self.high)):
            raise ValueError(f"{key} = {value!r} must be a finite number in [{self.low if self.low is not None else '-inf'}, "
                             f"{self.high if self.high is not None else 'inf'}] ({self.help})")
        return float(value) if self.type is float else value


def declared() -> dict[str, Param]:
    """Every parameter any registered rule or controller declares (name -> declaration)."""
    from harness.routing.controllers import CONTROLLERS
    from harness.routing.selection import SELECTIONS

    out: dict[str, Param] = {}
    for unit in [*SELECTIONS.values(), *CONTROLLERS.values()]:
        out.update(unit.params)
    return out


def units_params(cfg) -> dict[str, Param]:
    """The parameters the config's own rule and controller declare."""
    from harness.routing.controllers import get_controller
    from harness.routing.selection import get_selection

    return {**get_selection(cfg.selection).params, **get_controller(cfg.bias_mode).params}


def check_params(cfg) -> None:
    """Each set parameter belongs to the chosen rule or controller and fits its declaration."""
    mine = units_params(cfg)
    for name, value in cfg.params.items():
        if name not in mine:
            raise ValueError(f"router.{name} is not a parameter of router.selection = {cfg.selection!r} or "
                             f"router.bias_mode = {cfg.bias_mode!r}; theirs: {sorted(mine) or 'none'}")
        cfg.params[name] = mine[name].check(f"router.{name}", value)


def resolved_params(cfg) -> dict[str, Any]:
    """Every parameter of the chosen rule and controller, set or default (the run row's router.<name>)."""
    return {name: cfg.params.get(name, param.default) for name, param in units_params(cfg).items()}


def check_name(name: str, owner: str) -> None:
    """A declared parameter may not shadow a router field (it would be ambiguous in router.<name>)."""
    from harness.routing.config import router_fields

    if name in router_fields():
        raise ValueError(f"{owner} declares parameter {name!r}, which is already a router field; rename it")
