"""The bug classes `moe-harness check` runs, one file each, in the order the table prints them."""

import importlib

ORDER = ("counts_total", "gates_unbiased", "logits_raw", "gate_formula", "renorm_flag", "gate_gradient",
         "aux_enabled", "aux_gradient", "aux_batch_invariant", "padding_excluded", "eval_frozen", "recompute_once",
         "group_mask", "bias_bf16", "counts_precision", "logits_fp32", "tiny_batch", "tie_determinism",
         "unique_experts", "mixed_stack", "bias_roundtrip")

for _name in ORDER:
    importlib.import_module(f"{__name__}.{_name}")
