"""The adapter a checked router is seen through: a few attributes and one method, duck-typed, so
that a router from any code base (torchtitan, Megatron, a hand-written one) is checked in a few
lines of glue. `examples/my_router.py` is one.

Required:
    num_experts, top_k, dim      ints: routed experts E, experts per token k, model width D
    module                       the torch.nn.Module that routes (train/eval, parameters, state_dict)
    route(x_TD, seq_len=None)    -> Routed (or the tuple (ids_TK, weights_TK, logits_TE, ...));
                                 a `pad_T` keyword where it masks padding (handles_padding)

Optional, where the router has them (a check that needs one is "n/a" without it, never a pass):
    bias, set_bias(b_E)          the selection bias (the tensor itself), and a way to set it
    pending_counts()             [E] the counts gathered since the last step, what the update reads
    step(num_tokens)             apply the balancing update from those counts, and reset them

Facts, read where present:
    score_func                   the name of its score function (softmax, sigmoid, ...)
    route_norm, route_scale      whether the chosen gates are renormalised, and their scale
    groups                       (n_group, topk_group) of group-limited routing; None: none
    aux_coef                     the aux loss coefficient (> 0: an aux loss must be returned)
    per_token                    a token's experts depend on that token alone (default True)
    fixed_k                      exactly k experts per token (default True)
    handles_padding              route() takes pad_T [T] bool, True for a padding token (default False)
    capacity_factor              > 0: assignments over an expert's capacity are dropped (default 0)
"""

from __future__ import annotations

from dataclasses import dataclass
import inspect

import torch
from torch import nn

REQUIRED = {
    "num_experts": "the number of routed experts E (int)",
    "top_k": "the experts per token k (int)",
    "dim": "the model width D of route()'s input (int)",
    "module": "the torch.nn.Module that routes (its parameters, buffers, train/eval and state_dict)",
    "route": "route(x_TD, seq_len=None) -> Routed(ids_TK, weights_TK, logits_TE, counts_E=None, aux=None)",
}
DEFAULTS = {"score_func": None, "route_norm": None, "route_scale": 1.0, "groups": None, "aux_coef": 0.0,
            "per_token": True, "fixed_k": True, "handles_padding": False, "capacity_factor": 0.0}


@dataclass
class Routed:
    """What one route() call chose: ids >= num_experts (or < 0) mark an empty slot."""

    ids_TK: torch.Tensor  # [T, K] long: the experts of each token
    weights_TK: torch.Tensor  # [T, K]: their gate weights (0 in an empty slot)
    logits_TE: torch.Tensor  # [T, E]: the gate's raw logits, before any score function
    counts_E: torch.Tensor | None = None  # [E]: assignments per expert, as the balancing reads them
    aux: dict[str, torch.Tensor] | None = None  # the aux losses, already multiplied by their coefficients
    rest_T: torch.Tensor | None = None  # [T]: gate mass on zero-computation experts (0 when none)

    def valid_TK(self, num_experts: int) -> torch.Tensor:
        return (self.ids_TK >= 0) & (self.ids_TK < num_experts)

    def aux_total(self) -> torch.Tensor | None:
        return sum(self.aux.values()) if self.aux else None


def as_routed(out) -> Routed:
    if isinstance(out, Routed):
        return out
    if isinstance(out, (tuple, list)) and 3 <= len(out) <= 6:
        aux = out[4] if len(out) > 4 else None
        aux = {"aux_loss": aux} if isinstance(aux, torch.Tensor) else aux
        return Routed(out[0], out[1], out[2], out[3] if len(out) > 3 else None, aux, out[5] if len(out) > 5 else None)
    raise ValueError(f"route() must return a Routed (or a tuple (ids_TK, weights_TK, logits_TE[, counts_E, aux])); "
                     f"got {type(out).__name__}")


def validate(adapter) -> None:
    """ValueError naming each required attribute the adapter lacks, with what it must provide."""
    missing = [f"{name}: {what}" for name, what in REQUIRED.items() if not hasattr(adapter, name)]
    if missing:
        raise ValueError(f"the adapter ({type(adapter).__name__}) lacks what a check needs; provide "
                         + "; ".join(missing) + " (see harness/check/adapter.py)")
    if not isinstance(adapter.module, nn.Module):
        raise ValueError(f"adapter.module must be a torch.nn.Module; got {type(adapter.module).__name__}")
    if not callable(adapter.route):
        raise ValueError("adapter.route must be a method route(x_TD, seq_len=None) -> Routed")
    for name in ("num_experts", "top_k", "dim"):
        if not isinstance(getattr(adapter, name), int) or getattr(adapter, name) < 1:
            raise ValueError(f"adapter.{name} must be a positive int; got {getattr(adapter, name)!r}")
    if adapter.top_k > adapter.num_experts:
        raise ValueError(f"adapter.top_k = {adapter.top_k} must be at most num_experts = {adapter.num_experts}")
    if fact(adapter, "handles_padding") and "pad_T" not in inspect.signature(adapter.route).parameters:
        raise ValueError("adapter.handles_padding is True but route() takes no pad_T keyword")


def fact(adapter, name: str):
    """A fact of the adapter, or its default (DEFAULTS)."""
    return getattr(adapter, name, DEFAULTS[name])


def has(adapter, *names: str) -> bool:
    return all(getattr(adapter, name, None) is not None for name in names)
