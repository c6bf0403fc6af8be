"""An aux loss coefficient above 0 must give an aux loss: a flag read under another name, or a
loss left out of the returned dict, trains with no balancing at all."""

import torch

from harness.check.base import Check, Outcome, register_check, route


@register_check("aux_enabled")
class AuxEnabled(Check):
    source = "NeMo Automodel issue 1408"
    claim = "with aux_coef > 0, a training forward returns a finite aux loss above 0"
    needs = ("aux_coef",)

    def run(self, ctx):
        a = ctx.fresh()
        a.module.train()
        T = 64
        total = route(a, ctx.tokens(a, T), seq_len=T).aux_total()
        if total is None:
            return Outcome("fail", f"aux_coef = {a.aux_coef:g} but route() returned no aux loss")
        value = float(total.detach())
        if not torch.isfinite(total) or value <= 0:
            return Outcome("fail", f"aux_coef = {a.aux_coef:g} but the aux loss is {value:g}")
        return Outcome("pass", f"aux loss {value:.4g} at aux_coef {a.aux_coef:g}")
