"""One run's configuration: the training section, the whole run's config (its run row and ids)
and what only the whole config can check. Flat dotted keys are parsed into it by suites/keys.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.data.corpus import DataConfig
from harness.engine.livelog import check_log_to
from harness.engine.metrics import MetricsConfig
from harness.engine.model import ModelConfig
from harness.engine.families import HARNESS
from harness.engine.families.resolve import check_family
from harness.routing import RouterConfig, router_fields
from harness.routing.resolve import declared


def check_number(key: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    """ValueError unless `value` is finite and within [low, high] (low excluded if `low_open`)."""
    below = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{key} = {value!r} must be a finite number in {bounds}")


@dataclass(kw_only=True)
class TrainConfig:
    # optimizer steps
    steps: int = 200
    # sequences per micro-batch
    batch_size: int = 16
    # micro-batches per optimizer step (bias updates use their summed counts)
    grad_accum: int = 1
    # peak AdamW learning rate
    lr: float = 3e-3
    # linear warm-up steps, then cosine decay to min_lr_ratio x lr
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    # gradient-norm clip; 0 disables it
    grad_clip: float = 1.0
    # evaluate every N steps (and always at the end); 0: only at the end
    eval_every: int = 50
    # validation batches per evaluation (a fixed set)
    eval_batches: int = 8
    # record a step row every N steps
    log_every: int = 10
    # seed of the data order; -1: the run's seed
    data_seed: int = -1
    # auto: CUDA when present, else CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA, float32 on CPU
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # torch.compile the model
    compile: bool = False

    # save a run checkpoint every N steps (OUT/<suite>/checkpoints/<run_id>.pt) so a preempted
    # run resumes there; 0: never. 250 steps of the `base` model is a few minutes on one GPU
    checkpoint_every: int = 250
    # keep the checkpoint after the run completes (default: delete it)
    keep_checkpoint: bool = False
    # points spread through the run where a dense-FFN model of equal active width is timed (the
    # median of 3 steps), each against the run's steps just before it: the throughput yardstick (dense_tokens_per_s,
    # throughput_ratio = median of the ratios); 0 disables the probe
    dense_probe_steps: int = 4
    # live curves while the run trains: any of "tensorboard", "wandb" (extras of the same names),
    # under OUT/<suite>/logs/ (livelog.py)
    log_to: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_log_to(self.log_to)
        for name in ("steps", "batch_size", "grad_accum", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} = {getattr(self, name)!r} must be >= 1")
        for name in ("warmup_steps", "eval_every", "dense_probe_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} = {getattr(self, name)!r} must be >= 0")
        if self.data_seed < -1:
            raise ValueError(f"train.data_seed = {self.data_seed!r} must be >= 0, or -1 for the run's seed")
        check_number("train.lr", self.lr, low=0.0, low_open=True)
        check_number("train.weight_decay", self.weight_decay, low=0.0)
        check_number("train.grad_clip", self.grad_clip, low=0.0)
        check_number("train.min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)


@dataclass(kw_only=True)
class RunConfig:
    variant: str  # label from the suite
    router: str  # router preset name
    size: str  # model size preset
    seed: int  # initialisation (and, by default, data order) seed
    model: ModelConfig = field(default_factory=ModelConfig)
    router_cfg: RouterConfig = field(default_factory=RouterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def flat(self) -> dict[str, Any]:
        """Flat dotted keys -> values: the resolved hyper-parameters, as runs.parquet columns."""
        out: dict[str, Any] = {"variant": self.variant, "router": self.router, "size": self.size, "seed": self.seed}
        for prefix, section in (("model", self.model), ("router", None), ("train", self.train),
                                ("data", self.data), ("metrics", self.metrics)):
            fields = router_columns(self.router_cfg) if prefix == "router" else dataclasses.asdict(section)
            if prefix == "model" and fields["family"] == HARNESS:
                del fields["family"]  # NOTE: the proxy's rows and run ids are as they were before families
            out.update({f"{prefix}.{k}": v for k, v in fields.items()})
        return out

    @property
    def run_id(self) -> str:
        """Hash of the whole resolved config: a rerun of the same run has the same id."""
        return _digest(self.flat())

    @property
    def config_id(self) -> str:
        """Hash of the resolved config without the seed: the seeds of one config share it."""
        return _digest({k: v for k, v in self.flat().items() if k != "seed"})


# NOTE: the router columns every run row has carried since 0.1, in their order: the router's fields
# and the settings of the shipped methods; a setting the run's methods do not read shows its
# declared default. A method's other settings follow, in the rows of its runs only. Run ids hash
# these columns, so this list keeps them; a router field added later is written only where it is set.
ROUTER_COLUMNS = ("score_func", "selection", "ec_chunk", "route_norm", "route_scale", "capacity_factor", "drop_policy",
                  "sinkhorn_iters", "n_group", "topk_group", "output_form", "aux_alpha", "aux_scope", "aux_counts",
                  "z_loss_beta", "bias_mode", "bias_rate", "bias_update", "bias_center", "bias_freeze_frac", "qb_ema",
                  "dynamic_k_rule")


ROUTER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RouterConfig) if f.init and f.name != "params"}


def router_columns(cfg: RouterConfig) -> dict[str, Any]:
    """The run row's router.* values of a resolved router config (ROUTER_COLUMNS, then its methods' own)."""
    mine = {**cfg.rule.params, **cfg.controller.params}
    every = declared()
    out = {name: getattr(cfg, name) if name in router_fields() else cfg.param(name) if name in mine
           else every[name].default for name in ROUTER_COLUMNS}
    # NOTE: a router field added since 0.1 is written where it is set off its default, as a method's settings are
    later = {name: getattr(cfg, name) for name in router_fields() if name not in out
             and getattr(cfg, name) != ROUTER_DEFAULTS[name]}
    return {**out, **later, **{name: cfg.param(name) for name in mine if name not in out}}


def _digest(flat: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device = 'cuda' but this PyTorch sees no CUDA device; use 'auto' or 'cpu'")
    return device


def check_run(cfg: RunConfig, explicit_ep_sizes: bool) -> None:
    """What only the whole config can check: the router against the model's experts and the
    micro-batch, a family against the router, and simulated EP sizes the user named against the
    expert count."""
    check_family(cfg.model, cfg.router_cfg)
    experts, rule = cfg.model.num_experts, cfg.router_cfg.rule
    rule.check_layer(cfg.router_cfg, experts, cfg.model.top_k)
    rule.check_batch(cfg.router_cfg, cfg.train.batch_size * cfg.model.seq_len,
                     f"train.batch_size {cfg.train.batch_size} x model.seq_len {cfg.model.seq_len}")
    # NOTE: sizes the user names must fit; the default list skips those that do not divide
    bad_sizes = [n for n in cfg.metrics.ep_sizes if experts % n] if explicit_ep_sizes else []
    if bad_sizes:
        raise ValueError(f"metrics.ep_sizes = {cfg.metrics.ep_sizes!r}: {bad_sizes} do not divide model.num_experts = "
                         f"{experts}; choose sizes among {[n for n in range(1, experts + 1) if experts % n == 0]}")
