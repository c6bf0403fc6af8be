"""Qwen3.5-MoE (transformers' Qwen3_5MoeForCausalLM, text only): softmax over fine-grained experts,
top-k, the gates renormalised; beside them one shared expert whose output is scaled by its own
sigmoid gate, sigmoid(x w_g) (the gated shared expert); hybrid attention, three gated-DeltaNet
linear-attention layers to each full-attention one (the released layer_types), every layer sparse.
Qwen trains it with the global-batch auxiliary loss (the `qwen3_5` preset).

Sizing: the proxy's active FFN width is shared between the shared expert and the k routed ones,
as DeepSeek-V3's is. The dense twin is one routed expert of the k experts' width (its gate is 1)
beside the same gated shared expert: the family has no dense layer.
"""

from __future__ import annotations

from harness.engine.families.base import Family, common, register_family, shared_width


@register_family("qwen3_5_moe")
class Qwen3_5Moe(Family):
    config_class, model_class = "Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM"
    native_preset = "softmax_topk"
    traits = {"route_norm": True}

    @classmethod
    def hf_config(cls, model) -> dict:
        head = model.dim // model.num_heads
        base = common(model)
        rope = {"rope_type": "default", "rope_theta": base.pop("rope_theta"), "partial_rotary_factor": 0.25}
        return {**base, "rope_parameters": rope, "head_dim": head, "num_experts": model.num_experts,
                "moe_intermediate_size": shared_width(model), "shared_expert_intermediate_size": shared_width(model),
                "linear_key_head_dim": head, "linear_value_head_dim": head, "linear_num_key_heads": model.num_heads,
                "linear_num_value_heads": model.num_heads, "router_aux_loss_coef": 0.0}

    @classmethod
    def dense_config(cls, model) -> dict:
        return {**cls.hf_config(model), "num_experts": 1, "num_experts_per_tok": 1,
                "moe_intermediate_size": model.top_k * shared_width(model)}
