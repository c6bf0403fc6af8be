"""The MoE feed-forward layer: a router, SwiGLU experts in 3-D weights, sorted dispatch.

Legend: T = tokens, D = model width, H = expert hidden width, E = routed experts,
A = (token, expert) assignments, sorted by expert before the grouped matmul.
"""

from __future__ import annotations

from typing import Literal

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from harness.engine.expert_loop import loop_swiglu
from harness.routing import Router, RouterConfig, RouterOutput

ExpertImpl = Literal["auto", "grouped_mm", "loop"]


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """One expert, by definition; the fast paths below compute the same thing (tests compare)."""
    return (F.silu(x @ w1) * (x @ w3)) @ w2


def unit_rms(y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm with no learned gain: the expert supplies a direction only (magnitude form)."""
    return y * torch.rsqrt(y.float().square().mean(dim=-1, keepdim=True) + eps).to(y.dtype)


def grouped_mm_unsupported(device: torch.device, dtype: torch.dtype, *dims: int) -> str | None:
    """Why torch._grouped_mm cannot run here (None: it can): strides of 16 bytes; on CUDA, bf16 on
    sm90 or sm100 (torch falls back to a slow path elsewhere, sm120 included)."""
    # NOTE: on this CPU build _grouped_mm is correct but slower than the loop below (measured
    # interleaved: 142 vs 134 ms at the reference shape), so `auto` uses it on CUDA only.
    align = 16 // torch.empty((), dtype=dtype).element_size()
    if not hasattr(torch, "_grouped_mm"):
        return f"this torch {torch.__version__} has no _grouped_mm"
    if any(d % align for d in dims):
        return f"the expert widths {list(dims)} are not multiples of {align} ({dtype}: 16-byte strides)"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major not in (9, 10):
            return f"this card is sm{major}{minor}; torch's grouped matmul kernels are sm90 and sm100"
        if dtype != torch.bfloat16:
            return f"on CUDA it takes bfloat16, not {dtype}"
    return None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul in (custom and private ops are not autocast)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


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
            return loop_swiglu(x_AD.contiguous(), w1, w3, w2, counts_E)  # NOTE: an op: compiles as one node

    def _use_grouped_mm(self, x_AD: torch.Tensor) -> bool:
        if self.impl == "loop":
            return False
        why = grouped_mm_unsupported(x_AD.device, x_AD.dtype, self.w1.shape[1], self.w1.shape[2])
        if self.impl == "grouped_mm" and why:  # NOTE: the loop computes the same; one line says why
            warnings.warn(f"model.expert_impl = 'grouped_mm' cannot run here ({why}): the experts run as a loop",
                          stacklevel=3)
        return why is None and (self.impl == "grouped_mm" or x_AD.is_cuda)


class DenseFFN(nn.Module):
    """A dense SwiGLU FFN: the baseline of equal active width, and the optional first layer."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
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

    def forward(self, x_BLD: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """`token_ids` [B, L] (or [T]): the tokens' ids, for a rule that routes by them (hash)."""
        x_TD = x_BLD.reshape(-1, x_BLD.shape[-1])
        route = self.router(x_TD, seq_len=x_BLD.shape[1] if x_BLD.dim() == 3 else None,
                            token_ids=None if token_ids is None else token_ids.reshape(-1))
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
        if route.identity_T is not None:  # zero-computation experts: the input, gated
            out_TD = out_TD + route.identity_T[:, None].to(x_TD.dtype) * x_TD
        return out_TD.view_as(x_BLD)
