"""The bias survives a save and load bitwise: a bias kept out of the state_dict (a non-persistent
buffer), zeroed on load or cast on export is lost with the checkpoint (Megatron-Bridge issue 4199,
prime-rl PR 2681)."""

import io

import torch

from harness.check.base import Check, Outcome, chosen_sets, differing, register_check, route


@register_check("bias_roundtrip")
class BiasRoundtrip(Check):
    source = "Megatron-Bridge issue 4199; prime-rl PR 2681"
    claim = "torch.save / torch.load of the state_dict into a fresh router keeps the bias bitwise, and its routes"
    needs = ("bias",)

    def run(self, ctx):
        a = ctx.fresh(seed=0)
        E, T = a.num_experts, 128
        bias = 0.1 * torch.randn(E, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        a.set_bias(bias.to(a.bias.dtype) + 1e-7)  # NOTE: digits below bf16's, which a cast would lose
        buffer = io.BytesIO()
        torch.save(a.module.state_dict(), buffer)
        buffer.seek(0)
        b = ctx.fresh(seed=1)
        b.module.load_state_dict(torch.load(buffer, weights_only=True))
        if b.bias.dtype != a.bias.dtype or not torch.equal(b.bias, a.bias):
            return Outcome("fail", f"bias {a.bias.tolist()[:3]}... ({a.bias.dtype}) saved, {b.bias.tolist()[:3]}... "
                                   f"({b.bias.dtype}) loaded")
        a.module.eval(), b.module.eval()
        x = ctx.tokens(a, T)
        with torch.no_grad():
            n = differing(chosen_sets(route(a, x, seq_len=T), E), chosen_sets(route(b, x, seq_len=T), E))
        if n:
            return Outcome("fail", f"the loaded router chose other experts for {n} of {T} tokens")
        return Outcome("pass", f"bias bitwise equal ({a.bias.dtype}) and {T} tokens routed alike after the round trip")
