"""Router logits computed in bf16 under autocast change the top-k wherever two experts nearly tie
(2.6 % of top-8 sets in marin issue 8435): the gate's matmul belongs in float32."""

import torch

from harness.check.base import Check, Outcome, chosen_sets, differing, register_check, route


@register_check("logits_fp32")
class LogitsFp32(Check):
    source = "marin issue 8435"
    claim = "under bf16 autocast, the experts chosen equal those of float32"
    needs = ("bf16",)

    def run(self, ctx):
        a = ctx.fresh()
        a.module.eval()
        T, E = 4096, a.num_experts
        x = ctx.tokens(a, T)
        with torch.no_grad():
            r32 = route(a, x, seq_len=T)
            with ctx.amp():
                r16 = route(a, x, seq_len=T)
        n = differing(chosen_sets(r32, E), chosen_sets(r16, E))
        if n > max(2, T // 1000):
            return Outcome("fail", f"{n} of {T} tokens ({100 * n / T:.2f} %) got other experts under bf16 autocast "
                                   f"(logits {r16.logits_TE.dtype}): the gate runs in bf16")
        return Outcome("pass", f"{n} of {T} tokens differ from float32 (logits {r16.logits_TE.dtype})")
