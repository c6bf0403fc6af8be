"""Evaluation must not move the balancing state: eval forwards that add to the counts the next bias
update reads (torchtitan PR 4148, MegaBlocks PR 69) make the update depend on how often one evaluates."""

import torch

from harness.check.base import Check, Outcome, changed, register_check, route, state


@register_check("eval_frozen")
class EvalFrozen(Check):
    source = "torchtitan PR 4148; MegaBlocks PR 69"
    claim = "eval forwards under no_grad change no parameter, buffer or pending count"

    def run(self, ctx):
        a = ctx.fresh()
        a.module.train()
        T = 64
        route(a, ctx.tokens(a, T), seq_len=T)  # a training forward first: its counts are pending
        before = state(a)
        a.module.eval()
        with torch.no_grad():
            for seed in (2, 3, 4):
                route(a, ctx.tokens(a, T, seed=seed), seq_len=T)
        moved = changed(before, state(a))
        if moved:
            return Outcome("fail", f"3 eval forwards changed {', '.join(moved)}")
        return Outcome("pass", f"{len(before)} tensors of state unchanged by 3 eval forwards")
