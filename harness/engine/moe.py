"""The MoE feed-forward layer: a router, SwiGLU experts in 3-D weights, sorted dispatch.

Legend: T = tokens, D = model width, H = expert hidden width, E = routed experts,
A = (token, expert) assignments, sorted by expert before the grouped matmul.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.routing import Router, RouterConfig, RouterOutput

ExpertImpl = Literal["auto", "grouped_mm", "loop"]


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """One expert, by definition; the fast paths below compute the same thing (tests compare)."""
    return (F.silu(x @ w1) * (x @ w3)) @ w2


def unit_rms(y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm with no learned gain: the expert supplies a direction only (magnitude form)."""
    return y * torch.rsqrt(y.float().square().mean(dim=-1, keepdim=True) + eps).to(y.dtype)


def grouped_mm_supported(device: torch.device, dtype: torch.dtype, *dims: int) -> bool:
    """Whether torch._grouped_mm runs here: strides of 16 bytes; on CUDA, bf16 on sm90+."""
    # NOTE: on this CPU build _grouped_mm is correct but slower than the loop below (measured
    # interleaved: 142 vs 134 ms at the reference shape), so `auto` uses it on CUDA only.
    align = 16 // torch.empty((), dtype=dtype).element_size()
    if not hasattr(torch, "_grouped_mm") or any(d % align for d in dims):
        return False
    if device.type == "cuda":
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (9, 0)
    return True


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul in (custom and private ops are not autocast)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _spans(sizes: list[int]) -> list[tuple[int, int, int]]:
    """(expert, start, end) of each non-empty group of expert-sorted rows."""
    out, start = [], 0
    for expert, size in enumerate(sizes):
        if size:
            out.append((expert, start, start + size))
        start += size
    return out


class LoopSwiGLU(torch.autograd.Function):
    """E SwiGLU experts over expert-sorted rows, one matmul per expert and weight.

    NOTE: a hand-written backward rather than autograd through w[i] or w.unbind(0): both
    materialise the [E, D, H] weight gradients twice (zeros + add, or a stack of E slices),
    which cost 54 % of a 256-expert layer's time in a profile. Here each expert's gradient is
    written in place. The elementwise work stays per expert, where the chunk is still in cache
    (over all rows at once it was 30 % slower at the reference shape), and uses the fused
    silu_backward kernel.
    """

    @staticmethod
    def forward(ctx, x_AD, w1_EDH, w3_EDH, w2_EHD, sizes: list[int]):
        spans = _spans(sizes)
        h1_AH = x_AD.new_empty(x_AD.shape[0], w1_EDH.shape[-1])
        h3_AH, silu_AH, act_AH = torch.empty_like(h1_AH), torch.empty_like(h1_AH), torch.empty_like(h1_AH)
        y_AD = torch.empty_like(x_AD)  # every row belongs to one span, so every row is written
        for e, lo, hi in spans:
            h1 = torch.mm(x_AD[lo:hi], w1_EDH[e], out=h1_AH[lo:hi])
            h3 = torch.mm(x_AD[lo:hi], w3_EDH[e], out=h3_AH[lo:hi])
            act = torch.mul(torch.ops.aten.silu.out(h1, out=silu_AH[lo:hi]), h3, out=act_AH[lo:hi])
            torch.mm(act, w2_EHD[e], out=y_AD[lo:hi])
        # NOTE: the same four [A, H] tensors autograd would keep, so backward recomputes nothing
        ctx.save_for_backward(x_AD, w1_EDH, w3_EDH, w2_EHD, h1_AH, h3_AH, silu_AH, act_AH)
        ctx.spans = spans
        return y_AD

    @staticmethod
    def backward(ctx, gy_AD):
        x_AD, w1, w3, w2, h1_AH, h3_AH, silu_AH, act_AH = ctx.saved_tensors
        gy_AD = gy_AD.contiguous()
        gw1, gw3, gw2 = (torch.empty_like(w) for w in (w1, w3, w2))
        for e in set(range(w1.shape[0])) - {e for e, _, _ in ctx.spans}:  # experts with no rows
            for gw in (gw1, gw3, gw2):
                gw[e].zero_()
        gx_AD = torch.empty_like(x_AD) if ctx.needs_input_grad[0] else None
        for e, lo, hi in ctx.spans:
            x, gy = x_AD[lo:hi], gy_AD[lo:hi]
            torch.mm(act_AH[lo:hi].T, gy, out=gw2[e])
            ga = gy @ w2[e].T
            gh3 = ga * silu_AH[lo:hi]
            gh1 = torch.ops.aten.silu_backward(ga.mul_(h3_AH[lo:hi]), h1_AH[lo:hi])
            torch.mm(x.T, gh1, out=gw1[e])
            torch.mm(x.T, gh3, out=gw3[e])
            if gx_AD is not None:
                torch.mm(gh1, w1[e].T, out=gx_AD[lo:hi]).addmm_(gh3, w3[e].T)
        return gx_AD, gw1, gw3, gw2, None


