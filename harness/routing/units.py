"""The registries of methods: selection rules and bias controllers, by the name a config uses.

A small registry in the lm-evaluation-harness manner: a dict, a decorator that refuses a
duplicate name, and on a miss a ValueError that names the config key and lists what exists.
"""

from __future__ import annotations

from typing import Callable

from harness.routing.params import check_name


class UnitRegistry(dict):
    def __init__(self, kind: str, key: str, instantiate: bool):
        super().__init__()
        self.kind, self.key, self.instantiate = kind, key, instantiate  # e.g. "bias controller", "router.bias_mode"

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: register the class (or, for stateless rules, one instance) under `name`."""
        def decorate(cls: type) -> type:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            for param in cls.params:
                check_name(param, f"{self.kind} {name!r}")
            unit = cls() if self.instantiate else cls
            unit.name = name
            self[name] = unit
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self)

    def lookup(self, name: str):
        if name not in self:
            raise ValueError(f"{self.key} = {name!r} is not allowed; choose one of {self.names()}")
        return self[name]
