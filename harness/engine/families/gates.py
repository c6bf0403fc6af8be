"""The router swap: what sits in a family's MoE block where its own gate was.

A family's sparse block calls `self.gate(hidden)` for (router logits, top-k weights [T, k], top-k
expert ids [T, k]) and hands the last two to its experts, which skip the id n (no expert). The
harness's `SwappedGate` answers that call with a harness Router (any registered rule and
controller): its assignments are written as [T, kmax] ids and weights, a token with fewer experts
padded with id n and weight 0, so variable k, drops and expert choice reach the family's experts
unchanged. `NativeGate` keeps the family's own gate (`router = "native"`) and only reads what it
chose. Both expose what the trainer, the evaluator and the run's metrics read from a harness MoE
layer: `router` (its bias, its balancing update) and `last_route` (a RouterOutput).

Legend: T = tokens, D = width, E = routed experts, K = the most experts a token got, A = assignments.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.routing import Router, RouterConfig, RouterOutput, get_router_config
from harness.routing.router import SCORE_FUNCS, split_zero

def padded(route: RouterOutput, num_tokens: int, empty_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([T, K] expert ids, [T, K] weights) of a route's assignments, token-major; K the most any token
    has, at least 2; unused slots id `empty_id` (the block's "no expert") and weight 0."""
    per_token_T = torch.bincount(route.token_idx_A, minlength=num_tokens)
    # NOTE: at least 2 slots: a width of 1 is a shape torch.compile specialises on (0/1
    # specialisation), so a step where every token got one expert would compile anew
    width = max(2, int(per_token_T.max())) if len(route.token_idx_A) else 2
    slot_A = torch.arange(len(route.token_idx_A), device=per_token_T.device) - (
        per_token_T.cumsum(0) - per_token_T)[route.token_idx_A]
    ids_TK = torch.full((num_tokens, width), empty_id, dtype=torch.long, device=per_token_T.device)
    weights_TK = torch.zeros(num_tokens, width, dtype=route.gate_A.dtype, device=per_token_T.device)
    ids_TK[route.token_idx_A, slot_A] = route.expert_idx_A
    weights_TK = weights_TK.index_put((route.token_idx_A, slot_A), route.gate_A)  # NOTE: out of place: a gradient
    return ids_TK, weights_TK


class SwappedGate(nn.Module):
    """A harness Router in a family's MoE block, starting from the family gate's initial weight."""

    def __init__(self, native: nn.Module, dim: int, num_experts: int, top_k: int, cfg: RouterConfig):
        super().__init__()
        self.router = Router(dim, num_experts, top_k, cfg)
        with torch.no_grad():  # NOTE: the FFN experts' rows, then as many zero experts' as both have (LongCat's)
            rows = min(len(native.weight), len(self.router.gate.weight))
            self.router.gate.weight[:rows].copy_(native.weight[:rows])
            if self.router.gate.bias is not None and getattr(native, "bias", None) is not None:
                self.router.gate.bias.copy_(native.bias)  # gpt-oss's router bias term
        self.num_experts, self.dim = num_experts, dim
        # the id the block's experts skip: E for most families; a block that maps ids past E to
        # identity experts (LongCat's) sets its own, or every empty slot costs a row of expert 0
        self.empty_id = num_experts
        # exactly k experts per token, token-major, whatever the batch: the ids and weights go to the
        # family's experts as views, with no padded slot for them to mask
        self.fixed_k = not (cfg.capacity_factor > 0 or self.router.selection.variable_k or self.router.zero_experts)
        # exactly k choices per token over the FFN and zero-computation experts: handed over as [T, k]
        # with the zero experts' ids (E + z), as the family's own router does (LongCat's block takes them)
        self.zero_slots = bool(self.router.zero_experts) and not (cfg.capacity_factor > 0
                                                                  or self.router.selection.variable_k)
        self.seq_len: int | None = None  # the batch's sequence length (the family passes [T, D] tokens)
        self.token_ids: torch.Tensor | None = None  # the batch's token ids [B, L], for a rule that routes by them
        self.last_route: RouterOutput | None = None

    def forward(self, hidden):
        x_TD = hidden.reshape(-1, self.dim)
        ids = None if self.token_ids is None else self.token_ids.reshape(-1)
        route = self.router(x_TD, seq_len=self.seq_len, token_ids=ids)
        self.last_route = route
        if self.fixed_k:  # NOTE: a view fails loudly if a route ever breaks the promise
            ids_TK = route.expert_idx_A.view(x_TD.shape[0], self.router.top_k)
            weights_TK = route.gate_A.view(x_TD.shape[0], self.router.top_k)
        elif self.zero_slots:
            ids_TK, weights_TK = route.slots_TK
        else:
            ids_TK, weights_TK = padded(route, x_TD.shape[0], self.empty_id)
        return route.scores_TE, weights_TK.to(x_TD.dtype), ids_TK


class NativeRouter(nn.Module):
    """The part of a harness Router the trainer and evaluator use, for a family's own gate: a bias
    that stays 0 and a balancing update that does nothing (the family's router has no controller)."""

    causal_topk = False

    def __init__(self, num_experts: int):
        super().__init__()
        self.register_buffer("expert_bias", torch.zeros(num_experts), persistent=False)

    def balance_update(self, counts_E, num_tokens: int, progress: float = 0.0) -> None:
        return None


class NativeGate(nn.Module):
    """A family's own gate, untouched, with what it chose recorded as a RouterOutput."""

    def __init__(self, native: nn.Module, num_experts: int, scores: str, zero_experts: int = 0):
        super().__init__()
        # NOTE: the score function of the preset the family's own routing is written as (its native_preset)
        self.native, self.num_experts, self.zero_experts = native, num_experts, zero_experts
        self.scores = SCORE_FUNCS[get_router_config(scores).score_func]
        self.router = NativeRouter(num_experts)
        self.seq_len: int | None = None
        self.last_route: RouterOutput | None = None

    def forward(self, hidden, *extra):  # NOTE: extra: what the block hands its gate beside (the token ids)
        logits, weights_TK, ids_TK = self.native(hidden, *extra)
        tokens, k = ids_TK.shape
        token_A, expert_A = torch.arange(tokens, device=ids_TK.device).repeat_interleave(k), ids_TK.reshape(-1)
        gate_A, identity_T = weights_TK.reshape(-1).float(), None
        scores_TE = self.scores(logits.float())
        if self.zero_experts:  # NOTE: ids >= E are identity experts (LongCat's): their mass, not an assignment
            token_A, expert_A, gate_A, identity_T = split_zero(token_A, expert_A, gate_A, self.num_experts, tokens)
            scores_TE = scores_TE[:, :self.num_experts]
        counts_E = torch.bincount(expert_A, minlength=self.num_experts).float()
        self.last_route = RouterOutput(token_A, expert_A, gate_A, counts_E, scores_TE, {}, None, counts_E.long(),
                                       identity_T)
        return logits, weights_TK, ids_TK
