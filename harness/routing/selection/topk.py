"""Top-k: each token takes the k experts of highest score + bias (the default rule), with two
options: group-limited routing (`n_group`, `topk_group`; DeepSeek-V3 node-limited routing) and
Sinkhorn-balanced selection in training (`sinkhorn_iters`; S-BASE, Megatron's sinkhorn)."""

from __future__ import annotations

import torch

import harness.routing.balancing as balancing
from harness.routing.params import Param
from harness.routing.selection.base import Selected, SelectionRule, register_selection


@register_selection("topk")
class TopK(SelectionRule):
    params = {
        # S-BASE / Megatron sinkhorn: in training, the top-k of the logits after this many Sinkhorn
        # iterations (every expert's column normalised to T/n); plain top-k at evaluation
        "sinkhorn_iters": Param(int, 0, "Sinkhorn iterations of the training selection; 0 disables it", low=0),
        # group-limited routing (DeepSeek-V3 node-limited, HF/Megatron n_group / topk_group)
        "n_group": Param(int, 1, "equal expert groups, each scored by the sum of its 2 best (biased) scores; "
                                 "1 disables group-limited routing", low=1),
        "topk_group": Param(int, 1, "the best groups whose experts are eligible", low=1),
    }

    def check(self, cfg) -> None:
        n_group, topk_group = self.param(cfg, "n_group"), self.param(cfg, "topk_group")
        if not topk_group <= n_group:
            raise ValueError(f"router.n_group = {n_group!r}, router.topk_group = {topk_group!r}: need n_group >= 1 "
                             "and 1 <= topk_group <= n_group")
        if self.param(cfg, "sinkhorn_iters") and cfg.bias_mode != "none":
            raise ValueError("router.sinkhorn_iters > 0 balances the selection itself: it needs selection = 'topk' and "
                             "bias_mode = 'none'")

    def check_layer(self, cfg, num_experts: int, top_k: int) -> None:
        n_group, topk_group = self.param(cfg, "n_group"), self.param(cfg, "topk_group")
        if num_experts % n_group or topk_group * (num_experts // n_group) < top_k:
            raise ValueError(f"router.n_group = {n_group} must divide model.num_experts = {num_experts}, and the "
                             f"router.topk_group = {topk_group} eligible groups must hold at least top_k = "
                             f"{top_k} experts (model.top_k)")

    def selection_scores(self, logits_TE, scores_TE, bias_E, cfg, training):
        iters = self.param(cfg, "sinkhorn_iters")
        if iters and training:  # NOTE: selection only; the gates stay the plain scores
            return balancing.sinkhorn(logits_TE.detach(), iters)
        return scores_TE.detach() + bias_E

    def select(self, biased_TE: torch.Tensor, top_k: int, cfg) -> Selected:
        n_group = self.param(cfg, "n_group")
        if n_group > 1:
            biased_TE = balancing.mask_ineligible_groups(biased_TE, n_group, self.param(cfg, "topk_group"))
        expert_ids_TK = biased_TE.topk(top_k, dim=-1).indices
        token_idx_A = torch.arange(biased_TE.shape[0], device=biased_TE.device).repeat_interleave(top_k)
        mask_TE = torch.zeros_like(biased_TE, dtype=torch.bool).scatter_(1, expert_ids_TK, True)
        return token_idx_A, expert_ids_TK.flatten(), mask_TE
