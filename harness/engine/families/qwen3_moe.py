"""Qwen3-MoE (transformers' Qwen3MoeForCausalLM): softmax over the experts, top-k, the gates
renormalised (norm_topk_prob, as the Qwen3 MoE checkpoints set it); QK-norm attention with its own
head width; no shared experts (unlike Qwen2-MoE); every layer sparse."""

from __future__ import annotations

from harness.engine.families.base import Family, common, register_family


@register_family("qwen3_moe")
class Qwen3Moe(Family):
    config_class, model_class = "Qwen3MoeConfig", "Qwen3MoeForCausalLM"
    native_preset = "softmax_topk"
    traits = {"route_norm": True}

    @classmethod
    def hf_config(cls, model) -> dict:
        return {**common(model), "head_dim": model.dim // model.num_heads, "moe_intermediate_size": model.expert_hidden,
                "intermediate_size": model.active_hidden, "num_experts": model.num_experts, "norm_topk_prob": True,
                "decoder_sparse_step": 1, "mlp_only_layers": []}

    @classmethod
    def dense_config(cls, model) -> dict:  # every layer the dense MLP of the active width
        return {**cls.hf_config(model), "mlp_only_layers": list(range(model.num_layers))}
