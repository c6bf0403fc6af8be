"""One run: a RunConfig in, a flat record + step rows + load rows out.

    from harness.config import resolve
    from harness.train import run
    result = run(resolve({"router": "loss_free", "train.steps": 50}))

The balancing update runs after each optimizer step, on the counts summed over the step's
micro-batches (and over data-parallel ranks when torch.distributed is initialised).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from harness import checkpoint, distributed, metrics
from harness.config import RunConfig
from harness.data import Corpus, load_corpus, sample_batch, validation_batches, validation_domains
from harness.livelog import LiveLog, heatmap_image
from harness.metric_registry import live_metrics, register_metric as metric
from harness.model import MoETransformer
from harness.routing.selection import get_selection
from harness.optim import autocast_for, build_optimizer, lr_at  # noqa: F401 (lr_at: public here too)
from harness.throughput import SpeedMeter, environment

# NOTE: the run-row columns computed here, declared once (metric_registry.py; docs/methods.md)
metric("val_loss", "val loss", better="min", summary=0, objective=True, live="val", unit="nats/token",
       meaning="cross-entropy on the fixed validation set")
metric("val_bpb", "val bits/byte", better="min", objective=True, unit="bits/byte",
       meaning="validation loss in bits per byte of text: compares tokenizers")
metric("train_loss", "train loss", better="min", objective=True, live="train", unit="nats/token")
metric("aux_loss", "aux loss", live="train", meaning="the step's auxiliary and z losses, as added to the LM loss")
metric("lr", "learning rate", fmt="{:.2e}", live="train")
metric("val_loss_causal", "val loss, causal top-k", better="min", cost=4, live="val", unit="nats/token",
       meaning="validation loss with a causal top-k of the same scores (non-causal rules)")

EvalCallback = Callable[[int, float], bool]  # (step, val_loss) -> stop now (a pruner said so)


@dataclass
class RunResult:
    record: dict  # one row of runs.parquet
    steps: list[dict] = field(default_factory=list)  # rows of steps.parquet
    loads: list[dict] = field(default_factory=list)  # rows of loads.parquet


# NOTE: renamed in newer PyTorch (the new flag still syncs once at init, harmless here)
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


class Trainer:
    """Holds the state of one run; `run()` below is the entry point."""

    def __init__(self, cfg: RunConfig, corpus: Corpus, progress: bool, on_eval: EvalCallback | None,
                 live: LiveLog | None = None, meter: SpeedMeter | None = None):
        self.cfg, self.corpus, self.on_eval, self.live, self.meter = cfg, corpus, on_eval, live, meter
        self.last_global_LE: torch.Tensor | None = None  # expert counts of the last evaluation (live heatmap)
        self.device = distributed.device_for(cfg.train.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        torch.manual_seed(cfg.seed)
        self.model = MoETransformer(cfg.model, cfg.router_cfg).to(self.device)
        self.layers = self.model.moe_layers
        wrapped = self.model
        if distributed.is_distributed():
            # NOTE: buffers (the expert bias) are not broadcast: every rank computes the same bias
            # from the same all-reduced counts, which a test checks, and a broadcast would hide a bug
            wrapped = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.index
                                              is not None else None, **NO_BUFFER_SYNC)
        self.ddp = wrapped
        self.forward = torch.compile(wrapped) if cfg.train.compile else wrapped
        self.optimizer = build_optimizer(self.model, cfg)
        self.data_gen = torch.Generator().manual_seed(cfg.train.data_seed if cfg.train.data_seed >= 0 else cfg.seed)
        # NOTE: eval_batches global batches (world x batch_size windows each), shared out in
        # micro-batches: the same windows one process with the whole batch would evaluate
        val_set = validation_batches(corpus.val, cfg.train.eval_batches * self.world, cfg.train.batch_size,
                                     cfg.model.seq_len)
        self.val_total = len(val_set)
        self.val_set = val_set[self.rank::self.world]  # each rank evaluates its share, once
        val_domains = validation_domains(corpus, cfg.train.eval_batches * self.world, cfg.train.batch_size,
                                         cfg.model.seq_len)
        self.val_domains = val_domains[self.rank::self.world] if val_domains else None
        rule = get_selection(cfg.router_cfg.selection)
        # a rule that is not causal: also evaluate a causal top-k of its scores (val_loss_causal)
        self.non_causal = not rule.causal
        # a variable number of experts per token: correlate it with the token's loss (k_loss_corr)
        self.variable_k = rule.variable_k
        self.amp = autocast_for(cfg)
        self.bar = tqdm(total=cfg.train.steps, desc=cfg.variant, leave=False, disable=not progress or self.rank > 0)
        self.steps: list[dict] = []
        self.loads: list[dict] = []
        self.vio_history: list[torch.Tensor] = []  # per step: [2] layer-mean and worst-layer MaxVio
        self.compute_vio: list[float] = []  # per step: MaxVio of one rank's micro-batches (layer mean)
        self.drops = torch.zeros(2, device=self.device)  # dropped and routed assignments over training
        self.costs: list[dict] = []  # per step: simulated EP balance and capacity drops (metrics.cost_metrics)
        self.window: list[float] = []  # train losses since the last step row
        self.last_eval: dict = {}
        self.start_step = 1
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.seq_len * self.world

    def lm_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.amp:
            logits = self.forward(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches; returns (lm loss, aux loss, counts [L, E])."""
        tc = self.cfg.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        lm_total = aux_total = torch.zeros((), device=self.device)
        counts_LE = torch.zeros(len(self.layers), self.cfg.model.num_experts, device=self.device)
        compute_vio = torch.zeros((), device=self.device)
        costs: dict[str, torch.Tensor] = {}
        micro_tokens = tc.batch_size * self.cfg.model.seq_len
        for micro in range(tc.grad_accum):
            x, y = (t.to(self.device, non_blocking=True) for t in sample_batch(
                self.corpus.train, tc.batch_size, self.cfg.model.seq_len, self.data_gen, self.rank, self.world))
            last = micro == tc.grad_accum - 1
            # NOTE: gradients are all-reduced once per optimizer step, on the last micro-batch
            with contextlib.nullcontext() if last or self.ddp is self.model else self.ddp.no_sync():
                lm = self.lm_loss(x, y)
                aux = sum((v for layer in self.layers for v in layer.last_route.aux_losses.values()),
                          torch.zeros((), device=self.device))
                ((lm + aux) / tc.grad_accum).backward()
            if self.layers:
                micro_LE = torch.stack([layer.last_route.counts_E for layer in self.layers])
                counts_LE += micro_LE
                if self.cfg.router_cfg.capacity_factor > 0:  # [dropped, routed] assignments, all layers
                    self.drops += torch.stack([sum(layer.last_route.num_dropped for layer in self.layers),
                                               micro_LE.sum()]).float()
                compute_vio += (micro_LE.max(dim=-1).values / micro_LE.mean(dim=-1).clamp_min(1e-12) - 1).mean()
                for name, value in metrics.cost_metrics(micro_LE, micro_tokens, self.cfg.model.top_k,
                                                        self.cfg.metrics).items():
                    costs[name] = costs.get(name, 0.0) + value / tc.grad_accum
            lm_total, aux_total = lm_total + lm.detach() / tc.grad_accum, aux_total + aux.detach() / tc.grad_accum
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.compute_vio.append(compute_vio / tc.grad_accum)
        self.costs.append(costs)
        self.balance_update(counts_LE, progress=step / tc.steps)
        return distributed.all_mean(lm_total), distributed.all_mean(aux_total), counts_LE

    @torch.no_grad()
    def balance_update(self, counts_LE: torch.Tensor, progress: float) -> None:
        distributed.all_sum_(counts_LE)  # NOTE: counts are summed over ranks, not averaged
        for layer, counts_E in zip(self.layers, counts_LE):
            layer.router.balance_update(counts_E, num_tokens=self.tokens_per_step, progress=progress)
        if self.layers:
            mean_E = counts_LE.mean(dim=-1).clamp_min(1e-12)
            vio_L = counts_LE.max(dim=-1).values / mean_E - 1
            self.vio_history.append(torch.stack([vio_L.mean(), vio_L.max()]))

    @torch.no_grad()
    def evaluate(self, step: int, batch_counts_LE: torch.Tensor | None) -> dict:
        """Loss and global load over the fixed validation set, each batch once (shared out over ranks)."""
        self.model.eval()
        num_experts, num_layers = self.cfg.model.num_experts, len(self.layers)
        num_domains = len(self.corpus.domains) if self.val_domains else 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        counts_LE = torch.zeros(num_layers, num_experts, device=self.device)
        k_hist = torch.zeros(num_experts + 1, dtype=torch.long, device=self.device)  # (layer, token) pairs by k
        joint_LED = torch.zeros(num_layers, num_experts * num_domains, dtype=torch.long, device=self.device)
        token_loss, token_k = [], []  # variable k only: per validation token
        for b, (x, y) in enumerate(self.val_set):
            loss_T = self.val_token_loss(x, y)
            loss_sum += loss_T.mean()
            domain_T = self.val_domains[b].to(self.device).flatten() if num_domains else None
            k_LT = []
            for i, layer in enumerate(self.layers):
                route = layer.last_route
                counts_LE[i] += route.counts_E
                k_LT.append(torch.bincount(route.token_idx_A, minlength=x.numel()))
                k_hist += torch.bincount(k_LT[-1], minlength=num_experts + 1)
                if num_domains:
                    joint_LED[i] += torch.bincount(route.expert_idx_A * num_domains + domain_T[route.token_idx_A],
                                                   minlength=num_experts * num_domains)
            if self.variable_k and self.layers:
                token_loss.append(loss_T)
                token_k.append(torch.stack(k_LT))
        out = {"val_loss": distributed.all_sum_(loss_sum).item() / self.val_total}
        if self.non_causal:
            out["val_loss_causal"] = self.causal_val_loss()
        self.model.train()
        for total in (counts_LE, k_hist, joint_LED):
            distributed.all_sum_(total)
        if self.layers:
            counts_LE = counts_LE.cpu()
            summary = metrics.load_summary(counts_LE)
            self.last_global_LE = counts_LE
            out.update({"maxvio_global": summary["maxvio"], "maxvio_global_worst": summary["maxvio_worst"],
                        "cv_global": summary["cv"], "dead_experts": summary["dead_experts"],
                        "entropy_global": summary["entropy"]})
            hist = k_hist.cpu()
            out.update(metrics.experts_per_token_summary(torch.repeat_interleave(torch.arange(len(hist)), hist)))
            out["k_hist"] = (hist.float() / hist.sum()).tolist()  # fraction of (layer, token) pairs using k experts
            joint_LED = joint_LED.view(num_layers, num_experts, num_domains).cpu()
            out["specialisation"] = metrics.specialisation(joint_LED) if num_domains else math.nan
            if token_loss:
                loss_T = distributed.all_cat(torch.cat(token_loss)).cpu()
                k_LT = distributed.all_cat(torch.cat(token_k, dim=1).T.contiguous()).T.cpu()
                out["k_loss_corr"], out["k_by_loss_decile"] = metrics.k_loss_correlation(k_LT, loss_T)
            self.record_loads(step, "global", counts_LE)
            if batch_counts_LE is not None:
                self.record_loads(step, "batch", batch_counts_LE.cpu())
            if num_domains and step == self.cfg.train.steps:  # NOTE: the final evaluation only: L E D rows
                for d, name in enumerate(self.corpus.domains):
                    if joint_LED[:, :, d].sum():
                        self.record_loads(step, f"domain:{name}", joint_LED[:, :, d].float())
        return out

    def val_token_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[B L] loss of each validation token."""
        with self.amp:  # NOTE: the bare model: no DDP hooks, and ranks may hold unequal shares
            logits = self.model(x.to(self.device))
        return F.cross_entropy(logits.float().flatten(0, 1), y.to(self.device).flatten(), reduction="none")

    @torch.no_grad()
    def causal_val_loss(self) -> float:
        """Validation loss with each expert-choice router replaced by a causal top-k of its scores."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for layer in self.layers:
            layer.router.causal_topk = True
        try:
            for x, y in self.val_set:
                loss_sum += self.val_token_loss(x, y).mean()
        finally:
            for layer in self.layers:
                layer.router.causal_topk = False
        return distributed.all_sum_(loss_sum).item() / self.val_total

    def record_loads(self, step: int, scope: str, counts_LE: torch.Tensor) -> None:
        frac_LE = counts_LE / counts_LE.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        for layer, row in enumerate(frac_LE.tolist()):
            self.loads += [{"step": step, "layer": layer, "expert": e, "scope": scope, "load": v} for e, v in enumerate(row)]

    def run(self, checkpoint_path: Path | None = None) -> dict:
        tc, status = self.cfg.train, "ok"
        window_tokens, window_time, counts_LE, step = 0, 0.0, None, self.start_step - 1
        self.bar.update(self.start_step - 1)
        for step in range(self.start_step, tc.steps + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            lm, aux, counts_LE = self.train_step(step - 1)
            lm_value = lm.item()  # NOTE: the once-per-step sync, needed to stop a diverged run
            elapsed = time.perf_counter() - start
            if self.meter:  # NOTE: after the step's clock stopped: a dense probe step is not run time
                self.meter.step(step, elapsed, time.process_time() - cpu_start)
            window_time, window_tokens = window_time + elapsed, window_tokens + self.tokens_per_step
            self.window.append(lm_value)
            self.bar.update(1)
            if not math.isfinite(lm_value) or not math.isfinite(aux.item()):
                status = "diverged"
                self.steps.append({"step": step, "tokens": step * self.tokens_per_step, "train_loss": lm_value})
                break
            is_eval = step == tc.steps or (tc.eval_every and step % tc.eval_every == 0)
            if step % tc.log_every == 0 or is_eval:
                row = self.step_row(step, self.window, aux.item(), counts_LE, window_tokens / max(window_time, 1e-9))
                self.window, window_tokens, window_time = [], 0, 0.0
                if is_eval:
                    self.last_eval = self.evaluate(step, counts_LE)
                    row.update({k: self.last_eval[k] for k in ("val_loss", "maxvio_global") if k in self.last_eval})
                    self.bar.set_postfix(val_loss=f"{self.last_eval['val_loss']:.3f}")
                self.steps.append(row)
                if self.live:
                    self.log_live(step, row, is_eval)
                if is_eval and self.on_eval and self.on_eval(step, self.last_eval["val_loss"]):
                    status = "pruned"
                    break
            if checkpoint_path and tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.steps \
                    and self.rank == 0:
                checkpoint.save(checkpoint_path, self.state(step))
        self.bar.close()
        return self.summary(status, self.last_eval, step)

    def log_live(self, step: int, row: dict, is_eval: bool) -> None:
        self.live.scalars(step, {f"train/{k}": row[k] for k in live_metrics("train") if k in row})
        if is_eval:
            ev = self.last_eval
            self.live.scalars(step, {f"val/{k}": ev[k] for k in live_metrics("val") if k in ev})
            if self.last_global_LE is not None:
                layer_vio = np.atleast_1d(metrics.maxvio(self.last_global_LE))
                self.live.scalars(step, {f"val/maxvio_layer{i}": v for i, v in enumerate(layer_vio)})
                self.live.image(step, "val/expert_load", heatmap_image(self.last_global_LE))

    def state(self, step: int) -> dict:
        """Everything the steps after `step` depend on (checkpoint.py)."""
        return {"run_id": self.cfg.run_id, "step": step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": checkpoint.rng_state(self.data_gen),
                "steps": self.steps, "loads": self.loads, "window": self.window, "last_eval": self.last_eval,
                "vio_history": [v.cpu() for v in self.vio_history],
                "compute_vio": [float(v) for v in self.compute_vio],
                "costs": [{k: float(v) for k, v in c.items()} for c in self.costs],
                "drops": self.drops.cpu(), "speed": self.meter.state_dict() if self.meter else {}}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.restore_rng(state["rng"], self.data_gen)
        self.steps, self.loads, self.window = state["steps"], state["loads"], state["window"]
        self.last_eval = state["last_eval"]
        self.vio_history = [v.to(self.device) for v in state["vio_history"]]
        self.compute_vio = list(state["compute_vio"])
        self.costs = list(state["costs"])
        self.drops = state["drops"].to(self.device)
        if self.meter:
            self.meter.load_state_dict(state.get("speed", {}))
        self.start_step = state["step"] + 1

    def step_row(self, step: int, window: list[float], aux: float, counts_LE, tokens_per_s: float) -> dict:
        row = {"step": step, "tokens": step * self.tokens_per_step, "train_loss": sum(window) / len(window),
               "aux_loss": aux, "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": tokens_per_s}
        if self.layers:
            vio = self.vio_history[-1].tolist()
            row.update({"maxvio_batch": vio[0], "maxvio_batch_worst": vio[1],
                        "mean_k": counts_LE.sum().item() / (len(self.layers) * self.tokens_per_step)})
        return row

    def summary(self, status: str, last_eval: dict, steps_done: int) -> dict:
        half = self.vio_history[len(self.vio_history) // 2:]
        vio = torch.stack(half).mean(dim=0).tolist() if half else [math.nan, math.nan]
        compute = [float(v) for v in self.compute_vio[len(self.compute_vio) // 2:]]
        costs = self.costs[len(self.costs) // 2:]  # NOTE: second half, like maxvio_batch
        tail = [r["train_loss"] for r in self.steps[-3:] if "train_loss" in r]
        record = {"status": status, "steps_done": steps_done, "train_loss": sum(tail) / len(tail) if tail else math.nan,
                  "maxvio_batch": vio[0], "maxvio_batch_worst": vio[1],
                  "maxvio_compute": sum(compute) / len(compute) if compute and self.layers else math.nan,
                  "world_size": self.world,
                  "drop_frac": (self.drops[0] / self.drops[1].clamp_min(1)).item(),
                  **{name: sum(float(c[name]) for c in costs) / len(costs) for name in (costs[0] if costs else {})},
                  "expert_bias": [layer.router.expert_bias.tolist() for layer in self.layers],
                  **(self.meter.summary(steps_done) if self.meter else {}),
                  "num_params": sum(p.numel() for p in self.model.parameters()),
                  "compute_ratio": last_eval.get("mean_k", math.nan) / self.cfg.model.top_k}
        record.update(last_eval if status in ("ok", "pruned") else {})
        # NOTE: bits per byte of validation text, comparable across tokenizers (NaN for .bin shards)
        record["val_bpb"] = record.get("val_loss", math.nan) / math.log(2) * self.corpus.tokens_per_byte
        record["peak_mem_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda"
                                 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return record


def corpus_for(cfg: RunConfig) -> Corpus:
    """The run's corpus (cached), checked against the model's vocabulary."""
    corpus = load_corpus(cfg.data.source, cfg.data.val_fraction, cfg.data.tokenizer)
    if corpus.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"data.source = {cfg.data.source!r} with data.tokenizer = {cfg.data.tokenizer!r} has token "
                         f"ids up to {corpus.vocab_size - 1}; set model.vocab_size >= {corpus.vocab_size}")
    shortest = min(len(corpus.train), len(corpus.val))
    if shortest < cfg.model.seq_len + 2:
        raise ValueError(f"model.seq_len = {cfg.model.seq_len} does not fit data.source = {cfg.data.source!r}: its "
                         f"{'validation' if len(corpus.val) == shortest else 'training'} split has {shortest} tokens; "
                         f"use model.seq_len <= {max(1, shortest - 2)} or more data")
    return corpus


def run(cfg: RunConfig, *, progress: bool = False, on_eval: EvalCallback | None = None,
        checkpoint_dir: Path | None = None, log_dir: Path | None = None, group: str = "") -> RunResult:
    """Train one model under `cfg`. A NaN/inf loss ends the run with status 'diverged'; an
    `on_eval` callback that returns True ends it with status 'pruned'. With `checkpoint_dir`,
    the run saves checkpoints there and resumes from one it finds (checkpoint.py). With
    `train.log_to`, rank 0 logs live curves under `log_dir` (default results/logs), W&B runs
    grouped by `group` (livelog.py)."""
    start = time.perf_counter()
    corpus = corpus_for(cfg)
    world = distributed.world_size()
    meter = SpeedMeter(cfg, corpus, distributed.device_for(cfg.train.device),
                       cfg.train.batch_size * cfg.train.grad_accum * cfg.model.seq_len * world, world)
    live = None
    if cfg.train.log_to and distributed.rank() == 0:
        live = LiveLog(cfg.train.log_to, Path(log_dir or Path("results") / "logs"),
                       f"{cfg.variant}-s{cfg.seed}-{cfg.run_id}", group or cfg.variant, cfg.flat())
    try:
        return _run(cfg, corpus, meter, start, progress, on_eval, checkpoint_dir, live)
    finally:
        meter.close()
        if live:
            live.close()


def _run(cfg, corpus, meter, start, progress, on_eval, checkpoint_dir, live) -> RunResult:
    trainer = Trainer(cfg, corpus, progress, on_eval, live, meter)
    path = checkpoint.path_for(checkpoint_dir, cfg.run_id) if checkpoint_dir and cfg.train.checkpoint_every else None
    state = checkpoint.load_shared(path, cfg.run_id) if path else None
    if state is not None:
        trainer.restore(state)
        if trainer.rank == 0:
            print(f"{cfg.variant} seed {cfg.seed}: resuming from step {state['step']} of {cfg.train.steps} "
                  f"({path})", file=sys.stderr)
    record = {"run_id": cfg.run_id, "config_id": cfg.config_id, **cfg.flat(), **trainer.run(path)}
    record["resumed_from_step"] = state["step"] if state else 0
    record.update(environment(cfg.train.device), **corpus.fingerprint, wall_s=time.perf_counter() - start)
    for row in trainer.steps + trainer.loads:
        row["run_id"] = cfg.run_id
    if path and not cfg.train.keep_checkpoint and trainer.rank == 0:
        checkpoint.remove(path)
    return RunResult(record, trainer.steps, trainer.loads)
