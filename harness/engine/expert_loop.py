"""The CPU expert kernel: E SwiGLU experts over expert-sorted rows, one matmul per expert and
weight, as a PyTorch custom op (`harness::swiglu_loop`) with its own backward op.

Why an op: the loop slices rows by each expert's count, so its Python reads the counts and its
shapes change every step. Traced by torch.compile, every new set of counts was a new graph (a
compiled `tiny` run hit Dynamo's recompile limit and ran 14x slower than eager). As an op, the
loop is opaque to the compiler: its outputs have static shapes ([A, D] and four [A, H], A the
assignments), so a compiled block keeps one graph while the loop runs eagerly inside it.

Why a hand-written backward rather than autograd through w[i] or w.unbind(0): both materialise
the [E, D, H] weight gradients twice (zeros + add, or a stack of E slices), which cost 54 % of a
256-expert layer's time in a profile. Here each expert's gradient is written in place. The
elementwise work stays per expert, where the chunk is still in cache (over all rows at once it
was 30 % slower at the reference shape), and uses the fused silu_backward kernel.

Legend: A = (token, expert) assignments sorted by expert, D = width, H = expert hidden width,
E = experts.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _spans(counts_E: Tensor) -> list[tuple[int, int, int]]:
    """(expert, start, end) of each non-empty group of expert-sorted rows."""
    out, start = [], 0
    for expert, size in enumerate(counts_E.tolist()):  # NOTE: the one host sync of the loop path
        if size:
            out.append((expert, start, start + size))
        start += size
    return out


@torch.library.custom_op("harness::swiglu_loop", mutates_args=())
def swiglu_loop(x_AD: Tensor, w1_EDH: Tensor, w3_EDH: Tensor, w2_EHD: Tensor,
                counts_E: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y [A, D], and what backward reads: h1, h3, silu(h1), silu(h1) * h3, each [A, H])."""
    h1_AH = x_AD.new_empty(x_AD.shape[0], w1_EDH.shape[-1])
    h3_AH, silu_AH, act_AH = torch.empty_like(h1_AH), torch.empty_like(h1_AH), torch.empty_like(h1_AH)
    y_AD = x_AD.new_empty(x_AD.shape[0], w2_EHD.shape[-1])  # every row belongs to one span: all written
    for e, lo, hi in _spans(counts_E):
        h1 = torch.mm(x_AD[lo:hi], w1_EDH[e], out=h1_AH[lo:hi])
        h3 = torch.mm(x_AD[lo:hi], w3_EDH[e], out=h3_AH[lo:hi])
        act = torch.mul(torch.ops.aten.silu.out(h1, out=silu_AH[lo:hi]), h3, out=act_AH[lo:hi])
        torch.mm(act, w2_EHD[e], out=y_AD[lo:hi])
    return y_AD, h1_AH, h3_AH, silu_AH, act_AH


@swiglu_loop.register_fake
def _(x_AD, w1_EDH, w3_EDH, w2_EHD, counts_E):
    h_AH = x_AD.new_empty(x_AD.shape[0], w1_EDH.shape[-1])
    return (x_AD.new_empty(x_AD.shape[0], w2_EHD.shape[-1]), h_AH, torch.empty_like(h_AH), torch.empty_like(h_AH),
            torch.empty_like(h_AH))


@torch.library.custom_op("harness::swiglu_loop_backward", mutates_args=())
def swiglu_loop_backward(gy_AD: Tensor, x_AD: Tensor, w1: Tensor, w3: Tensor, w2: Tensor, h1_AH: Tensor,
                         h3_AH: Tensor, silu_AH: Tensor, act_AH: Tensor,
                         counts_E: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dw1, dw3, dw2) of `swiglu_loop` for the output gradient gy."""
    gy_AD = gy_AD.contiguous()
    gw1, gw3, gw2 = (torch.empty_like(w) for w in (w1, w3, w2))
    gx_AD = torch.empty_like(x_AD)
    spans = _spans(counts_E)
    for e in set(range(w1.shape[0])) - {e for e, _, _ in spans}:  # experts with no rows
        for gw in (gw1, gw3, gw2):
            gw[e].zero_()
    for e, lo, hi in spans:
        x, gy = x_AD[lo:hi], gy_AD[lo:hi]
        torch.mm(act_AH[lo:hi].T, gy, out=gw2[e])
        ga = gy @ w2[e].T
        gh3 = ga * silu_AH[lo:hi]
        gh1 = torch.ops.aten.silu_backward(ga.mul_(h3_AH[lo:hi]), h1_AH[lo:hi])
        torch.mm(x.T, gh1, out=gw1[e])
        torch.mm(x.T, gh3, out=gw3[e])
        torch.mm(gh1, w1[e].T, out=gx_AD[lo:hi]).addmm_(gh3, w3[e].T)
    return gx_AD, gw1, gw3, gw2


@swiglu_loop_backward.register_fake
def _(gy_AD, x_AD, w1, w3, w2, h1_AH, h3_AH, silu_AH, act_AH, counts_E):
    return torch.empty_like(x_AD), torch.empty_like(w1), torch.empty_like(w3), torch.empty_like(w2)


def _setup_context(ctx, inputs, output) -> None:
    x_AD, w1, w3, w2, counts_E = inputs
    _, h1_AH, h3_AH, silu_AH, act_AH = output
    # NOTE: the same four [A, H] tensors autograd would keep, so backward recomputes nothing
    ctx.save_for_backward(x_AD, w1, w3, w2, h1_AH, h3_AH, silu_AH, act_AH, counts_E)
    # NOTE: the four are outputs no one differentiates; without this autograd hands backward a zero
    # [A, H] gradient for each, four fills per layer and step (6 % of the `small` training step)
    ctx.set_materialize_grads(False)


def _backward(ctx, gy_AD, *unused_intermediate_grads):
    if gy_AD is None:  # NOTE: grads are not materialised: y took no part in the loss
        saved = ctx.saved_tensors
        gy_AD = torch.zeros(saved[0].shape[0], saved[3].shape[-1], dtype=saved[0].dtype, device=saved[0].device)
    gx_AD, gw1, gw3, gw2 = swiglu_loop_backward(gy_AD, *ctx.saved_tensors)
    return gx_AD if ctx.needs_input_grad[0] else None, gw1, gw3, gw2, None


swiglu_loop.register_autograd(_backward, setup_context=_setup_context)


def loop_swiglu(x_AD: Tensor, w1_EDH: Tensor, w3_EDH: Tensor, w2_EHD: Tensor, counts_E: Tensor) -> Tensor:
    """The experts' output [A, D] for expert-sorted rows x_AD and their counts per expert."""
    return swiglu_loop(x_AD, w1_EDH, w3_EDH, w2_EHD, counts_E)[0]
