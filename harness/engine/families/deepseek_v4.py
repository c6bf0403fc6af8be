"""DeepSeek-V4 (transformers' DeepseekV4ForCausalLM): sqrt(softplus(z)) scores, top-k with a
correction bias for selection only (transformers keeps it a buffer training does not move), the
gates renormalised and scaled by 1.5; one shared expert; its first MoE layers route by **token
id** through a fixed table (`tid2eid[vocab, k]`; the gates are still the scores of those experts),
the rest by score; hyper-connected residual streams and compressed attention.

The hash layers keep their own gate under any router (no score picks their experts, so no
balancing method can act there; their loads are recorded with the others'), and the table is set
round-robin, t -> {(t k + j) mod n}, as Megatron's port initialises it (no training recipe is
published; transformers' random init leaves it all zeros, every token on expert 0). Here the
first min(3, L - 1) layers hash, as the released model's first 3 of 43 do. The other layers take
the run's router, with the family's renormalisation and scale.

Sizing as DeepSeek-V3's: the proxy's active FFN width is shared between the shared expert and the
k routed ones. The dense twin is one routed expert of the k experts' width beside the shared one
(the family has no dense layer), every layer scored.
"""

from __future__ import annotations

import torch

from harness.engine.families.base import Family, common, register_family, shared_width
from harness.routing.selection.hash import hash_table

SCALE = 1.5  # the released routed_scaling_factor


def hash_layers(model) -> int:
    return min(3, model.num_layers - 1)


@register_family("deepseek_v4")
class DeepseekV4(Family):
    config_class, model_class = "DeepseekV4Config", "DeepseekV4ForCausalLM"
    native_preset = "sqrtsoftplus_topk"
    traits = {"route_norm": True, "route_scale": SCALE}
    routes_in_model_dtype = True
    unused_parameters = True  # NOTE: the sparse-attention indexer gets no gradient at the proxy's short contexts

    @classmethod
    def keeps_own(cls, block) -> bool:
        return bool(getattr(block, "is_hash", False))

    @classmethod
    def prepare(cls, hf_model, model) -> None:
        with torch.no_grad():
            for module in hf_model.modules():
                if hasattr(module, "tid2eid"):  # NOTE: Megatron's round-robin table, the harness's hash rule's
                    table = module.tid2eid
                    table.copy_(hash_table(torch.arange(table.shape[0]), model.num_experts, table.shape[1],
                                           "round_robin", 0))

    @classmethod
    def hf_config(cls, model) -> dict:
        head = model.dim // model.num_heads
        base = common(model)
        hashed = hash_layers(model)
        return {**base, "num_key_value_heads": 1, "head_dim": head, "qk_rope_head_dim": max(2, head // 4),
                "q_lora_rank": max(8, model.dim // 2), "o_lora_rank": max(8, model.dim // 2), "o_groups": 1,
                "index_n_heads": model.num_heads, "index_head_dim": max(8, head // 2),
                "index_topk": max(1, model.seq_len // 4), "sliding_window": max(1, model.seq_len // 4),
                "n_routed_experts": model.num_experts, "n_shared_experts": 1,
                "moe_intermediate_size": shared_width(model), "scoring_func": "sqrtsoftplus", "norm_topk_prob": True,
                "routed_scaling_factor": SCALE, "num_nextn_predict_layers": 0, "router_aux_loss_coef": 0.0,
                "mlp_layer_types": ["hash_moe"] * hashed + ["moe"] * (model.num_layers - hashed)}

    @classmethod
    def dense_config(cls, model) -> dict:
        return {**cls.hf_config(model), "n_routed_experts": 1, "num_experts_per_tok": 1,
                "moe_intermediate_size": model.top_k * shared_width(model), "mlp_layer_types": ["moe"] * model.num_layers}
