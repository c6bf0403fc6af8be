"""Batches smaller than an expert's capacity or than k: a top-k over fewer tokens than it asks for
crashes (DeepSpeed PR 8155). A router routes such a batch, or refuses it with a ValueError."""

import torch

from harness.check.base import Check, Outcome, register_check, route


def sane(r, T, E) -> str | None:
    if r.ids_TK.shape[0] != T or r.weights_TK.shape != r.ids_TK.shape:
        return f"ids {tuple(r.ids_TK.shape)} and weights {tuple(r.weights_TK.shape)} for {T} tokens"
    if not torch.isfinite(r.weights_TK).all():
        return f"weights not finite: {r.weights_TK.tolist()}"
    for row, ok in zip(r.ids_TK.tolist(), r.valid_TK(E).tolist()):
        chosen = [i for i, v in zip(row, ok) if v]
        if len(chosen) != len(set(chosen)):
            return f"an expert twice in {row}"
    return None


@register_check("tiny_batch")
class TinyBatch(Check):
    source = "DeepSpeed PR 8155"
    claim = "1, 2 and k tokens route (in train and eval) or are refused with a ValueError"

    def run(self, ctx):
        a = ctx.fresh()
        E, seen = a.num_experts, []
        for T in sorted({1, 2, a.top_k}):
            for train in (True, False):
                a.module.train(train)
                mode = "train" if train else "eval"
                try:
                    with torch.set_grad_enabled(train):
                        r = route(a, ctx.tokens(a, T, seed=T), seq_len=T)
                except ValueError as err:
                    seen.append(f"T={T} {mode}: refused ({str(err)[:60]})")
                    continue
                except Exception as err:
                    return Outcome("fail", f"T={T} ({mode}) raised {type(err).__name__}: {err}")
                problem = sane(r, T, E)
                if problem:
                    return Outcome("fail", f"T={T} ({mode}): {problem}")
                seen.append(f"T={T} {mode}: ok")
        return Outcome("pass", "; ".join(s for s in seen if "refused" in s) or f"{len(seen)} tiny batches routed")
