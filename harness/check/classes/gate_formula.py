"""The gate weights are the stated score function of the logits, up to a per-token factor
(renormalisation, scaling): a second softmax over probabilities (transformers issue 45120) or a
score function other than the stated one breaks the proportion."""

import torch

from harness.check.base import Check, Outcome, register_check, route
from harness.routing.router import SCORE_FUNCS


@register_check("gate_formula")
class GateFormula(Check):
    source = "transformers issue 45120"
    claim = "weights / score_func(logits) is constant within each token (no double softmax)"
    needs = ("score_func",)

    def run(self, ctx):
        a = ctx.fresh()
        if a.score_func not in SCORE_FUNCS:
            return Outcome("n/a", f"score_func {a.score_func!r} is not one of {sorted(SCORE_FUNCS)}")
        a.module.eval()
        T, E = 128, a.num_experts
        with torch.no_grad():
            r = route(a, ctx.tokens(a, T), seq_len=T)
        scores = SCORE_FUNCS[a.score_func](r.logits_TE.double())
        valid = r.valid_TK(E) & (r.weights_TK != 0)
        ratio = r.weights_TK.double() / scores.gather(1, torch.where(valid, r.ids_TK, 0))
        rows = valid.sum(dim=1) >= 2
        if not rows.any():
            return Outcome("n/a", "no token got two experts: one weight has no proportion to check")
        ratio = torch.where(valid, ratio, float("nan"))[rows]
        hi, lo = ratio.nan_to_num(-torch.inf).amax(1), ratio.nan_to_num(torch.inf).amin(1)
        spread = float(((hi - lo) / hi.abs().clamp_min(1e-30)).max())
        if spread > 1e-4:
            return Outcome("fail", f"weights / {a.score_func}(logits) varies by up to {spread:.3g} (relative) within "
                                   f"a token: the weights are not {a.score_func} of the returned logits")
        return Outcome("pass", f"ratio constant within each of {int(rows.sum())} tokens to {spread:.1e}")
