"""Selection rules: which experts each token goes to, given the scores plus the bias.

A rule is one registered class in a file of its own. It declares its traits (`causal`: a
token's experts depend on that token and earlier ones only; `variable_k`: the number of experts
per token varies; `needs_controller`: something must set the bias that steers it) and its
checks on a config, and `select`s. The router only dispatches through `get_selection`, and the
allowed values of `router.selection` are the registered names. See docs/methods.md.

Legend: T = tokens, E = routed experts, A = (token, expert) assignments, token-major order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import importlib
import pkgutil

import torch

from harness.routing.params import Param
from harness.routing.units import UnitRegistry

if TYPE_CHECKING:
    from harness.routing.config import RouterConfig

Selected = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # token_idx_A, expert_idx_A, mask_TE (bool)


class SelectionRule:
    """The interface; subclasses override `select` and, where they need to, the traits and checks."""

    name = ""
    causal = True  # a token's experts depend on it and earlier tokens only
    variable_k = False  # the number of experts per token varies
    needs_controller = False  # threshold-like rules fire nothing sensible without a bias that sets a budget
    params: dict[str, Param] = {}  # its own knobs, set as router.<name> (params.py)

    @classmethod
    def param(cls, cfg: RouterConfig, name: str):
        """The value of one of its declared parameters in `cfg` (the default where unset)."""
        return cfg.params.get(name, cls.params[name].default)

    def check(self, cfg: RouterConfig) -> None:
        """ValueError for a config this rule cannot run (naming the keys and what is allowed)."""

    def check_layer(self, cfg: RouterConfig, num_experts: int, top_k: int) -> None:
        """ValueError for a layer of `num_experts` experts and `top_k` this rule cannot route."""

    def check_batch(self, cfg: RouterConfig, micro_tokens: int, where: str) -> None:
        """ValueError for a micro-batch of `micro_tokens` tokens this rule cannot route."""

    def selection_scores(self, logits_TE: torch.Tensor, scores_TE: torch.Tensor, bias_E: torch.Tensor,
                         cfg: RouterConfig, training: bool) -> torch.Tensor:
        """What `select` ranks: the scores plus the bias (no gradient), unless the rule says otherwise."""
        return scores_TE.detach() + bias_E

    def select(self, biased_TE: torch.Tensor, top_k: int, cfg: RouterConfig) -> Selected:
        raise NotImplementedError


CAUSAL_RULE = "topk"  # what a rule that is not causal is replaced by for its causal validation loss


SELECTIONS = UnitRegistry("selection rule", "router.selection", instantiate=True)
register_selection = SELECTIONS.register  # class decorator: @register_selection("name")
selection_names = SELECTIONS.names


def get_selection(name: str) -> SelectionRule:
    return SELECTIONS.lookup(name)


# NOTE: every module of this folder is a rule that registers itself: a new one is its own file only
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
