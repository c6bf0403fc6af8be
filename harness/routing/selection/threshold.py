"""Threshold (dynamic k, Su part 4): a token takes every expert whose score + bias is above 0,
so the number per token varies and may be 0; a controller sets the bias, and with it the budget."""

from __future__ import annotations

import torch

from harness.routing.selection.base import Selected, SelectionRule, register_selection


@register_selection("threshold")
class Threshold(SelectionRule):
    variable_k = True
    needs_controller = True
    # NOTE: softmax scores sum to 1 over the experts, so one threshold on them is a budget shared by
    # every expert, not a per-expert cut: no sensible meaning
    score_funcs = ("sigmoid", "relu", "softplus", "sqrtsoftplus")

    def select(self, biased_TE: torch.Tensor, top_k: int, cfg) -> Selected:
        mask_TE = biased_TE > 0
        token_idx_A, expert_idx_A = mask_TE.nonzero(as_tuple=True)
        return token_idx_A, expert_idx_A, mask_TE
