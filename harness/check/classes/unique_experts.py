"""No expert twice for a token, and exactly k where k is fixed, also when every other expert's
biased score is -inf: an iterative argmax that masks its picks with -inf then picks one again
(vllm-omni PR 7175)."""

import torch

from harness.check.adapter import fact, has
from harness.check.base import Check, Outcome, register_check, route


def problem(r, E, top_k, fixed_k) -> str | None:
    valid = r.valid_TK(E)
    for t, (row, ok) in enumerate(zip(r.ids_TK.tolist(), valid.tolist())):
        chosen = [i for i, v in zip(row, ok) if v]
        if len(chosen) != len(set(chosen)):
            return f"token {t} got experts {row}"
        if fixed_k and len(chosen) != top_k:
            return f"token {t} got {len(chosen)} experts ({row}), not k = {top_k}"
    return None


@register_check("unique_experts")
class UniqueExperts(Check):
    source = "vllm-omni PR 7175"
    claim = "each token's experts are distinct (exactly k if fixed), also with all biases but one at -inf"

    def run(self, ctx):
        a = ctx.fresh()
        T, E = 64, a.num_experts
        x = ctx.tokens(a, T)
        for train in (True, False):
            a.module.train(train)
            with torch.no_grad():
                found = problem(route(a, x, seq_len=T), E, a.top_k, fact(a, "fixed_k"))
            if found:
                return Outcome("fail", f"({'train' if train else 'eval'}) {found}")
        if not has(a, "bias", "set_bias"):
            return Outcome("pass", f"distinct experts for {T} tokens (no bias: the -inf case not run)")
        a.module.eval()
        for low in (-torch.inf, -1e9):  # NOTE: a router may refuse -inf with NaN weights; then a finite floor
            bias = torch.full((E,), low)
            bias[0] = 0.0
            with torch.no_grad():
                a.set_bias(bias)
                r = route(a, x, seq_len=T)
            if torch.isfinite(r.weights_TK).all():
                break
        found = problem(r, E, a.top_k, fact(a, "fixed_k"))
        if found:
            return Outcome("fail", f"(all biases but expert 0 at {low:g}) {found}")
        return Outcome("pass", f"distinct experts for {T} tokens, also with all biases but one at {low:g}")
