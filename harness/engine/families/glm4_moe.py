"""GLM-4.5 / GLM-5 (transformers' Glm4MoeForCausalLM): DeepSeek-V3's routing with its groups
switched off: sigmoid scores, a correction bias for selection only (the Loss-Free bias: transformers
keeps it a buffer that training does not move), top-k over every expert (n_group = topk_group = 1),
the gates renormalised and scaled by routed_scaling_factor (2.5 in GLM-4.5's released config), one
always-on shared expert, the first layer dense; grouped-query attention with half the head rotated
(partial_rotary_factor 0.5) and biased q/k/v projections, no MLA.

Sizing as DeepSeek-V3's: the proxy's active FFN width is shared between the shared expert and the
k routed ones; the first layer's dense FFN has that width.
"""

from __future__ import annotations

from harness.engine.families.base import Family, common, register_family, shared_width

SCALE = 2.5  # GLM-4.5's routed_scaling_factor


@register_family("glm4_moe")
class Glm4Moe(Family):
    config_class, model_class = "Glm4MoeConfig", "Glm4MoeForCausalLM"
    native_preset = "sigmoid_topk"
    traits = {"route_norm": True, "route_scale": SCALE}

    @classmethod
    def moe_layers(cls, model) -> int:
        return model.num_layers - 1  # the first is dense

    @classmethod
    def hf_config(cls, model) -> dict:
        base = common(model)
        rope = {"rope_type": "default", "rope_theta": base.pop("rope_theta"), "partial_rotary_factor": 0.5}
        return {**base, "rope_parameters": rope, "head_dim": model.dim // model.num_heads,
                "moe_intermediate_size": shared_width(model), "intermediate_size": model.active_hidden,
                "n_routed_experts": model.num_experts, "n_shared_experts": 1, "first_k_dense_replace": 1,
                "n_group": 1, "topk_group": 1, "routed_scaling_factor": SCALE, "norm_topk_prob": True,
                "attention_bias": True, "use_qk_norm": False}

    @classmethod
    def dense_config(cls, model) -> dict:
        return {**cls.hf_config(model), "first_k_dense_replace": model.num_layers}
