"""The targets `moe-harness check` takes, each turned into a factory of fresh adapters:

    loss_free                         a harness preset: its Router (E = 8, k = 2, D = 32)
    family:qwen3_moe                  a transformers family's own gate, untouched (the last MoE layer)
    module:path/to/file.py:factory    a user's adapter (harness/check/adapter.py says what it provides)

Any other target, a file or factory that is missing, a factory that raises, or an adapter that lacks
what the checks need is a ValueError naming the problem and the allowed forms.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import torch

from harness.check.adapter import Routed, validate
from harness.routing import ROUTERS, Router, get_router_config
from harness.routing.router import recomputing

FORMS = "a harness preset (e.g. loss_free), family:NAME, or module:path/to/file.py:factory"
NUM_EXPERTS, TOP_K, DIM = 8, 2, 32


class HarnessAdapter:
    """A harness preset's Router, with the trainer's bookkeeping: counts summed over a step's forwards
    (float32, as the trainer sums them), and the balancing update from them."""

    def __init__(self, preset: str):
        from harness.engine.families.gates import padded

        self._padded = padded
        self.router = Router(DIM, NUM_EXPERTS, TOP_K, get_router_config(preset))
        self.module, self.num_experts, self.top_k, self.dim = self.router, NUM_EXPERTS, TOP_K, DIM
        cfg = self.router.cfg
        self.score_func, self.route_norm, self.route_scale = cfg.score_func, cfg.route_norm, cfg.route_scale
        self.aux_coef, self.capacity_factor = cfg.aux_alpha, cfg.capacity_factor
        groups = (cfg.params.get("n_group", 1), cfg.params.get("topk_group", 1))
        self.groups = groups if groups[0] > 1 else None
        # NOTE: capacity drops depend on the other tokens of the batch; hash on the token's id, not its vector
        self.per_token = cfg.rule.causal and not cfg.rule.by_token_id and cfg.capacity_factor == 0
        self.fixed_k = not (cfg.rule.variable_k or self.router.zero_experts or cfg.capacity_factor > 0)
        self._pending, self._tokens = torch.zeros(NUM_EXPERTS), 0
        # NOTE: the buffer is there always; a preset without a balancing method has no bias and no update
        has_bias = cfg.bias_mode != "none"
        self.bias = self.router.expert_bias if has_bias else None
        self.set_bias = self._set_bias if has_bias else None
        if not has_bias:
            self.step = self.pending_counts = None

    def _set_bias(self, b_E: torch.Tensor) -> None:
        with torch.no_grad():
            self.router.expert_bias.copy_(b_E)
            self.router.bias_ready.fill_(True)
        self.router._bias_ready_seen = True

    def route(self, x_TD: torch.Tensor, seq_len: int | None = None) -> Routed:
        T = x_TD.shape[0]
        token_ids = torch.arange(T, device=x_TD.device)  # NOTE: for a rule that routes by token id (hash)
        out = self.router(x_TD, seq_len=seq_len, token_ids=token_ids)
        if self.router.training and not recomputing():
            self._pending += out.counts_E.detach().float()
            self._tokens += T
        ids_TK, weights_TK = self._padded(out, T, NUM_EXPERTS)
        return Routed(ids_TK, weights_TK, out.logits_TE, out.counts_E, out.aux_losses, out.identity_T)

    def pending_counts(self) -> torch.Tensor:
        return self._pending

    def step(self, num_tokens: int | None = None) -> None:
        self.router.balance_update(self._pending.clone(), num_tokens or max(self._tokens, 1))
        self._pending.zero_()
        self._tokens = 0


class FamilyAdapter:
    """A transformers family's own gate, untouched: the gate of its last MoE layer, in a tiny model
    (E = 8, k = 2, D = 32); its selection bias where it has one (e_score_correction_bias)."""

    def __init__(self, family: str):
        from harness.engine.families import FamilyLM
        from harness.engine.families.resolve import family_router
        from harness.engine.model import model_config

        model = model_config("tiny", family=family, dim=DIM, num_heads=2, seq_len=16, expert_hidden=32, num_layers=2)
        cfg = family_router("native", model, {})
        self.gate = FamilyLM(model, cfg, native=True).gates[-1]  # NOTE: a NativeGate: what it chose, recorded
        self.module = self.gate.native
        self.num_experts, self.top_k, self.dim = model.num_experts, model.top_k, model.dim
        self.score_func, self.route_norm, self.route_scale = cfg.score_func, cfg.route_norm, cfg.route_scale
        groups = (getattr(self.module, "num_group", 1), getattr(self.module, "topk_group", 1))
        self.groups = groups if groups[0] > 1 else None
        self.fixed_k = not model.family_class.zero_experts  # NOTE: zero experts take some of a token's k
        self.bias = getattr(self.module, "e_score_correction_bias", None)
        self.set_bias = self._set_bias if self.bias is not None else None

    def _set_bias(self, b_E: torch.Tensor) -> None:
        with torch.no_grad():
            self.bias[:self.num_experts].copy_(b_E)  # NOTE: the FFN experts' (LongCat's zero experts' stay)

    def route(self, x_TD: torch.Tensor, seq_len: int | None = None) -> Routed:
        logits_TE, weights_TK, ids_TK = self.gate(x_TD)
        out = self.gate.last_route
        return Routed(ids_TK, weights_TK, logits_TE[:, :self.num_experts], out.counts_E, None, out.identity_T)


def load_module(spec: str) -> Callable[[], object]:
    """`path/to/file.py:factory` -> the factory, imported from the file."""
    path, _, factory = spec.rpartition(":")
    if not path or not factory:
        raise ValueError(f"module:{spec} must be module:path/to/file.py:factory (the file, a colon, the factory's "
                         "name)")
    if not Path(path).is_file():
        raise ValueError(f"module:{spec}: no file {path!r}")
    loader = importlib.util.spec_from_file_location(f"moe_check_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(loader)
    try:
        loader.loader.exec_module(module)
    except Exception as err:
        raise ValueError(f"module:{spec}: importing {path} raised {type(err).__name__}: {err}") from err
    if not callable(getattr(module, factory, None)):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"module:{spec}: {path} has no callable {factory!r}; its callables: {names}")
    return getattr(module, factory)


def factory(target: str) -> Callable[[], object]:
    """A function that builds a fresh adapter of `target`, validated once here (ValueError on bad input)."""
    if target.startswith("family:"):
        from harness.engine.families import family_names

        name = target.removeprefix("family:")
        families = family_names()[1:]
        if name not in families:
            raise ValueError(f"target {target!r}: unknown family {name!r}; choose one of {families}")
        make = lambda: FamilyAdapter(name)  # noqa: E731
    elif target.startswith("module:"):
        make = load_module(target.removeprefix("module:"))
    elif target in ROUTERS.names():
        make = lambda: HarnessAdapter(target)  # noqa: E731
    else:
        raise ValueError(f"target {target!r} is not allowed: give {FORMS}; presets: {ROUTERS.names()}")
    try:
        adapter = make()
    except Exception as err:
        raise ValueError(f"target {target!r}: building the adapter raised {type(err).__name__}: {err}") from err
    validate(adapter)
    return make
