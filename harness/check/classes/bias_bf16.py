"""The bias and `score + bias` kept in float32: in bf16 a bias of 3 has a spacing of 2^-6, so small
differences between experts' biases vanish (GLM-5.2's 238 distinct biases fell to 8, sglang PR 31213)."""

import torch

from harness.check.base import Check, Outcome, chosen_sets, differing, register_check, route


@register_check("bias_bf16")
class BiasBf16(Check):
    source = "sglang PR 31213"
    claim = "under bf16 autocast, the experts chosen with bias 3 + d equal those with bias d (|d| ~ 1e-3)"
    needs = ("bias", "fixed_k", "bf16")

    def run(self, ctx):
        a = ctx.fresh()
        a.module.eval()
        T, E = 4096, a.num_experts
        x = ctx.tokens(a, T)
        spread = 1e-3 * torch.randn(E, generator=torch.Generator().manual_seed(3))
        sets = []
        with torch.no_grad(), ctx.amp():
            for offset in (0.0, 3.0):
                a.set_bias(offset + spread)
                sets.append(chosen_sets(route(a, x, seq_len=T), E))
        bias_dtype = getattr(a.bias, "dtype", None)
        n = differing(*sets)
        if n > max(2, T // 1000):
            return Outcome("fail", f"{n} of {T} tokens ({100 * n / T:.2f} %) changed experts when every bias moved by "
                                   f"the same 3 (bias dtype {bias_dtype}): the bias or score + bias is rounded")
        return Outcome("pass", f"{n} of {T} tokens changed experts under a uniform offset of 3 (bias {bias_dtype})")
