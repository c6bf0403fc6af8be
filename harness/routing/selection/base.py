"""The selection-rule interface and its registry.

A rule is one registered class in a file of its own. It declares its traits (`causal`: a
token's experts depend on that token and earlier ones only; `variable_k`: the number of experts
per token varies; `needs_controller`: something must set the bias that steers it), its own
settings (`params`), the score functions it has a meaning for (`score_funcs`), its checks on a config, and `select`s;
it may also rank other scores than the biased ones (`selection_scores`) and, in training only, change
what it selected (`reroute`: token rounding). The router dispatches to the rule its
resolved config holds; the allowed values of `router.selection` are the registered names.

Legend: T = tokens, E = routed experts, A = (token, expert) assignments, token-major order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import torch

from harness.routing.config import RouterConfig, router_fields
from harness.routing.params import Param, check_declarations
from harness.routing.registry import Registry, declarations

Selected = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # token_idx_A, expert_idx_A, mask_TE (bool)


class SelectionRule(ABC):
    """The interface; subclasses implement `select` and, where they need to, the traits and checks."""

    name = ""
    causal = True  # a token's experts depend on it and earlier tokens only
    variable_k = False  # the number of experts per token varies
    needs_controller = False  # threshold-like rules fire nothing sensible without a bias that sets a budget
    by_token_id = False  # its experts come from the tokens' ids, not the scores (hash: `select_tokens`)
    refines: str | None = None  # the rule it changes in training only (token rounding: topk): controllers
    #                             that steer that rule steer this one, and `select` is that rule's
    score_funcs: tuple[str, ...] | None = None  # the router.score_func values it has a meaning for (None: any)
    params: dict[str, Param] = {}  # its own settings, set as router.<name>

    @property
    def steered_as(self) -> str:
        """The rule name a controller's `selections` are matched against."""
        return self.refines or self.name

    def param(self, cfg: RouterConfig, name: str):
        """One of its own settings in `cfg`: as set, else its declared default."""
        return cfg.params.get(name, self.params[name].default)

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

    @abstractmethod
    def select(self, biased_TE: torch.Tensor, top_k: int, cfg: RouterConfig) -> Selected:
        """Which experts each token goes to, from the scores plus the bias [T, E]."""

    def select_tokens(self, biased_TE: torch.Tensor, token_ids_T: torch.Tensor | None, top_k: int,
                      cfg: RouterConfig) -> Selected:
        """`select`, given the tokens' ids [T] too (None where the caller does not know them): a rule
        that routes by token id (hash) overrides this; every other rule ignores them."""
        return self.select(biased_TE, top_k, cfg)

    def reroute(self, biased_TE: torch.Tensor, selected: Selected, top_k: int, cfg: RouterConfig) -> Selected:
        """A training forward's routing in place of `select`'s (evaluation keeps `select`'s); `selected`
        itself to leave it (the default)."""
        return selected


def _instance(name: str, cls: type[SelectionRule]) -> SelectionRule:
    check_declarations(f"selection rule {name!r}", cls.params, router_fields(), declarations())
    rule = cls()  # NOTE: rules hold no state, so one instance serves every layer
    rule.name = name
    return rule


SELECTIONS = Registry("selection rule", "router.selection", prepare=_instance)
register_selection = SELECTIONS.register  # class decorator: @register_selection("name")
selection_names = SELECTIONS.names
get_selection = SELECTIONS.lookup

CAUSAL_RULE = "topk"  # what a rule that is not causal is replaced by for its causal validation loss
