"""One small registry for every kind of routing method: selection rules, bias controllers and
router presets, by the name a config uses (lm-evaluation-harness style).

A dict, a decorator that refuses a duplicate name, and on a miss a ValueError that names the
config key and lists what exists:

    SELECTIONS = Registry("selection rule", "router.selection")
    @SELECTIONS.register("topk")
    class TopK(SelectionRule): ...
    SELECTIONS.lookup("topk")      # the registered object; ValueError listing the names on a miss
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


class Registry(dict):
    every: list[Registry] = []  # all registries, so a method's settings can be checked against the others'

    def __init__(self, kind: str, key: str, miss: str = "{key} = {name!r} is not allowed; choose one of {names}",
                 prepare: Callable[[str, Any], Any] | None = None, reserved: dict[str, str] | None = None):
        super().__init__()
        self.kind, self.key, self.miss = kind, key, miss  # e.g. "bias controller", "router.bias_mode"
        self.prepare = prepare  # what is stored for a decorated object (e.g. an instance of a rule class)
        self.reserved = dict(reserved or {})  # names the harness gives a meaning of its own -> that meaning
        self.origins: dict[str, str] = {}  # name -> the file that registered it, for a duplicate's message
        Registry.every.append(self)

    def register(self, *names: str) -> Callable:
        """Decorator: register the object under each of `names`; it is returned unchanged."""
        def decorate(obj):
            where = _source_of(obj)
            for name in names:
                if name in self.reserved:
                    raise ValueError(f"{self.kind} {name!r} (in {where}) is a reserved name: {self.key} = {name!r} "
                                     f"means {self.reserved[name]}; choose another name")
                if name in self:
                    raise ValueError(f"{self.kind} {name!r} (in {where}) is already registered by "
                                     f"{self.origins.get(name, '?')}; choose another name")
                self[name] = self.prepare(name, obj) if self.prepare else obj
                self.origins[name] = where
            return obj

        return decorate

    def names(self) -> list[str]:
        return sorted(self)

    def lookup(self, name: str):
        if name not in self:
            raise ValueError(self.miss.format(key=self.key, name=name, names=self.names()))
        return self[name]


def _source_of(obj) -> str:
    try:
        return inspect.getsourcefile(obj) or getattr(obj, "__module__", "?")
    except TypeError:  # a built-in or an object made at run time
        return getattr(obj, "__module__", "?")


def declarations() -> list[tuple[str, dict]]:
    """(owner, its declared settings) of every registered method that has settings."""
    return [(f"{r.kind} {name!r}", unit.params) for r in Registry.every for name, unit in r.items()
            if getattr(unit, "params", None)]
