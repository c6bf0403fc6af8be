"""The router module: hidden states in, (selected experts, gates, counts, aux losses) out.

Legend: T = tokens, D = model width, E = routed experts, K = experts per token, A = (token,
expert) assignments (T K for top-k, variable for threshold selection).

The contract is narrow on purpose: the MoE layer never asks which variant it holds, and the
router never asks either: it dispatches to the selection rule (selection/) and bias controller
(controllers/) its resolved config holds (resolve.py). The balancing update is a separate call,
made by the driver after `optimizer.step()` with the counts of the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from harness import distributed
import harness.routing.balancing as balancing
from harness.routing.balancing import recomputing
from harness.routing.config import RouterConfig
from harness.routing.resolve import resolve_router
from harness.routing.selection import CAUSAL_RULE, get_selection

SCORE_FUNCS = {
    "softmax": lambda z: torch.softmax(z, dim=-1),
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "softplus": F.softplus,
    "sqrtsoftplus": lambda z: F.softplus(z).sqrt(),  # DeepSeek-V4's
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
    identity_T: torch.Tensor | None = None  # [T]: each token's gate on zero-computation experts (None: none)
    logits_TE: torch.Tensor | None = None  # [T, E] float32: the gate's logits z, before the score function
    # ([T, k] expert ids over E + Z, [T, k] gates): a fixed-k route's choices before the zero-computation
    # experts were split off (ids from E on), for a block that takes them as its own router hands them
    slots_TK: tuple[torch.Tensor, torch.Tensor] | None = None


def gates(scores_TE, token_idx_A, expert_idx_A, cfg: RouterConfig) -> torch.Tensor:
    """[A] the gates: the unbiased scores of the chosen, renormalised per token where route_norm, scaled."""
    gate_A = scores_TE[token_idx_A, expert_idx_A]
    if cfg.route_norm:
        denom_T = torch.zeros_like(scores_TE[:, 0]).index_add(0, token_idx_A, gate_A)
        gate_A = gate_A / denom_T[token_idx_A].clamp_min(1e-20)
    return gate_A * cfg.route_scale


def split_zero(token_idx_A, expert_idx_A, gate_A, num_experts: int, num_tokens: int):
    """The assignments to the FFN experts (ids below `num_experts`), and [T] each token's gate mass on
    the zero-computation experts (ids from `num_experts` on), which return the token."""
    real_A = expert_idx_A < num_experts
    identity_T = torch.zeros(num_tokens, dtype=gate_A.dtype, device=gate_A.device).index_add(
        0, token_idx_A[~real_A], gate_A[~real_A])
    return token_idx_A[real_A], expert_idx_A[real_A], gate_A[real_A], identity_T


def gate_logits(gate: nn.Linear, x_TD: torch.Tensor, float64_logits: bool = False,
                float32_inputs: bool = False) -> torch.Tensor:
    """[T, E] the gate's logits in float32, also under bf16 autocast (Megatron's fp32 router): a bf16
    gate flips the top-k at near-ties (marin issue 8435). A float64 model (the equivalence tests)
    computes them in float64, and keeps them so where `float64_logits` is set (a family whose own
    router runs in the model's dtype), or in float32 from the start where `float32_inputs` is (one
    whose router casts its input to float32 first)."""
    with torch.autocast(x_TD.device.type, enabled=False):
        x_TD = x_TD if x_TD.dtype == torch.float64 and not float32_inputs else x_TD.float()
        bias = None if gate.bias is None else gate.bias.to(x_TD.dtype)
        logits_TE = F.linear(x_TD, gate.weight.to(x_TD.dtype), bias)
    return logits_TE if float64_logits and logits_TE.dtype == torch.float64 else logits_TE.float()


class Router(nn.Module):
    def __init__(self, dim: int, num_experts: int, top_k: int, cfg: RouterConfig):
        """`cfg` resolved (resolve_router; a config that is not yet resolved is resolved here, once)."""
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k = {top_k} must be between 1 and num_experts = {num_experts}")
        cfg = cfg if cfg.rule is not None else resolve_router(cfg)
        cfg.rule.check_layer(cfg, num_experts, top_k)
        self.cfg, self.num_experts, self.top_k = cfg, num_experts, top_k
        # zero-computation experts (LongCat's): Z more columns that route like experts and return their input
        self.zero_experts = cfg.controller.zero_experts(cfg)
        self.gate = nn.Linear(dim, num_experts + self.zero_experts, bias=cfg.gate_bias)
        if cfg.gate_bias:
            nn.init.zeros_(self.gate.bias)
        if cfg.route_norm and top_k == 1 and not cfg.rule.variable_k:
            warnings.warn("router.route_norm = true with top_k = 1 makes every gate exactly 1 (so does gpt-oss's "
                          "softmax over the top-k logits at k = 1): the LM loss gives the router weights no "
                          "gradient, and only a balancing loss trains them", stacklevel=2)
        self.selection = cfg.rule
        self.causal_rule = self.selection if self.selection.causal else get_selection(CAUSAL_RULE)
        self.controller = cfg.controller(num_experts, top_k, cfg)  # its buffers: its state
        # NOTE: the expert bias is state, not a parameter: float32, no gradient, only used for
        # selection, saved in state_dict.
        self.register_buffer("expert_bias", torch.zeros(num_experts, dtype=torch.float32))
        # a controller that starts from the first batch's scores has not seen it yet
        self.register_buffer("bias_ready", torch.tensor(False))
        # counts so far in this optimizer step, for the global_batch aux scope (Qwen's buffer)
        self.register_buffer("step_counts", torch.zeros(num_experts), persistent=False)
        self._bias_ready_seen = False  # host copy of bias_ready: no device sync per forward
        # expert choice only: route by a causal top-k of the same scores instead (the driver sets it
        # for a second validation pass, val_loss_causal)
        self.causal_topk = False
        self.float64_logits = self.float32_inputs = False  # a family's precision (gate_logits)

    def forward(self, x_TD: torch.Tensor, seq_len: int | None = None,
                token_ids: torch.Tensor | None = None) -> RouterOutput:
        """`token_ids` [T]: the tokens' ids, which a rule may route by (hash selection); None: not known."""
        cfg = self.cfg
        logits_TE = gate_logits(self.gate, x_TD, self.float64_logits, self.float32_inputs)
        scores_TE = SCORE_FUNCS[cfg.score_func](logits_TE)
        token_idx_A, expert_idx_A, mask_TE = self._route(logits_TE, scores_TE, token_ids)
        gate_A = gates(scores_TE, token_idx_A, expert_idx_A, cfg)
        identity_T = slots_TK = None
        if self.zero_experts and not (self.selection.variable_k or cfg.capacity_factor > 0):
            slots_TK = (expert_idx_A.view(x_TD.shape[0], self.top_k), gate_A.view(x_TD.shape[0], self.top_k))
        if self.zero_experts:  # NOTE: the gates were normalised over every chosen expert, zero ones included
            token_idx_A, expert_idx_A, gate_A, identity_T = split_zero(token_idx_A, expert_idx_A, gate_A,
                                                                       self.num_experts, x_TD.shape[0])
            logits_TE, scores_TE, mask_TE = (t[:, :self.num_experts] for t in (logits_TE, scores_TE, mask_TE))
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
        return RouterOutput(token_idx_A, expert_idx_A, gate_A, counts_E, scores_TE, aux, num_dropped, dispatch_E,
                            identity_T, logits_TE, slots_TK)

    def _route(self, logits_TE: torch.Tensor, scores_TE: torch.Tensor, token_ids: torch.Tensor | None = None):
        """Which experts each token goes to: the bias made ready (from the first batch; by a controller
        that watches each training forward), the rule's selection, then, in training, the rule's and the
        controller's own say over the routing (token rounding; Expert Threshold's warm-up and clamp)."""
        if not self._bias_ready_seen and not self._check_bias_ready():
            self._init_bias(scores_TE, logits_TE)
        if self.training and not recomputing():
            with torch.no_grad():
                new_bias = self.controller.observe(scores_TE, logits_TE, self.expert_bias)
                if new_bias is not None:  # a controller that sets the bias from this very batch (BIP's "before")
                    self.expert_bias.copy_(new_bias)
        with torch.no_grad():
            bias_E = self.expert_bias if not self.zero_experts else F.pad(self.expert_bias, (0, self.zero_experts))
            selection_TE = self.controller.selection_scores(self.selection, logits_TE, scores_TE, bias_E,
                                                            self.training)
        selected = self._select(selection_TE, token_ids)
        if not self.training or self.causal_topk:
            return selected
        token_idx_A, expert_idx_A, mask_TE = self.selection.reroute(selection_TE, selected, self.top_k, self.cfg)
        rerouted_TE = self.controller.reroute(selection_TE, mask_TE)
        if rerouted_TE is not mask_TE:
            mask_TE = rerouted_TE
            token_idx_A, expert_idx_A = mask_TE.nonzero(as_tuple=True)
        return token_idx_A, expert_idx_A, mask_TE

    def _select(self, biased_TE: torch.Tensor, token_ids: torch.Tensor | None = None):
        rule = self.causal_rule if self.causal_topk else self.selection
        return rule.select_tokens(biased_TE, token_ids, self.top_k, self.cfg)

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
                # ranks (Megatron's global aux loss); P stays local, and DDP averages the gradients.
                # Activation recomputation repeats a forward, not its tokens: they are counted once
                if not recomputing():
                    self.step_counts += distributed.all_sum_(counts_E.clone())
                value = balancing.aux_loss(probs_TE, self.step_counts.clone())
            else:
                value = balancing.aux_loss(probs_TE, counts_E)
            losses["aux_loss"] = cfg.aux_alpha * value
        if cfg.z_loss_beta > 0:
            losses["z_loss"] = cfg.z_loss_beta * balancing.z_loss(logits_TE)
        priced = self.controller.loss(scores_TE) if self.training else None
        if priced is not None:  # a controller that balances through a loss (phi)
            losses[f"{self.controller.name}_loss"] = priced
        return losses

    def _check_bias_ready(self) -> bool:
        self._bias_ready_seen = bool(self.bias_ready)  # a loaded checkpoint may have set it
        return self._bias_ready_seen

    @torch.no_grad()
    def _init_bias(self, scores_TE: torch.Tensor, logits_TE: torch.Tensor) -> None:
        initial = self.controller.initial_bias(scores_TE.detach(), logits_TE.detach())
        if initial is not None:
            self.expert_bias.copy_(initial)
        self.bias_ready.fill_(True)
        self._bias_ready_seen = True

    @torch.no_grad()
    def balance_update(self, counts_E: torch.Tensor, num_tokens: int, progress: float = 0.0) -> None:
        """Apply the bias update from one optimizer step's counts (summed over micro-batches).

        `progress` is the fraction of training done (a controller freezes its bias for the last
        `bias_freeze_frac` of it).
        """
        self.step_counts.zero_()
        new_bias = self.controller.step(self.expert_bias, counts_E.to(self.expert_bias.device, torch.float32),
                                        num_tokens, progress)
        if new_bias is not None:
            self.expert_bias.copy_(new_bias)
