"""Llama 4 (transformers' Llama4ForCausalLM, text only): sigmoid of the top-k logits, not
renormalised, and the score scales the expert's *input*, E_i(s x), not its output (the block runs
every expert on every token, each scaled by its score, 0 where the expert was not chosen); one
always-on shared expert; QK-norm, and every fourth layer without RoPE. The block holds its router
as `router` and takes dense scores [T, E] from it, so the harness's ids and weights are scattered
into that form here; any k, variable or dropped, reaches the experts that way.

Sizing: the proxy's active FFN width is shared between the shared expert and the k routed ones (as
DeepSeek-V3's is); the dense twin makes every layer a dense MLP of that width.
"""

from __future__ import annotations

from torch import nn

from harness.engine.families.base import Family, common, register_family, shared_width


class OwnTopK(nn.Module):
    """Llama 4's own router answering (logits, weights [T, k], ids [T, k]) for the harness to record."""

    def __init__(self, router: nn.Module, top_k: int):
        super().__init__()
        self.router, self.top_k = router, top_k

    def forward(self, hidden):
        scores_TE, logits_TE = self.router(hidden)
        ids_TK = logits_TE.topk(self.top_k, dim=-1).indices  # NOTE: the very top-k the router took
        return logits_TE, scores_TE.gather(1, ids_TK), ids_TK


class DenseScores(nn.Module):
    """A gate's (logits, weights [T, K], ids [T, K]) as the (scores [T, E], logits) Llama 4's block calls for."""

    def __init__(self, gate: nn.Module, num_experts: int):
        super().__init__()
        self.gate, self.num_experts = gate, num_experts

    def forward(self, hidden):
        logits, weights_TK, ids_TK = self.gate(hidden)
        dense = weights_TK.new_zeros(ids_TK.shape[0], self.num_experts + 1)  # NOTE: column n takes padded slots
        return dense.scatter_add(1, ids_TK, weights_TK)[:, :self.num_experts], logits


@register_family("llama4")
class Llama4(Family):
    config_class, model_class = "Llama4TextConfig", "Llama4ForCausalLM"
    native_preset = "sigmoid_topk"
    traits = {"route_norm": False}  # NOTE: the preset renormalises; Llama 4's gates are the plain sigmoids
    gate_name = "router"
    grouped_experts = False  # NOTE: one batched matmul of every expert over every token: no sparse path

    @classmethod
    def own_gate(cls, gate, model):
        return OwnTopK(gate, model.top_k)

    @classmethod
    def gate_in_block(cls, gate, model):
        return DenseScores(gate, model.num_experts)

    @classmethod
    def hf_config(cls, model) -> dict:
        base = common(model)
        rope = {"rope_type": "default", "rope_theta": base.pop("rope_theta")}
        return {**base, "rope_parameters": rope, "head_dim": model.dim // model.num_heads,
                "num_local_experts": model.num_experts, "intermediate_size": shared_width(model),
                "intermediate_size_mlp": model.active_hidden, "attention_chunk_size": max(model.seq_len, 8192),
                "router_aux_loss_coef": 0.0, "bos_token_id": None, "eos_token_id": None}

    @classmethod
    def dense_config(cls, model) -> dict:
        return {**cls.hf_config(model), "moe_layers": []}
