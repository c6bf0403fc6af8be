"""One run: a RunConfig in, a flat record + step rows + load rows out.

    from harness.suites.keys import resolve
    from harness.engine.train import run
    result = run(resolve({"router": "loss_free", "train.steps": 50}))

The balancing update runs after each optimizer step, on the counts summed over the step's
micro-batches (and over data-parallel ranks when torch.distributed is initialised).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from harness.engine import checkpoint, memory
from harness.engine.compile import CompiledForward
from harness import distributed
from harness.engine.config import RunConfig
from harness.data.corpus import Corpus, load_corpus, sample_batch
from harness.engine.evaluate import Evaluator
from harness.engine.livelog import LiveLog
from harness.engine.families.base import NATIVE
from harness.engine.model import build_model
from harness.engine.run_metrics import RunMetrics
from harness.engine.optim import autocast_for, build_optimizer, lr_at  # noqa: F401 (lr_at: public here too)
from harness.engine.throughput import SpeedMeter, environment


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


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model under DistributedDataParallel when torch.distributed is initialised, else itself."""
    if not distributed.is_distributed():
        return model
    # NOTE: buffers (the expert bias) are not broadcast: every rank computes the same bias from the
    # same all-reduced counts, which a test checks, and a broadcast would hide a bug
    # NOTE: a family with parts a short context leaves without a gradient (DeepSeek-V4's indexer) says so
    return DistributedDataParallel(model, device_ids=[device.index] if device.index is not None else None,
                                   find_unused_parameters=getattr(model, "unused_parameters", False),
                                   **NO_BUFFER_SYNC)


