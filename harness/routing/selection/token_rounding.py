"""Token rounding (SonicMoE, arXiv 2512.14080): top-k, then in training each expert's count rounded
to a multiple of the GEMM tile M, so no tile of the grouped matmul is computed part-empty: an expert
rounded up takes its next-best tokens (by score + bias) that top-k did not give it, one rounded down
drops its lowest-scored assignments. Evaluation is plain top-k (causal).

    c_i = the expert's top-k count,  r_i = M round(c_i / M)   (nearest, half up; or up, or down)
    r_i >= M where c_i > 0: an expert with tokens keeps one tile at least
    expert i keeps its r_i best tokens, its top-k tokens first: c_i - r_i dropped or r_i - c_i added

The floor of one tile is the harness's: at real scale (thousands of tokens per expert) a count
never rounds to 0, while at a proxy's micro-batch (a few dozen per expert) nearest and down would
drop whole experts. A token may end with fewer or more than k experts (0 included), so k varies in training; the gates
are the scores of what is kept, renormalised over the token's experts where route_norm is on.
"""

from __future__ import annotations

import torch

from harness.routing.params import Param
from harness.routing.selection.base import Selected, register_selection
from harness.routing.selection.topk import TopK


def rounded_counts(counts_E: torch.Tensor, tile: int, mode: str, num_tokens: int) -> torch.Tensor:
    """[E] each count rounded to a multiple of `tile` (nearest: half up), at most `num_tokens`; a count
    above 0 keeps at least one tile."""
    step = {"nearest": torch.floor(counts_E / tile + 0.5), "up": torch.ceil(counts_E / tile),
            "down": torch.floor(counts_E / tile)}[mode]
    step = torch.where(counts_E > 0, step.clamp_min(1), step)  # NOTE: never a whole expert dropped
    return (step * tile).clamp_max(num_tokens).long()


def round_to_tiles(biased_TE: torch.Tensor, mask_TE: torch.Tensor, tile: int, mode: str) -> torch.Tensor:
    """[T, E] bool: each expert's top-k tokens, then its next best, up to its rounded count."""
    num_tokens = biased_TE.shape[0]
    target_E = rounded_counts(mask_TE.sum(0), tile, mode, num_tokens)
    # NOTE: each expert's tokens ranked by (chosen first, then score, then index): one stable sort by
    # score over contiguous rows, then the chosen placed before the rest by two running counts (a
    # second stable sort by "chosen" gave the same order at twice the time)
    by_score_ET = biased_TE.T.contiguous().argsort(dim=1, descending=True, stable=True)
    chosen_ET = mask_TE.T.gather(1, by_score_ET)  # in score order
    chosen_before_ET = chosen_ET.cumsum(1)
    place_ET = torch.where(chosen_ET, chosen_before_ET - 1, chosen_before_ET[:, -1:] + (~chosen_ET).cumsum(1) - 1)
    return torch.zeros_like(chosen_ET).scatter_(1, by_score_ET, place_ET < target_E[:, None]).T


@register_selection("token_rounding")
class TokenRounding(TopK):
    variable_k = True  # in training
    refines = "topk"
    params = {
        **TopK.params,
        "tr_tile": Param(int, 16, "M: the tile each expert's training count is rounded to a multiple of", low=1),
        "tr_mode": Param(str, "nearest", "round each count to the nearest multiple (half up), up or down",
                         choices=("nearest", "up", "down")),
    }

    def reroute(self, biased_TE, selected: Selected, top_k, cfg) -> Selected:
        mask_TE = round_to_tiles(biased_TE, selected[2], self.param(cfg, "tr_tile"), self.param(cfg, "tr_mode"))
        token_idx_A, expert_idx_A = mask_TE.nonzero(as_tuple=True)
        return token_idx_A, expert_idx_A, mask_TE
