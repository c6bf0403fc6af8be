"""LongCat-Flash (transformers' LongcatFlashForCausalLM): beside the n FFN experts, Z
zero-computation experts that return the token unchanged; softmax over all n + Z logits (the
router computes them in float32), top-k of the scores plus a correction bias (selection only),
the gates the chosen scores times routed_scaling_factor, not renormalised, the mass on zero
experts scaling the token's own input. Each layer is two attention and dense-FFN sublayers with
the MoE block as a shortcut beside them; multi-head latent attention.

Any harness router swaps in. One with zero experts and exactly k choices (the `longcat` preset)
hands the block its [T, k] choices with the zero experts' ids n + z, as LongCat's own router does:
the block sums their gates as the token's identity mass and sends each such slot to expert
z * n / Z with weight 0 (a row of compute, as in the untouched model). One whose count varies
hands the mass as one more slot. Every slot a swapped router leaves empty, and that identity slot,
carry the id n + Z, which the block maps to n, the id its experts skip; any other id there (n,
say) would cost a row of expert 0 per slot. Sizing: the routed experts have the proxy's expert width, the two dense FFNs of a layer
the width of a shared expert (base.shared_width), Z = the longcat preset's 4, scaled by 6.0 as
LongCat-Flash's released config.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.engine.families.base import Family, common, register_family, shared_width
from harness.engine.families.gates import SwappedGate

SCALE = 6.0  # LongCat-Flash's routed_scaling_factor
ZERO = 4  # its zero-computation experts here: the longcat preset's zc_experts (LongCat-Flash: 256 beside 512)


class IdentitySlot(nn.Module):
    """A swapped router with zero experts in LongCat's block: its FFN assignments, and their
    identity mass as one slot at the empty id, which the block returns the token by."""

    def __init__(self, gate: SwappedGate):
        super().__init__()
        self.gate = gate

    def forward(self, hidden):
        scores, weights_TK, ids_TK = self.gate(hidden)
        identity_T = self.gate.last_route.identity_T
        slot = torch.full_like(ids_TK[:, :1], self.gate.empty_id)
        return scores, torch.cat([weights_TK, identity_T[:, None].to(weights_TK.dtype)], 1), torch.cat([ids_TK, slot], 1)


@register_family("longcat_flash")
class LongcatFlash(Family):
    config_class, model_class = "LongcatFlashConfig", "LongcatFlashForCausalLM"
    native_preset = "longcat"
    traits = {"route_norm": False, "route_scale": SCALE}
    gate_name, gate_linear, zero_experts = "router", "classifier", ZERO
    routes_from_float32 = True  # F.linear(hidden.float(), weight.float()), also in a float64 model

    @classmethod
    def gate_in_block(cls, gate, model):
        if not isinstance(gate, SwappedGate):
            return gate
        gate.empty_id = model.num_experts + ZERO  # NOTE: maps to the experts' skipped id n (docstring)
        return IdentitySlot(gate) if gate.router.zero_experts and not gate.zero_slots else gate

    @classmethod
    def hf_config(cls, model) -> dict:
        head = model.dim // model.num_heads
        base = common(model)
        base["num_layers"] = base.pop("num_hidden_layers")
        base.pop("num_experts_per_tok")
        return {**base, "rope_parameters": {"rope_type": "default", "rope_theta": base.pop("rope_theta")},
                "ffn_hidden_size": shared_width(model), "expert_ffn_hidden_size": model.expert_hidden,
                "n_routed_experts": model.num_experts, "moe_topk": model.top_k, "zero_expert_num": ZERO,
                "routed_scaling_factor": SCALE, "q_lora_rank": max(8, model.dim // 2),
                "kv_lora_rank": max(8, model.dim // 2), "qk_nope_head_dim": head, "qk_rope_head_dim": max(2, head // 2),
                "v_head_dim": head, "head_dim": max(2, head // 2)}

    @classmethod
    def dense_config(cls, model) -> dict:
        """One expert of the active width, always chosen, and no zero experts: a dense FFN."""
        return {**cls.hf_config(model), "n_routed_experts": 1, "moe_topk": 1, "zero_expert_num": 0,
                "expert_ffn_hidden_size": model.active_hidden}
