"""Padding tokens must not enter the counts or the aux loss (Megatron PR 2142 and 6114; torchtitan
PR 4594): with them, a batch of short documents balances its padding."""

import torch

from harness.check.base import Check, Outcome, register_check, route


@register_check("padding_excluded")
class PaddingExcluded(Check):
    source = "Megatron-LM PR 2142, PR 6114; torchtitan PR 4594"
    claim = "the counts and aux losses of real tokens plus padding equal those of the real tokens alone"
    needs = ("padding",)

    def run(self, ctx):
        alone, padded = ctx.fresh(), ctx.fresh()
        alone.module.train(), padded.module.train()
        real, pad = 48, 16
        x = ctx.tokens(alone, real)
        junk = ctx.tokens(alone, pad, seed=9, scale=3.0)
        mask = torch.cat([torch.zeros(real, dtype=torch.bool), torch.ones(pad, dtype=torch.bool)])
        r0 = route(alone, x, seq_len=real, pad_T=torch.zeros(real, dtype=torch.bool))
        r1 = route(padded, torch.cat([x, junk]), seq_len=real + pad, pad_T=mask)
        problems = []
        if r0.counts_E is not None and not torch.equal(r0.counts_E.float(), r1.counts_E.float()):
            problems.append(f"counts {r1.counts_E.tolist()} with padding, {r0.counts_E.tolist()} without")
        for key, v0 in (r0.aux or {}).items():
            v1 = (r1.aux or {}).get(key)
            if v1 is None or abs(float(v1.detach()) - float(v0.detach())) > 1e-5 * max(abs(float(v0.detach())), 1e-12):
                problems.append(f"{key} {float(v0.detach()):.5g} without padding, {v1 if v1 is None else float(v1.detach()):.5g} with")
        if problems:
            return Outcome("fail", f"{pad} padding tokens changed " + "; ".join(problems))
        terms = ["counts"] * (r0.counts_E is not None) + sorted(r0.aux or {})
        return Outcome("pass", f"{', '.join(terms) or 'nothing'} unchanged by {pad} padding tokens")
