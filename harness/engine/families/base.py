"""A model family: a transformers MoE architecture (Qwen3-MoE, OLMoE, DeepSeek-V3, Mixtral) built
locally from a config the harness writes, random init, nothing downloaded.

A family is one registered class in a file of its own: the transformers config and model classes
it uses, the config for a harness `ModelConfig` (the harness's size names map to configs of about
the proxy's active and total parameters, keeping the family's own traits), the dense twin of
equal active width (the throughput yardstick), the family's own routing written as a harness
router (`native`: the family's router, reproduced; the equivalence tests check it), and the router
fields the family imposes on any router swapped into it (`traits`: its gate normalisation and
scaling, DeepSeek's group limits), and the model settings it honours (`honours`): any other model
setting given for a family is refused, and one a size name carries is reset to its default (the
family builds its own shared experts and dense layers, and the dense yardstick is sized from the
family's own active width).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from typing import Any

from harness.routing.registry import Registry

EXTRA = "transformers"  # pip install 'moe-harness[transformers]'


def transformers_module():
    """The transformers package, or ValueError naming the extra to install."""
    if importlib.util.find_spec("transformers") is None:
        raise ValueError("model.family other than 'harness' builds a transformers model: pip install "
                         f"'moe-harness[{EXTRA}]'")
    return importlib.import_module("transformers")


# NOTE: the ModelConfig fields `common` and the families' hf_config read
COMMON = frozenset({"vocab_size", "dim", "num_layers", "num_heads", "seq_len", "num_experts", "top_k", "expert_hidden",
                    "rope_theta", "family"})


class Family:
    name = ""
    config_class = ""  # a transformers config class
    model_class = ""  # a transformers causal-LM class
    native_preset = "softmax_topk"  # the harness preset the family's own routing starts from
    traits: dict[str, Any] = {}  # router fields the family imposes on any router swapped in
    honours: frozenset[str] = COMMON  # the model.* settings it builds from; any other is refused
    gate_name = "gate"  # the MoE block's attribute that holds its router
    gate_linear = ""  # the router's attribute that holds its Linear ("": the router is one, or has its weight)
    zero_experts = 0  # Z zero-computation (identity) experts its block takes beside the FFN ones (LongCat's)
    grouped_experts = True  # its experts take transformers' fast paths (grouped_mm, batched_mm)
    routes_in_model_dtype = False  # its own router computes in the model's dtype, not float32 (DeepSeek-V4)
    routes_from_float32 = False  # its own router casts its input to float32 first, in any model (LongCat)
    unused_parameters = False  # parts of it a short context leaves without a gradient (DeepSeek-V4's indexer)

    @classmethod
    def own_gate(cls, gate, model):
        """The family's own gate as a module that answers (logits, weights [T, k], ids [T, k])."""
        return gate

    @classmethod
    def keeps_own(cls, block) -> bool:
        """Whether this block keeps its own gate under any router (DeepSeek-V4's hash layers)."""
        return False

    @classmethod
    def prepare(cls, hf_model, model) -> None:
        """Settle what the family's random init leaves degenerate (DeepSeek-V4's token-id table)."""

    @classmethod
    def gate_in_block(cls, gate, model):
        """What the block holds at `gate_name` around a gate that answers (logits or scores, weights
        [T, K], ids [T, K], id n: no expert): the call the family's block makes of its router."""
        return gate

    @classmethod
    def fit_model(cls, model, explicit: dict[str, Any]):
        """`model` with the settings the family does not honour at their defaults; ValueError for
        one of them that the user gave (`explicit`) with another value, naming what it honours."""
        defaults = {f.name: f.default for f in dataclasses.fields(model) if f.name not in cls.honours}
        refused = sorted(k for k, v in explicit.items() if k in defaults and v != defaults[k])
        if refused:
            raise ValueError(f"model.{refused[0]} = {explicit[refused[0]]!r} is not honoured by model.family = "
                             f"{cls.name!r}, which builds its blocks (shared experts, dense layers) as the "
                             f"architecture has them; leave it out, or use model.family = 'harness'. The family honours "
                             f"{sorted(f'model.{k}' for k in cls.honours)}")
        return dataclasses.replace(model, **defaults)

    @classmethod
    def hf_config(cls, model) -> dict:
        """The transformers config's keyword arguments for a harness ModelConfig."""
        raise NotImplementedError

    @classmethod
    def dense_config(cls, model) -> dict:
        """The same, for the dense twin of equal active width (every FFN dense)."""
        raise NotImplementedError

    @classmethod
    def moe_layers(cls, model) -> int:
        """How many of the model's layers are sparse."""
        return model.num_layers

    @classmethod
    def router_traits(cls, selection: str, model) -> dict[str, Any]:
        """The router fields (and top-k settings) the family imposes on a router with this selection."""
        return dict(cls.traits)


def common(model) -> dict:
    """What every family takes from a ModelConfig: width, depth, heads, context, vocabulary, experts."""
    return {"vocab_size": model.vocab_size, "hidden_size": model.dim, "num_hidden_layers": model.num_layers,
            "num_attention_heads": model.num_heads, "num_key_value_heads": model.num_heads,
            "max_position_embeddings": model.seq_len, "rope_theta": model.rope_theta, "tie_word_embeddings": False,
            "num_experts_per_tok": model.top_k, "use_cache": False, "output_router_logits": False,
            "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}


ALIGN = 8  # elements: 16 bytes in bf16, which torch's grouped matmul needs of every stride


def shared_width(model) -> int:
    """The width of each of k routed experts and one shared expert that together cost what the proxy's
    k experts of width expert_hidden cost a token: k h / (k + 1), a multiple of ALIGN."""
    return max(ALIGN, ALIGN * round(model.top_k * model.expert_hidden / (model.top_k + 1) / ALIGN))


def _instance(name: str, cls: type[Family]) -> type[Family]:
    cls.name = name
    return cls


FAMILIES = Registry("model family", "model.family", prepare=_instance,
                    reserved={"harness": "the harness's own proxy model"})
register_family = FAMILIES.register
HARNESS = "harness"  # the harness's own proxy, not a transformers family
NATIVE = "native"  # `router = "native"`: a family's own router, untouched


def family_names() -> list[str]:
    return [HARNESS] + FAMILIES.names()
