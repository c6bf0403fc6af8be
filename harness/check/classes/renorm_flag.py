"""Renormalisation as the flag says: with route_norm the chosen gates (and the mass on
zero-computation experts) sum to route_scale; without it they keep the scores' own sums."""

import torch

from harness.check.adapter import fact
from harness.check.base import Check, Outcome, register_check, route


@register_check("renorm_flag")
class RenormFlag(Check):
    source = "DeepSeek-V3 / Qwen3 norm_topk_prob (the flag's two meanings)"
    claim = "the weights sum to route_scale if route_norm is set, and vary across tokens if not"
    needs = ("route_norm",)

    def run(self, ctx):
        a = ctx.fresh()
        a.module.eval()
        T, E = 128, a.num_experts
        with torch.no_grad():
            r = route(a, ctx.tokens(a, T), seq_len=T)
        valid = r.valid_TK(E)
        sums = torch.where(valid, r.weights_TK.double(), 0).sum(dim=1)
        if r.rest_T is not None:
            sums = sums + r.rest_T.double()
        # NOTE: a token that lost an expert to capacity keeps the gates normalised over all k (Megatron)
        full = valid.sum(1) == a.top_k if fact(a, "capacity_factor") > 0 else valid.any(1)
        scale = float(fact(a, "route_scale"))
        if a.route_norm:
            gap = float((sums[full] - scale).abs().max()) if full.any() else 0.0
            if gap > 1e-4 * max(scale, 1.0):
                return Outcome("fail", f"route_norm is set but the weights sum to {float(sums[full].min()):.4g}.."
                                       f"{float(sums[full].max()):.4g}, not route_scale = {scale:g}")
            return Outcome("pass", f"sums within {gap:.1e} of {scale:g} on {int(full.sum())} tokens")
        spread = float(sums[full].std()) if int(full.sum()) > 1 else 0.0
        if spread < 1e-3:
            return Outcome("fail", f"route_norm is off but the weights sum to {float(sums[full].mean()):.4g} on every "
                                   f"token (std {spread:.1e}): they are renormalised")
        return Outcome("pass", f"sums vary as unnormalised scores do (std {spread:.3g})")
