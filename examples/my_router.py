"""An example of checking your own router: a small hand-written MoE router (sigmoid top-k with
group-limited routing, a Loss-Free selection bias and a sequence-wise aux loss) and the adapter
that `moe-harness check` sees it through. Run:

    moe-harness check module:examples/my_router.py:build

To check yours, keep `Adapter` and make `route` call your router; harness/check/adapter.py lists
what each attribute means. A router that lacks something (no bias, no padding mask) leaves the
attribute out, and the classes that need it report "n/a".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.check import Routed, recomputing


class TopKRouter(nn.Module):
    """Sigmoid scores, bias-steered group-limited top-k, gates renormalised over the k chosen."""

    def __init__(self, dim: int, num_experts: int, top_k: int, n_group: int, topk_group: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_experts, dim) / dim ** 0.5)
        self.register_buffer("bias", torch.zeros(num_experts))  # float32, saved with the state_dict
        self.top_k, self.n_group, self.topk_group = top_k, n_group, topk_group

    def logits(self, x_TD):
        with torch.autocast(x_TD.device.type, enabled=False):  # the gate in float32, also under bf16
            return F.linear(x_TD.float(), self.weight.float())

    def select(self, scores_TE):
        biased_TE = scores_TE + self.bias
        grouped = biased_TE.view(len(biased_TE), self.n_group, -1)
        best_G = grouped.topk(2, dim=-1).values.sum(-1).topk(self.topk_group, dim=-1).indices
        keep = torch.zeros_like(grouped[..., 0], dtype=torch.bool).scatter_(1, best_G, True)
        biased_TE = grouped.masked_fill(~keep.unsqueeze(-1), -torch.inf).view_as(biased_TE)
        return biased_TE.topk(self.top_k, dim=-1).indices

    def forward(self, x_TD):
        logits_TE = self.logits(x_TD)
        scores_TE = torch.sigmoid(logits_TE)
        ids_TK = self.select(scores_TE.detach())
        weights_TK = scores_TE.gather(1, ids_TK)  # the unbiased scores: the bias only selects
        return logits_TE, scores_TE, ids_TK, weights_TK / weights_TK.sum(-1, keepdim=True)


class Adapter:
    """What the checks need: route() and the facts; the bias, its update and the pending counts."""

    score_func, route_norm, handles_padding = "sigmoid", True, True

    def __init__(self, dim=32, num_experts=8, top_k=2, groups=(4, 2), aux_coef=1e-2, bias_rate=1e-3):
        self.module = TopKRouter(dim, num_experts, top_k, *groups)
        self.dim, self.num_experts, self.top_k, self.groups = dim, num_experts, top_k, groups
        self.aux_coef, self.bias_rate = aux_coef, bias_rate
        self.bias = self.module.bias
        self._pending = torch.zeros(num_experts, dtype=torch.float64)

    def set_bias(self, b_E):
        with torch.no_grad():
            self.bias.copy_(b_E)

    def route(self, x_TD, seq_len=None, pad_T=None):
        logits_TE, scores_TE, ids_TK, weights_TK = self.module(x_TD)
        real_T = torch.ones(len(x_TD), dtype=torch.bool) if pad_T is None else ~pad_T
        counts_E = torch.bincount(ids_TK[real_T].flatten(), minlength=self.num_experts).float()
        if self.module.training and not recomputing():  # eval and a recomputed forward add nothing
            self._pending += counts_E.double()
        aux = {"aux_loss": self.aux_coef * self.sequence_aux(scores_TE, ids_TK, real_T, seq_len or len(x_TD))}
        return Routed(ids_TK, weights_TK, logits_TE, counts_E, aux if self.module.training else None)

    def sequence_aux(self, scores_TE, ids_TK, real_T, seq_len):
        """DeepSeek-V3's sequence-wise loss E/k sum_i f_i P_i, averaged over sequences, padding left out."""
        E, k = self.num_experts, self.top_k
        chosen_TE = torch.zeros_like(scores_TE).scatter_(1, ids_TK, 1.0) * real_T[:, None]
        probs_TE = scores_TE / scores_TE.sum(-1, keepdim=True) * real_T[:, None]
        real_S = real_T.view(-1, seq_len).sum(1, keepdim=True).clamp_min(1)
        f_SE = chosen_TE.view(-1, seq_len, E).sum(1) * E / (k * real_S)
        p_SE = probs_TE.view(-1, seq_len, E).sum(1) / real_S
        return (f_SE * p_SE).sum(-1).mean()

    def pending_counts(self):
        return self._pending

    def step(self, num_tokens=None):
        """Loss-Free: raise the bias of experts below the mean load, lower it above."""
        with torch.no_grad():
            self.bias += self.bias_rate * torch.sign(self._pending.mean() - self._pending).float()
        self._pending.zero_()


def build() -> Adapter:
    return Adapter()