class Trainer:
    """The optimisation loop of one run (lr, micro-batches, DDP, clip, step, balancing update); see `run()`."""

    def __init__(self, cfg: RunConfig, corpus: Corpus, progress: bool, on_eval: EvalCallback | None,
                 live: LiveLog | None = None, meter: SpeedMeter | None = None):
        self.cfg, self.corpus, self.on_eval, self.live, self.meter = cfg, corpus, on_eval, live, meter
        self.device = distributed.device_for(cfg.train.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, cfg.router_cfg, native=cfg.router == NATIVE).to(self.device)
        self.layers = self.model.moe_layers
        self.ddp = data_parallel(self.model, self.device)
        self.compiled = CompiledForward(self.ddp) if cfg.train.compile else None  # compile.py
        self.forward = self.compiled or self.ddp
        self.optimizer = build_optimizer(self.model, cfg)
        self.data_gen = torch.Generator().manual_seed(cfg.train.data_seed if cfg.train.data_seed >= 0 else cfg.seed)
        self.amp = autocast_for(cfg)
        self.evaluator = Evaluator(cfg, corpus, self.model, self.device, self.amp)
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.seq_len * self.world
        self.metrics = RunMetrics(cfg, len(self.layers), self.device, self.tokens_per_step)
        self.bar = tqdm(total=cfg.train.steps, desc=cfg.variant, leave=False, disable=not progress or self.rank > 0)
        self.start_step = 1

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
        for micro in range(tc.grad_accum):
            lm, aux = self.micro_step(last=micro == tc.grad_accum - 1)
            if self.layers:
                micro_LE = torch.stack([layer.last_route.counts_E for layer in self.layers])
                counts_LE += micro_LE
                dropped = (sum(layer.last_route.num_dropped for layer in self.layers)
                           if self.cfg.router_cfg.capacity_factor > 0 else None)
                self.metrics.add_micro_batch(micro_LE, dropped)
            lm_total, aux_total = lm_total + lm.detach() / tc.grad_accum, aux_total + aux.detach() / tc.grad_accum
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.balance_update(counts_LE, progress=step / tc.steps)
        return distributed.all_mean(lm_total), distributed.all_mean(aux_total), counts_LE

    def micro_step(self, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of one micro-batch; returns its (lm loss, aux loss)."""
        tc = self.cfg.train
        x, y = (t.to(self.device, non_blocking=True) for t in sample_batch(
            self.corpus.train, tc.batch_size, self.cfg.model.seq_len, self.data_gen, self.rank, self.world))
        # NOTE: gradients are all-reduced once per optimizer step, on the last micro-batch
        with contextlib.nullcontext() if last or self.ddp is self.model else self.ddp.no_sync():
            lm = self.lm_loss(x, y)
            aux = sum((v for layer in self.layers for v in layer.last_route.aux_losses.values()),
                      torch.zeros((), device=self.device))
            ((lm + aux) / tc.grad_accum).backward()
        return lm, aux

    @torch.no_grad()
    def balance_update(self, counts_LE: torch.Tensor, progress: float) -> None:
        distributed.all_sum_(counts_LE)  # NOTE: counts are summed over ranks, not averaged
        before_LE = self.metrics.bias_snapshot(self.layers)
        for layer, counts_E in zip(self.layers, counts_LE):
            layer.router.balance_update(counts_E, num_tokens=self.tokens_per_step, progress=progress)
        self.metrics.end_step(counts_LE, before_LE, self.metrics.bias_snapshot(self.layers))

    def evaluate(self, step: int, batch_counts_LE: torch.Tensor | None) -> dict:
        """Evaluate now (evaluate.py) and record the result; returns the evaluation's metrics."""
        out, loads = self.evaluator(step, batch_counts_LE)
        self.metrics.record_eval(step, out, loads)
        return out

    def run(self, checkpoint_path: Path | None = None) -> dict:
        status, step = "ok", self.start_step - 1
        self.bar.update(self.start_step - 1)
        self.window_tokens, self.window_time = 0, 0.0
        for step in range(self.start_step, self.cfg.train.steps + 1):
            status = self.one_step(step)
            if status != "ok":
                break
            if checkpoint_path and self.rank == 0 and checkpoint.due(step, self.cfg.train):
                checkpoint.save(checkpoint_path, self.state(step))
        self.bar.close()
        return self.summary(status, step)

    def one_step(self, step: int) -> str:
        """Train one step, then log, evaluate and ask the pruner when due; returns the run's status."""
        tc = self.cfg.train
        start, cpu_start = time.perf_counter(), time.process_time()
        lm, aux, counts_LE = self.train_step(step - 1)
        lm_value = lm.item()  # NOTE: the once-per-step sync, needed to stop a diverged run
        if self.compiled and (note := self.compiled.end_step()) and self.rank == 0:
            print(note, file=sys.stderr)
        elapsed = time.perf_counter() - start
        if self.meter:  # NOTE: after the step's clock stopped: a dense probe step is not run time
            self.meter.step(step, elapsed, time.process_time() - cpu_start)
        self.window_time, self.window_tokens = self.window_time + elapsed, self.window_tokens + self.tokens_per_step
        self.metrics.window.append(lm_value)
        self.bar.update(1)
        if not math.isfinite(lm_value) or not math.isfinite(aux.item()):
            self.metrics.diverged_row(step, lm_value)
            return "diverged"
        is_eval = step == tc.steps or (tc.eval_every and step % tc.eval_every == 0)
        if step % tc.log_every == 0 or is_eval:
            return self.log_step(step, aux.item(), counts_LE, is_eval)
        return "ok"

    def log_step(self, step: int, aux: float, counts_LE: torch.Tensor, is_eval: bool) -> str:
        row = self.metrics.step_row(step, aux, counts_LE, self.optimizer.param_groups[0]["lr"],
                                    self.window_tokens / max(self.window_time, 1e-9))
        self.window_tokens, self.window_time = 0, 0.0
        if is_eval:
            last = self.evaluate(step, counts_LE)
            row.update({k: last[k] for k in ("val_loss", "maxvio_global") if k in last})
            self.bar.set_postfix(val_loss=f"{last['val_loss']:.3f}")
        if self.live:
            self.live.step(step, row, self.metrics.last_eval if is_eval else None, self.metrics.last_global_LE)
        if is_eval and self.on_eval and self.on_eval(step, self.metrics.last_eval["val_loss"]):
            return "pruned"
        return "ok"

    def state(self, step: int) -> dict:
        """Everything the steps after `step` depend on (checkpoint.py): each part's own state."""
        return {"format": checkpoint.FORMAT, "run_id": self.cfg.run_id, "step": step,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": checkpoint.rng_state(self.data_gen), "metrics": self.metrics.state_dict(),
                "speed": self.meter.state_dict() if self.meter else {}}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        checkpoint.restore_rng(state["rng"], self.data_gen)
        self.metrics.load_state_dict(state["metrics"])
        if self.meter:
            self.meter.load_state_dict(state["speed"])
        self.start_step = state["step"] + 1

    def summary(self, status: str, steps_done: int) -> dict:
        return {**self.metrics.summary(status, steps_done, self.corpus.tokens_per_byte), "world_size": self.world,
                "expert_bias": [layer.router.expert_bias.tolist() for layer in self.layers],
                **(self.meter.summary(steps_done) if self.meter else {}),
                "num_params": sum(p.numel() for p in self.model.parameters()),
                **(self.compiled.summary() if self.compiled else {"compile_graphs": 0, "compile_recompiles": 0})}


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
    # NOTE: before anything is allocated: a run that cannot fit fails now with what to change (CUDA only)
    if (fits := memory.check_fits(cfg, distributed.device_for(cfg.train.device), world)) and distributed.rank() == 0:
        print(fits, file=sys.stderr)
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
    for row in trainer.metrics.steps + trainer.metrics.loads:
        row["run_id"] = cfg.run_id
    if path and not cfg.train.keep_checkpoint and trainer.rank == 0:
        checkpoint.remove(path)
    return RunResult(record, trainer.metrics.steps, trainer.metrics.loads)
