"""Top-k: each token takes the k experts of highest score + bias (the default rule)."""

from __future__ import annotations

import torch

from harness.routing.selection import Selected, SelectionRule, register_selection


@register_selection("topk")
class TopK(SelectionRule):
    def select(self, biased_TE: torch.Tensor, top_k: int, cfg) -> Selected:
        expert_ids_TK = biased_TE.topk(top_k, dim=-1).indices
        token_idx_A = torch.arange(biased_TE.shape[0], device=biased_TE.device).repeat_interleave(top_k)
        mask_TE = torch.zeros_like(biased_TE, dtype=torch.bool).scatter_(1, expert_ids_TK, True)
        return token_idx_A, expert_ids_TK.flatten(), mask_TE
