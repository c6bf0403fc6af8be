"""A router that returns probabilities where logits are expected: the caller's softmax then makes a
double softmax (transformers issue 45120), and a z-loss on them is meaningless."""

import torch

from harness.check.base import Check, Outcome, register_check, route


@register_check("logits_raw")
class LogitsRaw(Check):
    source = "transformers issue 45120"
    claim = "the returned logits are raw logits, not probabilities"

    def run(self, ctx):
        a = ctx.fresh()
        a.module.eval()
        T = 128
        with torch.no_grad():
            logits = route(a, ctx.tokens(a, T, scale=4.0), seq_len=T).logits_TE.float()
        lo, hi = float(logits.min()), float(logits.max())
        sums = logits.sum(dim=-1)
        if lo >= 0 and hi <= 1:
            rows = "rows sum to 1" if torch.allclose(sums, torch.ones_like(sums), atol=1e-4) else "in [0, 1]"
            return Outcome("fail", f"every logit lies in [{lo:.3g}, {hi:.3g}] ({rows}) on inputs of scale 4: "
                                   "probabilities, not logits")
        return Outcome("pass", f"logits span [{lo:.3g}, {hi:.3g}]")
