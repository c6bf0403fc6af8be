"""The router module: hidden states in, (selected experts, gates, counts, aux losses) out.

Legend: T = tokens, D = model width, E = routed experts, K = experts per token, A = (token,
expert) assignments (T K for top-k, variable for threshold selection).

The contract is narrow on purpose: the MoE layer never asks which variant it holds. The
balancing update is a separate call, made by the driver after `optimizer.step()` with the
counts of the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness import distributed
from harness.routing import balancing
from harness.routing.config import RouterConfig

SCORE_FUNCS = {
    "softmax": lambda z: torch.softmax(z, dim=-1),
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "softplus": F.softplus,
}


@dataclass
class RouterOutput:
    token_idx_A: torch.Tensor  # [A] long: token of each assignment, token-major order
    expert_idx_A: torch.Tensor  # [A] long: expert of each assignment
    gate_A: torch.Tensor  # [A] float32: gate weight (unbiased scores only)
    counts_E: torch.Tensor  # [E] float32, no grad: assignments per expert in this forward
    scores_TE: torch.Tensor  # [T, E] float32: s = h(z), before any bias
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # already multiplied by coefficients
    num_dropped: torch.Tensor | None = None  # 0-d: assignments dropped over capacity (None: dropless)
    dispatch_E: torch.Tensor | None = None  # [E] long: assignments each expert computes (counts_E less drops)


class Router(nn.Module):
    def __init__(self, dim: int, num_experts: int, top_k: int, cfg: RouterConfig):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k = {top_k} must be between 1 and num_experts = {num_experts}")
        if num_experts % cfg.n_group or cfg.topk_group * (num_experts // cfg.n_group) < top_k:
            raise ValueError(f"router.n_group = {cfg.n_group} must divide model.num_experts = {num_experts}, and the "
                             f"router.topk_group = {cfg.topk_group} eligible groups must hold at least top_k = {top_k} "
                             "experts")
        self.cfg, self.num_experts, self.top_k = cfg, num_experts, top_k
        self.gate = nn.Linear(dim, num_experts, bias=False)
        # NOTE: the expert bias is state, not a parameter: float32, no gradient, only used for
        # selection, saved in state_dict.
        self.register_buffer("expert_bias", torch.zeros(num_experts, dtype=torch.float32))
        # dynamic k starts its bias at a common value that fires about k experts per token
        self.register_buffer("bias_ready", torch.tensor(cfg.bias_mode not in ("dynamic_k", "quantile")))
        # quantile balancing: the sum of per-micro-batch quantiles this step, and how many
        self.register_buffer("step_quantile", torch.zeros(num_experts + 1), persistent=False)
        # counts so far in this optimizer step, for the global_batch aux scope (Qwen's buffer)
        self.register_buffer("step_counts", torch.zeros(num_experts), persistent=False)
        self._bias_ready_seen = bool(self.bias_ready)  # host copy: no device sync per forward
        # expert choice only: route by a causal top-k of the same scores instead (the driver sets it
        # for a second validation pass, val_loss_causal)
        self.causal_topk = False

    def forward(self, x_TD: torch.Tensor, seq_len: int | None = None) -> RouterOutput:
        cfg = self.cfg
        logits_TE = self.gate(x_TD).float()
        scores_TE = SCORE_FUNCS[cfg.score_func](logits_TE)
        if not self._bias_ready_seen and not self._check_bias_ready():
            self._init_threshold_bias(scores_TE)
        if cfg.bias_mode == "quantile" and self.training:
            with torch.no_grad():
                self.step_quantile[:-1] += balancing.expert_quantiles(scores_TE, self.top_k)
                self.step_quantile[-1] += 1
        selection_TE = scores_TE.detach() + self.expert_bias
        if cfg.sinkhorn_iters and self.training:  # NOTE: selection only; the gates stay the plain scores
            selection_TE = balancing.sinkhorn(logits_TE.detach(), cfg.sinkhorn_iters)
        token_idx_A, expert_idx_A, mask_TE = self._select(selection_TE)
        gate_A = scores_TE[token_idx_A, expert_idx_A]
        if cfg.route_norm:
            denom_T = torch.zeros_like(scores_TE[:, 0]).index_add(0, token_idx_A, gate_A)
            gate_A = gate_A / denom_T[token_idx_A].clamp_min(1e-20)
        gate_A = gate_A * cfg.route_scale
        counts_E = mask_TE.sum(dim=0, dtype=torch.float32)  # NOTE: routed, before any drop: what balancing sees
        num_dropped = None
        if cfg.capacity_factor > 0:  # NOTE: after the gates are normalised over the k chosen, as Megatron does
            keep_A = balancing.capacity_keep(
                token_idx_A, expert_idx_A, gate_A.detach(), self.num_experts,
                balancing.expert_capacity(cfg.capacity_factor, x_TD.shape[0], self.top_k, self.num_experts),
                cfg.drop_policy)
            num_dropped = (~keep_A).sum()
            token_idx_A, expert_idx_A, gate_A = token_idx_A[keep_A], expert_idx_A[keep_A], gate_A[keep_A]
        aux_mask_TE = mask_TE
        if cfg.aux_counts == "unbiased" and cfg.aux_alpha > 0:  # F from the top-k the bias did not move
            aux_mask_TE = self._select(scores_TE.detach())[2]
        aux = self._aux_losses(logits_TE, scores_TE, aux_mask_TE, aux_mask_TE.sum(dim=0, dtype=torch.float32),
                               seq_len)
        # NOTE: without drops, the mask counts: a static shape, so torch.compile does not break there
        dispatch_E = counts_E.long() if num_dropped is None else torch.bincount(expert_idx_A, minlength=self.num_experts)
        return RouterOutput(token_idx_A, expert_idx_A, gate_A, counts_E, scores_TE, aux, num_dropped, dispatch_E)

    def _select(self, biased_TE: torch.Tensor):
        num_tokens = biased_TE.shape[0]
        if self.cfg.n_group > 1:
            biased_TE = balancing.mask_ineligible_groups(biased_TE, self.cfg.n_group, self.cfg.topk_group)
        selection = "topk" if self.causal_topk else self.cfg.selection
        if selection == "expert_choice":  # a variable number per token, exactly C tokens per expert and chunk
            mask_TE = balancing.expert_choice_mask(biased_TE, self.cfg.ec_chunk, self.top_k)
            token_idx_A, expert_idx_A = mask_TE.nonzero(as_tuple=True)
        elif selection == "topk":
            expert_ids_TK = biased_TE.topk(self.top_k, dim=-1).indices
            token_idx_A = torch.arange(num_tokens, device=biased_TE.device).repeat_interleave(self.top_k)
            expert_idx_A = expert_ids_TK.flatten()
            mask_TE = torch.zeros_like(biased_TE, dtype=torch.bool).scatter_(1, expert_ids_TK, True)
        else:  # threshold: a variable number per token, possibly none
            mask_TE = biased_TE > 0
            token_idx_A, expert_idx_A = mask_TE.nonzero(as_tuple=True)
        return token_idx_A, expert_idx_A, mask_TE

    def _aux_losses(self, logits_TE, scores_TE, mask_TE, counts_E, seq_len) -> dict[str, torch.Tensor]:
        cfg, losses = self.cfg, {}
        if cfg.aux_alpha > 0:
            probs_TE = scores_TE / scores_TE.sum(dim=-1, keepdim=True).clamp_min(1e-20)
            if cfg.aux_scope == "sequence":
                length = seq_len or probs_TE.shape[0]
                shape = (-1, length, self.num_experts)
                value = balancing.sequence_aux_loss(probs_TE.view(shape), mask_TE.view(shape))
            elif cfg.aux_scope == "global_batch" and self.training:
                # NOTE: F over the whole step: every micro-batch so far, summed over data-parallel
                # ranks (Megatron's global aux loss); P stays local, and DDP averages the gradients
                self.step_counts += distributed.all_sum_(counts_E.clone())
                value = balancing.aux_loss(probs_TE, self.step_counts.clone())
            else:
                value = balancing.aux_loss(probs_TE, counts_E)
            losses["aux_loss"] = cfg.aux_alpha * value
        if cfg.z_loss_beta > 0:
            losses["z_loss"] = cfg.z_loss_beta * balancing.z_loss(logits_TE)
        return losses

    def _check_bias_ready(self) -> bool:
        self._bias_ready_seen = bool(self.bias_ready)  # a loaded checkpoint may have set it
        return self._bias_ready_seen

    @torch.no_grad()
    def _init_threshold_bias(self, scores_TE: torch.Tensor) -> None:
        # NOTE: from the scores of every rank's first batch, so every rank starts at the same bias
        scores_TE = distributed.all_cat(scores_TE.detach())
        if self.cfg.bias_mode == "quantile":  # each expert starts at its own quantile
            self.expert_bias.copy_(-balancing.expert_quantiles(scores_TE, self.top_k))
        else:
            self.expert_bias.fill_(balancing.threshold_init_bias(scores_TE, self.top_k))
        self.bias_ready.fill_(True)
        self._bias_ready_seen = True

    @torch.no_grad()
    def balance_update(self, counts_E: torch.Tensor, num_tokens: int, progress: float = 0.0) -> None:
        """Apply the bias update from one optimizer step's counts (summed over micro-batches).

        `progress` is the fraction of training done; the bias is frozen once it reaches
        1 - bias_freeze_frac.
        """
        cfg = self.cfg
        self.step_counts.zero_()
        if cfg.bias_mode == "none" or progress >= 1.0 - cfg.bias_freeze_frac:
            return
        counts_E = counts_E.to(self.expert_bias.device, torch.float32)
        if cfg.bias_mode == "quantile":
            step_quantile, self.step_quantile = distributed.all_sum_(self.step_quantile.clone()), \
                torch.zeros_like(self.step_quantile)
            target_E = -step_quantile[:-1] / step_quantile[-1].clamp_min(1)  # the step's mean quantile
            self.expert_bias.mul_(cfg.qb_ema).add_((1 - cfg.qb_ema) * target_E)
            return
        if cfg.bias_mode == "loss_free":
            new_bias = balancing.loss_free_update(self.expert_bias, counts_E, cfg, cfg.bias_rate)
        else:
            new_bias = balancing.dynamic_k_update(
                self.expert_bias, counts_E, num_tokens, self.top_k, cfg, cfg.bias_rate
            )
        self.expert_bias.copy_(new_bias)
