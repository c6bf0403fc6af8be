"""A sequence-wise aux loss averages over sequences: one summed over them grows with the
micro-batch size, so the balance a run gets depends on its batch layout (Megatron PR 5798)."""

import torch

from harness.check.base import Check, Outcome, register_check, route


@register_check("aux_batch_invariant")
class AuxBatchInvariant(Check):
    source = "Megatron-LM PR 5798"
    claim = "each aux loss of (x; x) as 2 sequences equals that of x as 1"
    needs = ("aux_coef",)

    def run(self, ctx):
        one, two = ctx.fresh(), ctx.fresh()
        one.module.train(), two.module.train()
        L = 32
        x = ctx.tokens(one, L)
        aux1 = route(one, x, seq_len=L).aux or {}
        aux2 = route(two, torch.cat([x, x]), seq_len=L).aux or {}
        if not aux1:
            return Outcome("n/a", "route() returns no aux loss (aux_enabled says so)")
        worst = []
        for key, v1 in aux1.items():
            if key not in aux2:
                return Outcome("fail", f"{key} is missing for 2 sequences")
            v1, v2 = float(v1.detach()), float(aux2[key].detach())
            rel = abs(v2 - v1) / max(abs(v1), 1e-12)
            worst.append((rel, key, v1, v2))
        rel, key, v1, v2 = max(worst)
        if rel > 1e-5:
            return Outcome("fail", f"{key}: {v1:.5g} for 1 sequence, {v2:.5g} for the same twice ({v2 / v1:.3g}x): "
                                   "it scales with the batch")
        return Outcome("pass", f"{len(worst)} aux term(s) equal to {rel:.1e} for 1 and 2 sequences")
