"""No controller: the bias stays 0 (plain routing, aux-loss routing, Sinkhorn, expert choice)."""

from __future__ import annotations

from harness.routing.controllers.base import BiasController, register_controller


@register_controller("none")
class NoBias(BiasController):
    selections = None
    moves_bias = False

    def update(self, bias_E, counts_E, num_tokens):
        return None
