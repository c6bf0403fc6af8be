"""A run's metrics as it trains: per-step accumulators, step rows, load rows and the summary.

Everything the summary depends on lives here and nowhere else, with `state_dict()` /
`load_state_dict()`, so a checkpoint saves it in one piece and a resumed run ends with the same
rows and numbers as one never stopped. MaxVio is `metrics.maxvio_of` throughout.

Legend: L = MoE layers, E = experts.
"""

from __future__ import annotations

import math

import torch

from harness.engine import metrics
from harness.engine.dynamics import BiasDynamics
from harness.steady_state import steady_state


class RunMetrics:
    """Accumulates a run's measurements; `summary()` turns them into the run row's metrics."""

    def __init__(self, cfg, num_layers: int, device: torch.device, tokens_per_step: int):
        self.cfg, self.num_layers, self.device, self.tokens_per_step = cfg, num_layers, device, tokens_per_step
        self.steps: list[dict] = []  # rows of steps.parquet
        self.loads: list[dict] = []  # rows of loads.parquet
        self.vio_history: list[torch.Tensor] = []  # per step: [2] layer-mean and worst-layer MaxVio
        self.compute_vio: list = []  # per step: MaxVio of one rank's micro-batches (layer mean)
        self.costs: list[dict] = []  # per step: simulated EP balance and capacity drops (metrics.cost_metrics)
        self.drops = torch.zeros(2, device=device)  # dropped and routed assignments over training
        self.window: list[float] = []  # train losses since the last step row
        self.last_eval: dict = {}
        self.last_global_LE: torch.Tensor | None = None  # expert counts of the last evaluation (live heatmap)
        self._step_vio, self._step_costs = torch.zeros((), device=device), {}
        self.controller = cfg.router_cfg.controller
        rate = self.controller.rate(cfg.router_cfg)  # NOTE: None for a controller no rate drives: no travel in u
        self.dynamics = (BiasDynamics(cfg.train.steps, rate or 0.0)
                         if self.controller.moves_bias and num_layers else None)  # how the controller moved

    # -- within an optimizer step ------------------------------------------------------------------

    def add_micro_batch(self, micro_LE: torch.Tensor, num_dropped: torch.Tensor | None) -> None:
        """One micro-batch's counts [L, E] on this rank (and what capacity dropped, if it drops)."""
        tc, micro_tokens = self.cfg.train, self.cfg.train.batch_size * self.cfg.model.seq_len
        if num_dropped is not None:  # [dropped, routed] assignments, all layers
            self.drops += torch.stack([num_dropped, micro_LE.sum()]).float()
        self._step_vio = self._step_vio + metrics.maxvio_of(micro_LE).mean()
        for name, value in metrics.cost_metrics(micro_LE, micro_tokens, self.cfg.model.top_k,
                                                self.cfg.metrics).items():
            self._step_costs[name] = self._step_costs.get(name, 0.0) + value / tc.grad_accum

    def bias_snapshot(self, layers) -> torch.Tensor | None:
        """[L, E] a copy of every layer's bias, where the run has a controller to watch."""
        return torch.stack([layer.router.expert_bias for layer in layers]).clone() if self.dynamics else None

    def end_step(self, counts_LE: torch.Tensor, bias_before_LE: torch.Tensor | None = None,
                 bias_after_LE: torch.Tensor | None = None) -> None:
        """The step's counts [L, E], summed over micro-batches and ranks, and the bias before and
        after the step's update (runs with a controller)."""
        self.compute_vio.append(self._step_vio / self.cfg.train.grad_accum)
        self.costs.append(self._step_costs)
        self._step_vio, self._step_costs = torch.zeros((), device=self.device), {}
        if self.dynamics is not None and bias_before_LE is not None:
            self.dynamics.update(len(self.costs), bias_before_LE, bias_after_LE)
        if self.num_layers:
            vio_L = metrics.maxvio_of(counts_LE)
            self.vio_history.append(torch.stack([vio_L.mean(), vio_L.max()]))

    # -- rows --------------------------------------------------------------------------------------

    def step_row(self, step: int, aux: float, counts_LE, lr: float, tokens_per_s: float) -> dict:
        """The step row of the losses since the last one (and the window starts again)."""
        row = {"step": step, "tokens": step * self.tokens_per_step, "train_loss": sum(self.window) / len(self.window),
               "aux_loss": aux, "lr": lr, "tokens_per_s": tokens_per_s}
        self.window = []
        if self.num_layers:
            vio = self.vio_history[-1].tolist()
            row.update({"maxvio_batch": vio[0], "maxvio_batch_worst": vio[1],
                        "mean_k": counts_LE.sum().item() / (self.num_layers * self.tokens_per_step)})
        if self.dynamics is not None and self.dynamics.last is not None:  # the bias's trajectory
            spread_L = self.dynamics.last.max(dim=-1).values - self.dynamics.last.min(dim=-1).values
            row.update({"bias_spread": spread_L.mean().item(), "bias_spread_worst": spread_L.max().item()})
        self.steps.append(row)
        return row

    def diverged_row(self, step: int, loss: float) -> None:
        self.steps.append({"step": step, "tokens": step * self.tokens_per_step, "train_loss": loss})

    def record_eval(self, step: int, out: dict, loads: list[tuple[str, torch.Tensor]]) -> None:
        self.last_eval = out
        for scope, counts_LE in loads:
            if scope == "global":
                self.last_global_LE = counts_LE
            frac_LE = counts_LE / counts_LE.sum(dim=-1, keepdim=True).clamp_min(1e-12)
            for layer, row in enumerate(frac_LE.tolist()):
                self.loads += [{"step": step, "layer": layer, "expert": e, "scope": scope, "load": v}
                               for e, v in enumerate(row)]

    # -- the run row -------------------------------------------------------------------------------

    def summary(self, status: str, steps_done: int, tokens_per_byte: float) -> dict:
        """MaxVio over the second half of training, costs, drops, and the last evaluation."""
        half = self.vio_history[len(self.vio_history) // 2:]
        vio = torch.stack(half).mean(dim=0).tolist() if half else [math.nan, math.nan]
        compute = [float(v) for v in self.compute_vio[len(self.compute_vio) // 2:]]
        costs = self.costs[len(self.costs) // 2:]  # NOTE: second half, like maxvio_batch
        tail = [r["train_loss"] for r in self.steps[-3:] if "train_loss" in r]
        record = {"status": status, "steps_done": steps_done, "train_loss": sum(tail) / len(tail) if tail else math.nan,
                  "maxvio_batch": vio[0], "maxvio_batch_worst": vio[1],
                  "maxvio_compute": sum(compute) / len(compute) if compute and self.num_layers else math.nan,
                  "drop_frac": (self.drops[0] / self.drops[1].clamp_min(1)).item(),
                  **{name: sum(float(c[name]) for c in costs) / len(costs) for name in (costs[0] if costs else {})},
                  "compute_ratio": self.last_eval.get("mean_k", math.nan) / self.cfg.model.top_k}
        record.update(self.last_eval if status in ("ok", "pruned") else {})
        if self.dynamics is not None:
            record.update(self.dynamics.summary([float(v[0]) for v in self.vio_history]),
                          controller_speed=self.controller.speed(self.cfg.router_cfg),
                          controller_speed_of=self.controller.speed_of(self.cfg.router_cfg))
        # NOTE: every step's MaxVio_batch (not only the logged ones): is the balance still moving?
        record.update(steady_state(range(1, len(self.vio_history) + 1), [float(v[0]) for v in self.vio_history]))
        # NOTE: bits per byte of validation text, comparable across tokenizers (NaN for .bin shards)
        record["val_bpb"] = record.get("val_loss", math.nan) / math.log(2) * tokens_per_byte
        return record

    # -- checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"steps": self.steps, "loads": self.loads, "window": self.window, "last_eval": self.last_eval,
                "vio_history": [v.cpu() for v in self.vio_history],
                "compute_vio": [float(v) for v in self.compute_vio],
                "costs": [{k: float(v) for k, v in c.items()} for c in self.costs],
                "drops": self.drops.cpu(), "dynamics": self.dynamics.state_dict() if self.dynamics else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.loads, self.window = state["steps"], state["loads"], state["window"]
        self.last_eval = state["last_eval"]
        self.vio_history = [v.to(self.device) for v in state["vio_history"]]
        self.compute_vio = list(state["compute_vio"])
        self.costs = list(state["costs"])
        self.drops = state["drops"].to(self.device)
        if self.dynamics is not None:
            self.dynamics.load_state_dict(state.get("dynamics") or {}, self.device)
