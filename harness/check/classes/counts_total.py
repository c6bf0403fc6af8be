"""Top-2 counting only the first choice (DeepSpeed PR 2551): the counts the balancing reads must
count every assignment."""

import torch

from harness.check.adapter import fact
from harness.check.base import Check, Outcome, register_check, route


@register_check("counts_total")
class CountsTotal(Check):
    source = "DeepSpeed PR 2551"
    claim = "counts_E counts every assignment: T x k in all, each expert at least its kept tokens"

    def run(self, ctx):
        a = ctx.fresh()
        a.module.train()
        T, E = 64, a.num_experts
        r = route(a, ctx.tokens(a, T), seq_len=T)
        if r.counts_E is None:
            return Outcome("n/a", "route() returns no counts_E")
        counts = r.counts_E.detach().double().cpu()
        kept = torch.bincount(r.ids_TK[r.valid_TK(E)].cpu(), minlength=E).double()
        total, want = float(counts.sum()), T * a.top_k
        if fact(a, "fixed_k") and total != want:
            return Outcome("fail", f"counts sum to {total:g}, not T x k = {T} x {a.top_k} = {want}")
        if fact(a, "capacity_factor") > 0:
            short = (counts < kept).nonzero().flatten().tolist()
            if short:
                return Outcome("fail", f"experts {short} count {counts[short].tolist()} below the tokens they kept "
                                       f"{kept[short].tolist()}")
        elif not torch.equal(counts, kept):
            return Outcome("fail", f"counts {counts.tolist()} differ from the assignments returned {kept.tolist()}")
        return Outcome("pass", f"sum {total:g} over {T} tokens, matching the returned ids")
