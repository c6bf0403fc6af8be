"""Top-k: each token takes the k experts of highest score + bias (the default rule), with two
options: group-limited routing (`n_group`, `topk_group`; DeepSeek-V3 node-limited routing) and
Sinkhorn-balanced selection in training (`sinkhorn_iters`; S-BASE, Megatron's sinkhorn)."""

from __future__ import annotations

import torch

from harness.routing import balancing
from harness.routing.selection import Selected, SelectionRule, register_selection


@register_selection("topk")
class TopK(SelectionRule):
    def check_layer(self, cfg, num_experts: int, top_k: int) -> None:
        if num_experts % cfg.n_group or cfg.topk_group * (num_experts // cfg.n_group) < top_k:
            raise ValueError(f"router.n_group = {cfg.n_group} must divide model.num_experts = {num_experts}, and the "
                             f"router.topk_group = {cfg.topk_group} eligible groups must hold at least top_k = "
                             f"{top_k} experts (model.top_k)")

    def selection_scores(self, logits_TE, scores_TE, bias_E, cfg, training):
        if cfg.sinkhorn_iters and training:  # NOTE: selection only; the gates stay the plain scores
            return balancing.sinkhorn(logits_TE.detach(), cfg.sinkhorn_iters)
        return scores_TE.detach() + bias_E

    def select(self, biased_TE: torch.Tensor, top_k: int, cfg) -> Selected:
        if cfg.n_group > 1:
            biased_TE = balancing.mask_ineligible_groups(biased_TE, cfg.n_group, cfg.topk_group)
        expert_ids_TK = biased_TE.topk(top_k, dim=-1).indices
        token_idx_A = torch.arange(biased_TE.shape[0], device=biased_TE.device).repeat_interleave(top_k)
        mask_TE = torch.zeros_like(biased_TE, dtype=torch.bool).scatter_(1, expert_ids_TK, True)
        return token_idx_A, expert_ids_TK.flatten(), mask_TE
