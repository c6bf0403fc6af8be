"""Hash selection (DeepSeek-V4's hash-routed layers, transformers' DeepseekV4HashRouter and
Megatron's port): a token's k experts are fixed by its id through a table, tid -> k distinct
experts, so no score picks them; the gates are still the scores of those experts (renormalised
where route_norm is on), and the router weight still learns through them. Balance is set by the
token frequencies and the table alone, so no balancing controller can act (refused); the load
metrics (MaxVio) are recorded as for any layer.

    round_robin:  experts(t) = {(t k + j) mod n : j < k}         (Megatron's initialisation)
    random:       experts(t) = {(h_s(t) + j) mod n : j < k}      h_s a seeded multiplicative hash

No training recipe for the table is published (Megatron starts it round-robin); round_robin spreads
the vocabulary exactly evenly over the experts, random (`hash_seed`) spreads it uniformly in
expectation. Both are functions of the id, so the table needs no storage and every rank and layer
agree; the ids come from the model (a router called without them cannot hash and says so).
"""

from __future__ import annotations

import torch

from harness.routing.params import Param
from harness.routing.selection.base import Selected, SelectionRule, register_selection

PRIME, MULTIPLIER = 2_147_483_647, 48_271  # minstd: 2^31 - 1 and its multiplier (products fit int64)


def hash_table(token_ids_T: torch.Tensor, num_experts: int, top_k: int, table: str, seed: int) -> torch.Tensor:
    """[T, k] each token's experts: k distinct, consecutive mod n from the token's base expert."""
    ids = token_ids_T.long()
    if table == "round_robin":
        base = ids * top_k
    else:  # NOTE: two rounds of minstd over the id offset by the seed: ids < 2^31 keep every product in int64
        base = ((ids % PRIME) * MULTIPLIER + (seed % PRIME) * 16_807 + 1) % PRIME
        base = (base * MULTIPLIER) % PRIME
    return (base[:, None] + torch.arange(top_k, device=ids.device)) % num_experts


@register_selection("hash")
class Hash(SelectionRule):
    by_token_id = True
    params = {
        "hash_table": Param(str, "round_robin", "the token-id table: round_robin (Megatron's) or random (seeded)",
                            choices=("round_robin", "random")),
        "hash_seed": Param(int, 0, "the seed of the random table", low=0),
    }

    def check(self, cfg) -> None:
        if cfg.bias_mode != "none":
            raise ValueError(f"router.selection = 'hash' routes by token id: no score picks the experts, so no "
                             f"balancing controller can act; router.bias_mode must be 'none', not {cfg.bias_mode!r}")

    def select(self, biased_TE: torch.Tensor, top_k: int, cfg) -> Selected:
        raise ValueError("router.selection = 'hash' routes by token id, and this router was called without the "
                         "tokens' ids (Router(x, token_ids=...)); the harness's models hand them over")

    def select_tokens(self, biased_TE, token_ids_T, top_k, cfg) -> Selected:
        if token_ids_T is None:
            return self.select(biased_TE, top_k, cfg)
        expert_ids_TK = hash_table(token_ids_T, biased_TE.shape[1], top_k, self.param(cfg, "hash_table"),
                                   self.param(cfg, "hash_seed"))
        token_idx_A = torch.arange(biased_TE.shape[0], device=biased_TE.device).repeat_interleave(top_k)
        mask_TE = torch.zeros_like(biased_TE, dtype=torch.bool).scatter_(1, expert_ids_TK, True)
        return token_idx_A, expert_ids_TK.flatten(), mask_TE
