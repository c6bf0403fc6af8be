"""Mixtral (transformers' MixtralForCausalLM): softmax over the experts, top-k, the k gates
renormalised (a softmax over the chosen logits); no shared experts; grouped-query attention."""

from __future__ import annotations

from harness.engine.families.base import Family, common, register_family


@register_family("mixtral")
class Mixtral(Family):
    config_class, model_class = "MixtralConfig", "MixtralForCausalLM"
    native_preset = "softmax_topk"
    traits = {"route_norm": True}

    @classmethod
    def hf_config(cls, model) -> dict:
        return {**common(model), "intermediate_size": model.expert_hidden, "num_local_experts": model.num_experts,
                "router_jitter_noise": 0.0, "sliding_window": None}

    @classmethod
    def dense_config(cls, model) -> dict:  # one expert of the active width: its gate is 1
        return {**cls.hf_config(model), "intermediate_size": model.active_hidden, "num_local_experts": 1,
                "num_experts_per_tok": 1}
