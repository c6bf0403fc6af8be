"""gpt-oss (transformers' GptOssForCausalLM): a router with a bias term, z = x W + c; top-k taken on
the logits, then a softmax over those k only, which equals the softmax over every expert renormalised
over the chosen k (so the harness writes it as softmax scores with route_norm); at k = 1 every gate
is 1 and the router gets no gradient from the LM loss (the router warns). Experts with biases and a
clamped SwiGLU (alpha 1.702, limit 7); attention with learned sinks, alternating sliding-window
(128) and full layers; no shared expert; every layer sparse. The block holds its router as `router`.

Sizing: the routed experts have the proxy's width; the dense twin is one expert of the k experts'
width (its gate is 1).
"""

from __future__ import annotations

from harness.engine.families.base import Family, common, register_family


@register_family("gpt_oss")
class GptOss(Family):
    config_class, model_class = "GptOssConfig", "GptOssForCausalLM"
    native_preset = "softmax_topk"
    traits = {"route_norm": True, "gate_bias": True}
    gate_name = "router"

    @classmethod
    def hf_config(cls, model) -> dict:
        return {**common(model), "head_dim": model.dim // model.num_heads, "intermediate_size": model.expert_hidden,
                "num_local_experts": model.num_experts, "sliding_window": 128, "router_aux_loss_coef": 0.0}

    @classmethod
    def dense_config(cls, model) -> dict:
        return {**cls.hf_config(model), "intermediate_size": model.active_hidden, "num_local_experts": 1,
                "num_experts_per_tok": 1}
