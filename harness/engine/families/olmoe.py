"""OLMoE (transformers' OlmoeForCausalLM): softmax over the experts, top-k, the gates not
renormalised (norm_topk_prob false); QK-norm attention; no shared experts."""

from __future__ import annotations

from harness.engine.families.base import Family, common, register_family


@register_family("olmoe")
class Olmoe(Family):
    config_class, model_class = "OlmoeConfig", "OlmoeForCausalLM"
    native_preset = "softmax_topk"
    traits = {"route_norm": False}

    @classmethod
    def hf_config(cls, model) -> dict:
        return {**common(model), "intermediate_size": model.expert_hidden, "num_experts": model.num_experts,
                "norm_topk_prob": False}

    @classmethod
    def dense_config(cls, model) -> dict:
        return {**cls.hf_config(model), "intermediate_size": model.active_hidden, "num_experts": 1,
                "num_experts_per_tok": 1}
