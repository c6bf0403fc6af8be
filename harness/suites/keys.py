"""The flat dotted keys a suite, a sweep or `--set` uses, parsed into a RunConfig:

  router, size, seed, variant            the preset name, model size, seed and label
  model.<field>, router.<field>, train.<field>, data.<field>, metrics.<field>

Every value is type-checked against its field; a bad key or value raises ValueError naming it
and the allowed keys or values. Each section checks its own ranges when it is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args, get_origin, get_type_hints

from harness._compat import tomllib
from harness.data.corpus import DataConfig
from harness.data.tokenizer import check_tokenizer
from harness.engine.config import RunConfig, TrainConfig, check_run, resolve_device
from harness.engine.families.resolve import family_router
from harness.engine.metrics import MetricsConfig
from harness.engine.model import ModelConfig, model_config
from harness.routing import RouterConfig, router_fields
from harness.routing.resolve import declared

INT64 = 2 ** 63
SECTIONS = {"model": ModelConfig, "router": RouterConfig, "train": TrainConfig, "data": DataConfig,
            "metrics": MetricsConfig}
TOP_LEVEL = {"router": str, "size": str, "seed": int, "variant": str}  # router: a preset, or native (a family's own)


def allowed_keys() -> list[str]:
    keys = list(TOP_LEVEL)
    for prefix, cls in SECTIONS.items():
        names = router_fields() if prefix == "router" else [f.name for f in dataclasses.fields(cls)]
        keys += [f"{prefix}.{name}" for name in names]
    return keys + [f"router.{name}" for name in sorted(declared())]


def parse_value(raw: str) -> Any:
    """A `--set` value: TOML syntax (1e-3, true, [1, 2], "text"), else the plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r} must look like KEY=VALUE, e.g. --set train.steps=50")
        out[key.strip()] = parse_value(raw.strip())
    return out


def _field_type(key: str):
    if key in TOP_LEVEL:
        return TOP_LEVEL[key]
    prefix, _, name = key.partition(".")
    if prefix == "router" and name in declared():  # a rule's or controller's own setting (routing/params.py)
        return declared()[name].type
    if prefix not in SECTIONS or name not in get_type_hints(SECTIONS[prefix]) or (
            prefix == "router" and name not in router_fields()):
        raise ValueError(f"unknown key {key!r}; allowed keys: {', '.join(allowed_keys())}")
    return get_type_hints(SECTIONS[prefix])[name]


def coerce(key: str, value: Any) -> Any:
    """Check `value` against the type of `key`; ints are accepted where floats are expected."""
    typ = _field_type(key)
    if get_origin(typ) is Literal:
        if value not in get_args(typ):
            raise ValueError(f"{key} = {value!r} is not allowed; choose one of {list(get_args(typ))}")
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(typ, True)
    if not ok:
        hint = " (a whole number, e.g. 1000, not 1e3)" if typ is int and isinstance(value, float) else ""
        raise ValueError(f"{key} expects a value of type {typ.__name__}{hint}, got {value!r}")
    if typ is int and not -INT64 <= value < INT64:  # NOTE: every run-row column is a parquet int64
        raise ValueError(f"{key} = {value} does not fit a 64-bit integer column; allowed: whole numbers of magnitude "
                         f"below 2**63 ({INT64:.3g})")
    return float(value) if typ is float else value


def resolve(settings: dict[str, Any]) -> RunConfig:
    """Build a validated RunConfig from flat dotted keys (defaults: softmax_topk, tiny, seed 0)."""
    values = {key: coerce(key, value) for key, value in settings.items()}
    sections: dict[str, dict[str, Any]] = {p: {} for p in SECTIONS}
    for key, value in values.items():
        if "." in key:
            prefix, _, name = key.partition(".")
            sections[prefix][name] = value
    router = values.get("router", "softmax_topk")
    data = DataConfig(**sections["data"])
    bpe_vocab = check_tokenizer(data.tokenizer)
    if bpe_vocab is not None:  # NOTE: the embedding follows the tokenizer unless the user sized it
        given = sections["model"].setdefault("vocab_size", bpe_vocab)
        if given < bpe_vocab:
            raise ValueError(f"model.vocab_size = {given} is smaller than data.tokenizer = {data.tokenizer!r}'s "
                             f"{bpe_vocab} tokens; leave model.vocab_size out (it follows the tokenizer) or set it "
                             f">= {bpe_vocab}")
    if values.get("seed", 0) < 0:
        raise ValueError(f"seed = {values['seed']!r} must be a whole number >= 0")
    train = TrainConfig(**sections["train"])
    train = dataclasses.replace(train, device=resolve_device(train.device))
    model = model_config(values.get("size", "tiny"), **sections["model"])
    if model.family_class is not None:
        model = model.family_class.fit_model(model, sections["model"])
    cfg = RunConfig(
        variant=values.get("variant", router),
        router=router,
        size=values.get("size", "tiny"),
        seed=values.get("seed", 0),
        model=model,
        router_cfg=family_router(router, model, sections["router"]),
        train=train,
        data=data,
        metrics=MetricsConfig(**sections["metrics"]),
    )
    check_run(cfg, explicit_ep_sizes="ep_sizes" in sections["metrics"])
    return cfg
