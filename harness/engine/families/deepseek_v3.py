"""DeepSeek-V3 (transformers' DeepseekV3ForCausalLM): sigmoid scores, group-limited top-k (experts
in groups, a group scored by its two best, only the best groups eligible), the gates renormalised
and scaled by 2.5 (routed_scaling_factor), one always-on shared expert, the first layer dense,
multi-head latent attention.

Sizing: the proxy's active FFN width k x expert_hidden is shared between the shared expert and
the k routed ones (each of width k h / (k + 1), rounded to a multiple of 8: transformers' grouped
expert kernels need 16-byte strides, 8 elements in bf16), so a token costs about what it costs in
the proxy; the first layer's dense FFN has that width. With one dense layer the family has one MoE
layer fewer than the proxy of the same depth, and fewer parameters in all (its page counts them).
"""

from __future__ import annotations

from harness.engine.families.base import Family, common, register_family, shared_width as expert_width


def groups(num_experts: int, top_k: int) -> tuple[int, int]:
    """(n_group, topk_group): DeepSeek-V3's 8 of 256 experts' groups keep the best 4; here groups of
    2 experts where they divide, enough of them eligible to hold k."""
    if num_experts % 2 or num_experts < 4:
        return 1, 1
    n_group = num_experts // 2
    return n_group, min(n_group, max(top_k, n_group // 2))


@register_family("deepseek_v3")
class DeepseekV3(Family):
    config_class, model_class = "DeepseekV3Config", "DeepseekV3ForCausalLM"
    native_preset = "sigmoid_topk"
    traits = {"route_norm": True, "route_scale": 2.5}

    @classmethod
    def moe_layers(cls, model) -> int:
        return model.num_layers - 1  # the first is dense

    @classmethod
    def router_traits(cls, selection: str, model) -> dict:
        n_group, topk_group = groups(model.num_experts, model.top_k)
        limits = {"n_group": n_group, "topk_group": topk_group} if selection == "topk" and n_group > 1 else {}
        return {**cls.traits, **limits}

    @classmethod
    def hf_config(cls, model) -> dict:
        head = model.dim // model.num_heads
        n_group, topk_group = groups(model.num_experts, model.top_k)
        return {**common(model), "moe_intermediate_size": expert_width(model), "intermediate_size": model.active_hidden,
                "n_routed_experts": model.num_experts, "n_shared_experts": 1, "first_k_dense_replace": 1,
                "n_group": n_group, "topk_group": topk_group, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
                "q_lora_rank": max(8, model.dim // 2), "kv_lora_rank": max(8, model.dim // 2),
                "qk_nope_head_dim": head, "qk_rope_head_dim": max(2, head // 2), "v_head_dim": head,
                "head_dim": max(2, head // 2)}

    @classmethod
    def dense_config(cls, model) -> dict:
        return {**cls.hf_config(model), "first_k_dense_replace": model.num_layers}
