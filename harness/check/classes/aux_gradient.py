"""The aux loss must train the router: one computed from detached probabilities, or added to the
loss after the backward, balances nothing (NeMo Automodel issue 1408)."""

from harness.check.base import Check, Outcome, register_check, route, router_grad


@register_check("aux_gradient")
class AuxGradient(Check):
    source = "NeMo Automodel issue 1408"
    claim = "the aux loss gives the router's parameters a gradient"
    needs = ("aux_coef",)

    def run(self, ctx):
        a = ctx.fresh()
        a.module.train()
        T = 64
        total = route(a, ctx.tokens(a, T), seq_len=T).aux_total()
        if total is None:
            return Outcome("n/a", "route() returns no aux loss (aux_enabled says so)")
        if not total.requires_grad:
            return Outcome("fail", f"the aux loss ({float(total.detach()):.4g}) carries no autograd graph")
        total.backward()
        grad = router_grad(a)
        if grad == 0:
            return Outcome("fail", f"the aux loss {float(total.detach()):.4g} gives the router a gradient of exactly 0")
        return Outcome("pass", f"sum |grad| = {grad:.3g} from aux {float(total.detach()):.4g}")
