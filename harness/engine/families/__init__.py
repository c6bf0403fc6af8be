"""Model families: transformers' MoE architectures as the proxy (`model.family`), any harness router
swapped into every MoE block (gates.py), or the family's own (`router = "native"`). One file per
family; base.py says what a family declares."""

from __future__ import annotations

import importlib
import pkgutil
import types

import torch
from torch import nn

from harness.engine.families.base import FAMILIES, HARNESS, Family, family_names, transformers_module
from harness.engine.families.gates import NativeGate, SwappedGate
from harness.engine.families.resolve import check_moe_layers

__all__ = ["FAMILIES", "HARNESS", "Family", "FamilyLM", "family_names", "transformers_module"]


def experts_in_autocast_dtype(experts: nn.Module) -> None:
    """Run a family's experts in the autocast dtype, as autocast runs every Linear. transformers'
    fused experts call `_grouped_mm` on their float32 weights, which autocast does not cast: under
    bf16 they ran in float32 (on CUDA, torch's slow fallback). The float32 weights stay the master
    copy: each forward casts them, and their gradients flow back through the cast."""
    if list(experts.parameters(recurse=False)):  # NOTE: per-expert MLPs' Linears are autocast already
        experts.casting, experts.forward = False, types.MethodType(_cast_forward, experts)


def _cast_forward(experts: nn.Module, *args, **kwargs):
    device = args[0].device.type
    if experts.casting or not torch.is_autocast_enabled(device):
        return type(experts).forward(experts, *args, **kwargs)
    dtype = torch.get_autocast_dtype(device)
    cast = {n: p.to(dtype) if p.is_floating_point() else p for n, p in experts.named_parameters(recurse=False)}
    experts.casting = True  # NOTE: functional_call calls this forward again, which then runs the family's
    try:
        return torch.func.functional_call(experts, cast, args, kwargs)
    finally:
        experts.casting = False


def sparse_blocks(model: nn.Module, gate_name: str = "gate") -> list[nn.Module]:
    """The family's MoE blocks, in layer order: the modules with `experts` and a router at `gate_name`."""
    return [m for m in model.modules() if hasattr(m, gate_name) and hasattr(m, "experts")]


class FamilyLM(nn.Module):
    """A family's causal LM with its gates swapped (or its own kept): token ids [B, L] in, logits
    [B, L, V] out, and `moe_layers` as the harness's proxy has them."""

    def __init__(self, model_cfg, router_cfg, native: bool = False, dense: bool = False):
        super().__init__()
        family = model_cfg.family_class
        if not dense:
            check_moe_layers(model_cfg)
        transformers = transformers_module()
        config = getattr(transformers, family.config_class)(
            **(family.dense_config(model_cfg) if dense else family.hf_config(model_cfg)))
        self.hf = getattr(transformers, family.model_class)(config).float()
        family.prepare(self.hf, model_cfg)
        self.cfg, self.family = model_cfg, family
        self.unused_parameters = family.unused_parameters  # NOTE: DDP must then look for them (train.py)
        self.gates = []
        for block in [] if dense else sparse_blocks(self.hf, family.gate_name):
            own = getattr(block, family.gate_name)
            keep = native or family.keeps_own(block)
            gate = NativeGate(family.own_gate(own, model_cfg), model_cfg.num_experts, family.native_preset,
                              family.zero_experts) if keep \
                else SwappedGate(getattr(own, family.gate_linear) if family.gate_linear else own, model_cfg.dim,
                                 model_cfg.num_experts, model_cfg.top_k, router_cfg)
            if not keep:  # NOTE: a float64 model then routes in float64, as the family's own router does
                gate.router.float64_logits = family.routes_in_model_dtype
                gate.router.float32_inputs = family.routes_from_float32
            setattr(block, family.gate_name, family.gate_in_block(gate, model_cfg))
            if not keep and not (gate.fixed_k or gate.zero_slots) and hasattr(block.experts, "_is_expert_parallel"):
                # NOTE: transformers' fast expert paths (grouped_mm, batched_mm) leave a slot with no
                # expert (id n) uninitialised unless this flag is on; it turns on only their masking of
                # such slots (its expert parallelism sets it for the same reason), which a swapped
                # router's variable k needs. A fixed-k router pads nothing (zero experts' choices
                # included, which the block maps itself): the masking would cost
                # 10-20 % of the block (a copy and two masked fills per call, in a profile)
                block.experts._is_expert_parallel = True
            experts_in_autocast_dtype(block.experts)
            self.gates.append(gate)

    @property
    def moe_layers(self) -> list[nn.Module]:
        return self.gates

    def forward(self, idx_BL: torch.Tensor) -> torch.Tensor:
        for gate in self.gates:
            gate.seq_len, gate.token_ids = idx_BL.shape[1], idx_BL
        return self.hf(input_ids=idx_BL, use_cache=False).logits


# NOTE: every other module of this folder is a family that registers itself
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "gates", "resolve"):
        importlib.import_module(f"{__name__}.{_module.name}")
