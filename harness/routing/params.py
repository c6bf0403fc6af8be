"""Settings a selection rule or a bias controller declares for itself.

A method lists its own knobs where it is defined, `params = {"name": Param(float, 0.9, "what it does",
low=0, high=1)}`; a suite, a sweep or `--set` sets them as `router.<name>`, like a router field.
Resolving a router (resolve.py) checks each one it is given against the declaration of the chosen
rule or controller (type, bounds, choices) and refuses one that neither declares, naming the
methods that do. Methods that read the same knob share one declaration (the controllers'
`BIAS_RATE`), so it means one thing in every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Param:
    type: type  # float, int, bool or str
    default: Any
    help: str  # one line: what it does
    low: float | None = None  # bounds for numbers, inclusive (high exclusive with high_open)
    high: float | None = None
    choices: tuple = ()  # allowed values for a str
    high_open: bool = False

    def check(self, key: str, value: Any) -> Any:
        """The value, as its type, or ValueError naming `key` and what is allowed."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {float: number, int: number and isinstance(value, int), bool: isinstance(value, bool),
              str: isinstance(value, str)}[self.type]
        if not ok:
            raise ValueError(f"{key} expects a value of type {self.type.__name__}, got {value!r} ({self.help})")
        if self.choices and value not in self.choices:
            raise ValueError(f"{key} = {value!r} is not allowed; choose one of {list(self.choices)}")
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if number and (not math.isfinite(value) or (self.low is not None and value < self.low) or above):
            low = self.low if self.low is not None else "-inf"
            high = self.high if self.high is not None else "inf"
            raise ValueError(f"{key} = {value!r} must be a finite number in [{low}, {high}{')' if self.high_open else ']'} "
                             f"({self.help})")
        return float(value) if self.type is float else value


def check_declarations(owner: str, params: dict[str, Param], reserved: list[str],
                       others: Iterable[tuple[str, dict[str, Param]]]) -> None:
    """A method's settings may not shadow a router field (router.<name> would be ambiguous), and one
    that another method declares too must be the same declaration (one meaning per row column)."""
    for name, param in params.items():
        if name in reserved:
            raise ValueError(f"{owner} declares parameter {name!r}, which is already a router field; rename it")
        for other_owner, other in others:
            if name in other and other[name] != param:
                raise ValueError(f"{owner} declares router.{name} unlike {other_owner} does; use the same declaration "
                                 "(the controllers' shared ones: BIAS_RATE, BIAS_FREEZE in harness.routing.controllers)")
