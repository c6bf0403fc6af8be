"""Group-limited routing masks the groups left out with -inf: filled with 0, they beat every expert
whose biased score is negative (sglang PR 3705)."""

import torch

from harness.check.base import Check, Outcome, register_check, route
from harness.routing.router import SCORE_FUNCS


def top_groups(biased_TE, n_group, topk_group, how):
    grouped = biased_TE.view(biased_TE.shape[0], n_group, -1)
    score = grouped.max(-1).values if how == "max" else grouped.topk(min(2, grouped.shape[-1]), -1).values.sum(-1)
    return score.topk(topk_group, dim=-1).indices


@register_check("group_mask")
class GroupMask(Check):
    source = "sglang PR 3705"
    claim = "with every biased score negative, each token's experts lie in its topk_group best groups"
    needs = ("groups", "bias")

    def run(self, ctx):
        a = ctx.fresh()
        a.module.eval()
        T, E = 128, a.num_experts
        n_group, topk_group = a.groups
        offset = torch.full((E,), -10.0) + 0.01 * torch.randn(E, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            a.set_bias(offset)
            r = route(a, ctx.tokens(a, T), seq_len=T)
        biased = SCORE_FUNCS.get(a.score_func, torch.sigmoid)(r.logits_TE.float()) + offset
        group_of = torch.where(r.valid_TK(E), r.ids_TK, 0) // (E // n_group)
        outside = []
        for how in ("sum_top2", "max"):  # NOTE: DeepSeek-V3 scores a group by its 2 best, V2 by its best
            allowed = top_groups(biased, n_group, topk_group, how)
            inside = (group_of.unsqueeze(-1) == allowed.unsqueeze(1)).any(-1) | ~r.valid_TK(E)
            outside.append(~inside.all(dim=1))
        bad = outside[0] & outside[1]
        used = max(torch.unique(g[v]).numel() for g, v in zip(group_of, r.valid_TK(E)))
        if bad.any() or int(used) > topk_group:
            t = int(bad.nonzero()[0]) if bad.any() else 0
            return Outcome("fail", f"{int(bad.sum())} of {T} tokens got experts outside their best {topk_group} of "
                                   f"{n_group} groups (token {t}: experts {r.ids_TK[t].tolist()}); up to {int(used)} "
                                   "groups per token: masked groups are not -inf")
        return Outcome("pass", f"every token within its {topk_group} best of {n_group} groups")
