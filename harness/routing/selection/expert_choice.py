"""Expert choice (Zhou et al. 2022): in each chunk of `router.ec_chunk` tokens (0: the whole
micro-batch) every expert takes its C = round(chunk k / n) best tokens, so a token gets 0..n
experts. Balanced by construction, and not causal: a token's experts depend on later tokens of
its chunk (the driver also reports a causal top-k loss of the same scores)."""

from __future__ import annotations

import torch

import harness.routing.balancing as balancing
from harness.routing.params import Param
from harness.routing.selection.base import Selected, SelectionRule, register_selection


@register_selection("expert_choice")
class ExpertChoice(SelectionRule):
    causal = False
    variable_k = True
    params = {"ec_chunk": Param(int, 0, "tokens per chunk in which each expert takes its share (must divide a "
                                        "micro-batch's tokens); 0 = the whole micro-batch", low=0)}

    def check(self, cfg) -> None:
        if cfg.bias_mode != "none" or cfg.capacity_factor > 0:
            raise ValueError("router.selection = 'expert_choice' balances by construction: it needs bias_mode = "
                             f"'none' and capacity_factor = 0; got bias_mode={cfg.bias_mode!r}, "
                             f"capacity_factor={cfg.capacity_factor!r}")

    def check_batch(self, cfg, micro_tokens: int, where: str) -> None:
        chunk = self.param(cfg, "ec_chunk")
        if micro_tokens % (chunk or micro_tokens):
            raise ValueError(f"router.ec_chunk = {chunk} must divide the {micro_tokens} tokens of a "
                             f"micro-batch ({where}); 0 takes the whole micro-batch")

    def select(self, biased_TE: torch.Tensor, top_k: int, cfg) -> Selected:
        mask_TE = balancing.expert_choice_mask(biased_TE, self.param(cfg, "ec_chunk"), top_k)
        token_idx_A, expert_idx_A = mask_TE.nonzero(as_tuple=True)
        return token_idx_A, expert_idx_A, mask_TE
