"""Live curves of a run in TensorBoard and/or Weights & Biases (`train.log_to`).

    [base]
    "train.log_to" = ["tensorboard"]        # then: tensorboard --logdir results/<suite>/logs/tensorboard

Each run is one TensorBoard run / one W&B run named `<variant>-s<seed>-<run_id>`, grouped by suite
(or sweep). Logged: every step row's scalars (train/...), every evaluation's val loss, global
MaxVio and per-layer MaxVio (val/...), and the expert-load heatmap as an image. Only rank 0
logs under torchrun. W&B runs offline unless WANDB_MODE says otherwise (sync later with
`wandb sync`), so nothing needs a network.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # log_to value -> module (= the extra's name)


def check_log_to(names: list[str]) -> None:
    """ValueError naming the allowed values, or the extra to install for a missing package."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"train.log_to = {names!r} must be a list, e.g. [\"tensorboard\"]; allowed: {list(LOGGERS)}")
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"train.log_to: {name!r} is not allowed; choose from {list(LOGGERS)}")
        if importlib.util.find_spec(LOGGERS[name]) is None:
            raise ValueError(f"train.log_to = {names!r} needs the optional package {LOGGERS[name]!r}: "
                             f"pip install 'moe-harness[{name}]'")
    if len(set(names)) != len(names):
        raise ValueError(f"train.log_to = {names!r} names a logger twice")


def heatmap_image(counts_LE, cell: int = 12) -> np.ndarray:
    """[H, W, 3] uint8: layer x expert load over the fair share (a layer's mean), white = fair,
    red = over, blue = under."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    counts = np.asarray(counts_LE, dtype=float)
    share = counts / np.clip(counts.mean(axis=-1, keepdims=True), 1e-12, None)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(2.0, float(share.max())))
    rgb = (colormaps["RdBu_r"](norm(share))[..., :3] * 255).astype(np.uint8)
    return np.kron(rgb, np.ones((cell, cell, 1), dtype=np.uint8))


class LiveLog:
    """The run's live loggers; a no-op with none."""

    def __init__(self, names: list[str], log_dir: Path, run_name: str, group: str, config: dict):
        self.tb = self.wandb_run = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(log_dir) / "tensorboard" / run_name))
            self.tb.add_text("config", "    " + json.dumps(config, indent=1, default=str).replace("\n", "\n    "))
        if "wandb" in names:
            import wandb

            (Path(log_dir) / "wandb").mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT", "moe-harness"), group=group,
                                        name=run_name, config=config, dir=str(Path(log_dir) / "wandb"),
                                        mode=os.environ.get("WANDB_MODE", "offline"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
        if self.tb is not None:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def image(self, step: int, tag: str, image_HWC: np.ndarray) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, image_HWC, step, dataformats="HWC")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({tag: wandb.Image(image_HWC)}, step=step)

    def step(self, step: int, row: dict, evaluation: dict | None, counts_LE=None) -> None:
        """One step row's live scalars; at an evaluation also its scalars, the MaxVio of each layer
        and the expert-load heatmap of its [L, E] counts. Which scalars: the metric registry's."""
        from harness.metric_registry import live_metrics
        from harness.engine.metrics import maxvio

        self.scalars(step, {f"train/{k}": row[k] for k in live_metrics("train") if k in row})
        if evaluation is None:
            return
        self.scalars(step, {f"val/{k}": evaluation[k] for k in live_metrics("val") if k in evaluation})
        if counts_LE is not None:
            self.scalars(step, {f"val/maxvio_layer{i}": v for i, v in enumerate(np.atleast_1d(maxvio(counts_LE)))})
            self.image(step, "val/expert_load", heatmap_image(counts_LE))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
