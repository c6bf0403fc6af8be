"""One check per bug class, registered by name: what it claims, where the class was reported, what
it needs of the adapter, and a `run` that returns a verdict with its evidence (the numbers).

    @register_check("counts_total")
    class CountsTotal(Check):
        source = "DeepSpeed PR 2551"
        claim = "the counts sum to T x k"
        needs = ("counts",)        # adapter features; without one the class is "n/a: no counts"
        def run(self, ctx): ...    # -> Outcome("pass" | "fail", evidence)

Every check builds its own fresh router (`ctx.fresh()`, seeded), so no check sees another's state.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch

from harness.check.adapter import Routed, as_routed, fact, has
from harness.routing.registry import Registry

CHECKS = Registry("check class", "--only", prepare=lambda name, cls: cls())
register_check = CHECKS.register
VERDICTS = ("pass", "fail", "n/a")
NEEDS = {  # a feature a check may need -> (whether the adapter has it, the n/a reason)
    "bias": (lambda a: has(a, "bias", "set_bias"), "no bias (bias and set_bias)"),
    "step": (lambda a: has(a, "step", "pending_counts"), "no balancing update (step and pending_counts)"),
    "score_func": (lambda a: has(a, "score_func"), "its score function is not stated (score_func)"),
    "route_norm": (lambda a: has(a, "route_norm"), "its renormalisation is not stated (route_norm)"),
    "groups": (lambda a: bool(fact(a, "groups")) and fact(a, "groups")[0] > 1, "no group-limited routing (groups)"),
    "aux_coef": (lambda a: fact(a, "aux_coef") > 0, "aux coefficient 0 (aux_coef)"),
    "padding": (lambda a: fact(a, "handles_padding"), "route() takes no padding mask (handles_padding)"),
    "fixed_k": (lambda a: fact(a, "fixed_k"), "not a fixed top-k (fixed_k False)"),
    "bf16": (None, "--dtype float32: no bf16 run"),
}


@dataclass
class Outcome:
    verdict: str
    evidence: str


@dataclass
class Result:
    name: str
    verdict: str
    evidence: str
    source: str
    claim: str


@dataclass
class Context:
    """What every check gets: a way to build the router afresh, the precision of its bf16 runs."""

    make: Callable[[], object]
    dtype: torch.dtype = torch.bfloat16
    seed: int = 0
    probe: object = field(default=None)  # one instance, for the n/a decisions

    def fresh(self, seed: int | None = None):
        torch.manual_seed(self.seed if seed is None else seed)
        return self.make()

    def tokens(self, adapter, num_tokens: int, seed: int = 1, scale: float = 1.0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return scale * torch.randn(num_tokens, adapter.dim, generator=gen)

    def amp(self):
        """bf16 autocast on CPU for a bf16 check (nothing under --dtype float32)."""
        return nullcontext() if self.dtype == torch.float32 else torch.autocast("cpu", dtype=self.dtype)


class Check:
    name = ""
    source = ""  # the thread the class was reported in
    claim = ""  # what a pass means, one line
    needs: tuple[str, ...] = ()

    def unmet(self, adapter, ctx: Context) -> str | None:
        """The n/a reason: the first feature this check needs that the adapter lacks (None: it applies)."""
        for need in self.needs:
            present, reason = NEEDS[need]
            ok = ctx.dtype != torch.float32 if need == "bf16" else present(adapter)
            if not ok:
                return reason
        return None

    def run(self, ctx: Context) -> Outcome:
        raise NotImplementedError


def route(adapter, x_TD, seq_len=None, **kw) -> Routed:
    return as_routed(adapter.route(x_TD, seq_len=seq_len, **kw))


def chosen_sets(r: Routed, num_experts: int) -> list[frozenset]:
    ids = torch.where(r.valid_TK(num_experts), r.ids_TK, -1).tolist()
    return [frozenset(i for i in row if i >= 0) for row in ids]


def differing(a: list[frozenset], b: list[frozenset]) -> int:
    return sum(x != y for x, y in zip(a, b))


def state(adapter) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the module (non-persistent ones too), and the pending counts."""
    out = {f"param {n}": p.detach().clone() for n, p in adapter.module.named_parameters()}
    out |= {f"buffer {n}": b.detach().clone() for n, b in adapter.module.named_buffers()}
    if has(adapter, "pending_counts"):
        out["pending_counts()"] = torch.as_tensor(adapter.pending_counts()).detach().clone()
    return out


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if k not in after or before[k].shape != after[k].shape
            or not torch.equal(before[k], after[k])] + [k for k in after if k not in before]


def router_grad(adapter) -> float:
    """The summed |gradient| over the module's parameters (0 where none reached them)."""
    return float(sum(p.grad.abs().sum() for p in adapter.module.parameters() if p.grad is not None))


def run_checks(make: Callable[[], object], only: list[str] | None = None, dtype=torch.bfloat16) -> list[Result]:
    """Each registered check (or those in `only`) on fresh routers from `make`."""
    import harness.check.classes  # noqa: F401  (registers every class)

    names = list(only) if only else list(CHECKS)
    for name in names:
        CHECKS.lookup(name)
    ctx = Context(make, dtype)
    ctx.probe = ctx.fresh()
    results = []
    for name in names:
        check = CHECKS[name]
        reason = check.unmet(ctx.probe, ctx)
        if reason:
            outcome = Outcome("n/a", reason)
        else:
            try:
                outcome = check.run(ctx)
            except Exception as err:  # NOTE: the router raised under the check: that is its finding
                outcome = Outcome("fail", f"raised {type(err).__name__}: {err}")
        results.append(Result(name, outcome.verdict, outcome.evidence, check.source, check.claim))
    return results
