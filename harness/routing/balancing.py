"""Balancing pieces shared by the router and the rules, as pure tensor functions: aux and z
losses, group-limited masking, capacity, expert choice's mask, Sinkhorn (docs/methods.md).
The bias controllers live in controllers/, one file each.

Legend: T = tokens, E = routed experts (n), B = sequences, L = sequence length.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch


def aux_loss(probs_TE: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """Switch/GShard/DeepSeek aux loss without alpha: n * sum_i F_i P_i, F = c / (T k).

    `probs_TE` are the scores normalised per token (p_t = s_t / sum_j s_tj); `counts_E` carry
    no gradient. Uniform routing gives 1, total collapse gives n.
    """
    num_experts = probs_TE.shape[-1]
    frac_E = counts_E.detach().float() / counts_E.detach().float().sum().clamp_min(1.0)
    mean_prob_E = probs_TE.mean(dim=0)  # [E]
    # NOTE: F = c / (T k) equals c / sum(c) for top-k; for threshold selection sum(c) is not T k,
    # and normalising by the actual sum keeps "1 means uniform" true there too.
    return num_experts * (frac_E * mean_prob_E).sum()


def sequence_aux_loss(probs_BLE: torch.Tensor, mask_BLE: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise aux loss: the micro-batch formula per sequence, averaged."""
    num_experts = probs_BLE.shape[-1]
    counts_BE = mask_BLE.float().sum(dim=1)  # [B, E]
    frac_BE = counts_BE / counts_BE.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return (num_experts * (frac_BE * probs_BLE.mean(dim=1)).sum(dim=-1)).mean()


def mask_ineligible_groups(biased_TE: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """Group-limited routing: experts in `n_group` equal groups; a group scores the sum of its 2
    highest (biased) scores; experts outside the `topk_group` best groups get -inf."""
    num_tokens, num_experts = biased_TE.shape
    grouped_TGS = biased_TE.view(num_tokens, n_group, num_experts // n_group)
    group_score_TG = grouped_TGS.topk(min(2, grouped_TGS.shape[-1]), dim=-1).values.sum(dim=-1)
    keep_TG = torch.zeros_like(group_score_TG, dtype=torch.bool).scatter_(
        1, group_score_TG.topk(topk_group, dim=-1).indices, True)
    return biased_TE.masked_fill(~keep_TG.repeat_interleave(num_experts // n_group, dim=1), float("-inf"))


def expert_capacity(factor: float, num_tokens: int, top_k: int, num_experts: int) -> int:
    """C = ceil(c T k / n) in exact arithmetic, with c read as the decimal the user wrote: in floating
    point 1.1 x 50 x 2 / 10 is 11.000000000000002, whose ceiling would keep a 12th slot."""
    exact = Fraction(str(factor)) * num_tokens * top_k / num_experts
    return math.ceil(exact)


def capacity_keep(token_idx_A: torch.Tensor, expert_idx_A: torch.Tensor, gate_A: torch.Tensor, num_experts: int,
                  capacity: int, policy: str) -> torch.Tensor:
    """[A] bool: the assignments kept when each expert takes at most `capacity`, by highest gate
    (`probs`) or earliest token (`position`) first."""
    if policy == "probs":
        order_A = gate_A.argsort(descending=True, stable=True)
        order_A = order_A[expert_idx_A[order_A].argsort(stable=True)]
    else:
        order_A = (expert_idx_A * 2**31 + token_idx_A).argsort()  # NOTE: one key, no host sync
    sorted_expert_A = expert_idx_A[order_A]
    counts_E = torch.bincount(sorted_expert_A, minlength=num_experts)
    starts_E = counts_E.cumsum(0) - counts_E
    rank_A = torch.arange(len(order_A), device=order_A.device) - starts_E[sorted_expert_A]
    keep_A = torch.empty_like(rank_A, dtype=torch.bool)
    keep_A[order_A] = rank_A < capacity
    return keep_A


def expert_choice_capacity(chunk: int, top_k: int, num_experts: int) -> int:
    """Tokens each expert takes per chunk in expert choice: C = chunk k / n, rounded, at least 1."""
    return min(chunk, max(1, round(chunk * top_k / num_experts)))


def expert_choice_mask(scores_TE: torch.Tensor, chunk: int, top_k: int) -> torch.Tensor:
    """[T, E] bool: expert choice (Zhou et al. 2022). Tokens in consecutive chunks of `chunk`
    (0: all T); in each chunk every expert takes its C highest-scoring tokens (C =
    `expert_choice_capacity`), so a token gets 0..n experts. Not causal: a token's experts
    depend on the later tokens of its chunk."""
    num_tokens, num_experts = scores_TE.shape
    chunk = chunk or num_tokens
    if num_tokens % chunk:
        raise ValueError(f"router.ec_chunk = {chunk} must divide the {num_tokens} tokens of a micro-batch "
                         "(train.batch_size x model.seq_len)")
    scores_GCE = scores_TE.reshape(num_tokens // chunk, chunk, num_experts)
    picked_GCE = scores_GCE.topk(expert_choice_capacity(chunk, top_k, num_experts), dim=1).indices
    return torch.zeros_like(scores_GCE, dtype=torch.bool).scatter_(1, picked_GCE, True).view(num_tokens, num_experts)


def sinkhorn(logits_TE: torch.Tensor, iters: int) -> torch.Tensor:
    """Log of the Sinkhorn-balanced assignment of exp(logits): alternately each token's row
    normalised to 1 and each expert's column to T/n, `iters` times (S-BASE, Clark et al. 2022)."""
    num_tokens, num_experts = logits_TE.shape
    log_p = logits_TE.float()
    col_target = torch.log(torch.tensor(num_tokens / num_experts, device=log_p.device))
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True) + col_target
    return log_p


def z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss without beta: mean_t logsumexp(z_t)^2."""
    return torch.logsumexp(logits_TE.float(), dim=-1).square().mean()


def recomputing() -> bool:
    """Whether this forward runs inside backward: activation recomputation (torch.utils.checkpoint),
    which must not count the step's tokens a second time (Megatron issue 1330)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1