class Experts(nn.Module):
    """E SwiGLU experts stored as three 3-D weight tensors."""

    def __init__(self, num_experts: int, dim: int, hidden: int, impl: ExpertImpl = "auto"):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))  # gate projection
        self.w3 = nn.Parameter(torch.empty(num_experts, dim, hidden))  # up projection
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))  # down projection
        self.impl = impl
        self.reset_parameters()

    def reset_parameters(self) -> None:
        dim, hidden = self.w1.shape[1], self.w1.shape[2]
        for w, fan_in in ((self.w1, dim), (self.w3, dim), (self.w2, hidden)):
            nn.init.normal_(w, std=fan_in**-0.5)

    def forward(self, x_AD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """x_AD sorted by expert, counts_E (long) tokens per expert in that order."""
        x_AD = x_AD.to(compute_dtype(x_AD))
        w1, w3, w2 = (w.to(x_AD.dtype) for w in (self.w1, self.w3, self.w2))
        if self._use_grouped_mm(x_AD):
            offs_E = counts_E.cumsum(0).to(torch.int32)
            h_AH = F.silu(torch._grouped_mm(x_AD, w1, offs=offs_E)) * torch._grouped_mm(x_AD, w3, offs=offs_E)
            return torch._grouped_mm(h_AH, w2, offs=offs_E)
        with torch.autocast(x_AD.device.type, enabled=False):
            # NOTE: the one host sync of the loop path: group sizes must be Python ints
            return LoopSwiGLU.apply(x_AD.contiguous(), w1, w3, w2, counts_E.tolist())

    def _use_grouped_mm(self, x_AD: torch.Tensor) -> bool:
        if self.impl == "loop":
            return False
        ok = grouped_mm_supported(x_AD.device, x_AD.dtype, self.w1.shape[1], self.w1.shape[2])
        if self.impl == "grouped_mm" and not ok:
            raise ValueError(f"expert_impl='grouped_mm' is not supported for {x_AD.dtype} at these widths")
        return ok and (self.impl == "grouped_mm" or x_AD.is_cuda)


class DenseFFN(nn.Module):
    """A dense SwiGLU FFN: the baseline of equal active width, and the optional first layer."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoELayer(nn.Module):
    """Routed SwiGLU experts (+ optional always-on shared experts) as a transformer FFN."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_experts: int,
        top_k: int,
        router_cfg: RouterConfig,
        num_shared: int = 0,
        impl: ExpertImpl = "auto",
    ):
        super().__init__()
        self.router = Router(dim, num_experts, top_k, router_cfg)
        self.experts = Experts(num_experts, dim, hidden, impl)
        self.shared = DenseFFN(dim, hidden * num_shared) if num_shared else None
        self.normalize_output = router_cfg.output_form == "magnitude"
        self.last_route: RouterOutput | None = None  # read by the driver for counts and losses

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        x_TD = x_BLD.reshape(-1, x_BLD.shape[-1])
        route = self.router(x_TD, seq_len=x_BLD.shape[1] if x_BLD.dim() == 3 else None)
        self.last_route = route
        order_A = route.expert_idx_A.argsort(stable=True)
        token_A = route.token_idx_A[order_A]
        counts_E = route.dispatch_E
        # NOTE: index_select, not x_TD[token_A]: the latter's backward adds duplicates with CPU
        # atomics, so a token routed to 3+ experts (dynamic k) got a run-to-run different gradient.
        y_AD = self.experts(x_TD.index_select(0, token_A), counts_E)
        if self.normalize_output:
            y_AD = unit_rms(y_AD)
        y_AD = y_AD * route.gate_A[order_A, None].to(y_AD.dtype)
        out_TD = torch.zeros_like(x_TD).index_add_(0, token_A, y_AD.to(x_TD.dtype))
        if self.shared is not None:
            out_TD = out_TD + self.shared(x_TD)
        return out_TD.view_as(x_BLD)
