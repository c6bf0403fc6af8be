"""Selection at exact ties is deterministic: the same input routes the same way every time, and
(for a router that routes each token alone) identical tokens the same way (vLLM PR 55514)."""

import torch

from harness.check.adapter import fact
from harness.check.base import Check, Outcome, register_check, route


@register_check("tie_determinism")
class TieDeterminism(Check):
    source = "vLLM PR 55514"
    claim = "at exact ties, repeated calls choose the same experts and weights; identical tokens too"

    def run(self, ctx):
        a = ctx.fresh()
        a.module.eval()
        E = a.num_experts
        x = torch.cat([torch.zeros(16, a.dim), ctx.tokens(a, 1).repeat(16, 1), ctx.tokens(a, 32, seed=2)])
        T = x.shape[0]
        with torch.no_grad():
            runs = [route(a, x, seq_len=T) for _ in range(4)]
        ids = [torch.where(r.valid_TK(E), r.ids_TK, -1) for r in runs]
        for i, r in enumerate(runs[1:], 1):
            if not (torch.equal(ids[0], ids[i]) and torch.equal(runs[0].weights_TK, r.weights_TK)):
                rows = (ids[0] != ids[i]).any(1).nonzero().flatten().tolist()
                return Outcome("fail", f"call {i + 1} chose other experts on tokens {rows[:8]} (of {T}) than call 1")
        if fact(a, "per_token"):
            for name, block in (("all-zero", slice(0, 16)), ("repeated", slice(16, 32))):
                rows = ids[0][block]
                if not (rows == rows[0]).all():
                    kinds = sorted({tuple(sorted(r)) for r in rows.tolist()})
                    return Outcome("fail", f"16 identical {name} tokens got {len(kinds)} different sets: {kinds[:4]}")
        return Outcome("pass", f"4 calls identical on {T} tokens" + (", identical tokens alike" * fact(a, "per_token")))
