"""One run: a RunConfig in, a flat record + step rows + load rows out.

    from harness.config import resolve
    from harness.train import run
    result = run(resolve({"router": "loss_free", "train.steps": 50}))

The balancing update runs after each optimizer step, on the counts summed over the step's
micro-batches (and over data-parallel ranks when torch.distributed is initialised).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

import harness
from harness import metrics
from harness.config import RunConfig
from harness.data import Corpus, load_corpus, sample_batch, validation_batches
from harness.model import MoETransformer

# NOTE: measured on the 2-core VM (issue 11), tiny and small models with 2 threads: 0.99 of the
# threads alone, 0.40-0.50 beside one or two busy processes (which cut tokens/s 3-4x)
MIN_CPU_UTILISATION = 0.75
EvalCallback = Callable[[int, float], bool]  # (step, val_loss) -> stop now (a pruner said so)


@dataclass
class RunResult:
    record: dict  # one row of runs.parquet
    steps: list[dict] = field(default_factory=list)  # rows of steps.parquet
    loads: list[dict] = field(default_factory=list)  # rows of loads.parquet


def _git_commit() -> str:
    """HEAD of the checkout the harness was imported from, '+dirty' if harness/ has edits."""
    where = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where,
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


# NOTE: read once at import, so a run records the code it ran even if HEAD moves meanwhile
GIT_COMMIT = _git_commit()


def environment(device: str) -> dict:
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    return {"device": device, "device_name": name, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "harness_version": harness.__version__,
            "git_commit": GIT_COMMIT}


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr_ratio x cfg.lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def autocast_for(cfg: RunConfig):
    device, dtype = cfg.train.device, cfg.train.dtype
    if dtype == "bfloat16" or (dtype == "auto" and device == "cuda"):
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95), fused=cfg.train.device == "cuda")


class Trainer:
    """Holds the state of one run; `run()` below is the entry point."""

    def __init__(self, cfg: RunConfig, corpus: Corpus, progress: bool, on_eval: EvalCallback | None):
        self.cfg, self.corpus, self.on_eval = cfg, corpus, on_eval
        self.device = torch.device(cfg.train.device)
        torch.manual_seed(cfg.seed)
        self.model = MoETransformer(cfg.model, cfg.router_cfg).to(self.device)
        self.layers = self.model.moe_layers
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.optimizer = build_optimizer(self.model, cfg)
        self.data_gen = torch.Generator().manual_seed(cfg.train.data_seed if cfg.train.data_seed >= 0 else cfg.seed)
        self.val_set = validation_batches(corpus.val, cfg.train.eval_batches, cfg.train.batch_size, cfg.model.seq_len)
        self.amp = autocast_for(cfg)
        self.bar = tqdm(total=cfg.train.steps, desc=cfg.variant, leave=False, disable=not progress)
        self.steps: list[dict] = []
        self.loads: list[dict] = []
        self.vio_history: list[torch.Tensor] = []  # per step: [2] layer-mean and worst-layer MaxVio
        self.train_time = 0.0  # wall seconds inside training steps (evaluation excluded)
        self.train_cpu = 0.0  # process CPU seconds (all threads) inside training steps
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.seq_len

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
        for _ in range(tc.grad_accum):
            x, y = (t.to(self.device, non_blocking=True) for t in sample_batch(
                self.corpus.train, tc.batch_size, self.cfg.model.seq_len, self.data_gen))
            lm = self.lm_loss(x, y)
            aux = sum((v for layer in self.layers for v in layer.last_route.aux_losses.values()),
                      torch.zeros((), device=self.device))
            ((lm + aux) / tc.grad_accum).backward()
            counts_LE += torch.stack([layer.last_route.counts_E for layer in self.layers]) if self.layers else 0
            lm_total, aux_total = lm_total + lm.detach() / tc.grad_accum, aux_total + aux.detach() / tc.grad_accum
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.balance_update(counts_LE, progress=step / tc.steps)
        return lm_total, aux_total, counts_LE

    @torch.no_grad()
    def balance_update(self, counts_LE: torch.Tensor, progress: float) -> None:
        if distributed():
            dist.all_reduce(counts_LE)  # NOTE: counts are summed over ranks, not averaged
        num_tokens = self.tokens_per_step * (dist.get_world_size() if distributed() else 1)
        for layer, counts_E in zip(self.layers, counts_LE):
            layer.router.balance_update(counts_E, num_tokens=num_tokens, progress=progress)
        if self.layers:
            mean_E = counts_LE.mean(dim=-1).clamp_min(1e-12)
            vio_L = counts_LE.max(dim=-1).values / mean_E - 1
            self.vio_history.append(torch.stack([vio_L.mean(), vio_L.max()]))

    @torch.no_grad()
    def evaluate(self, step: int, batch_counts_LE: torch.Tensor | None) -> dict:
        self.model.eval()
        loss_sum, counts_LE, k_per_token = 0.0, torch.zeros(len(self.layers), self.cfg.model.num_experts), []
        for x, y in self.val_set:
            loss_sum += self.lm_loss(x.to(self.device), y.to(self.device)).item()
            if self.layers:
                counts_LE += torch.stack([layer.last_route.counts_E.cpu() for layer in self.layers])
                tokens = x.numel()
                k_per_token.append(torch.stack([  # [L, T]: experts each token used in each layer
                    torch.bincount(layer.last_route.token_idx_A.cpu(), minlength=tokens) for layer in self.layers
                ]).flatten())
        self.model.train()
        out = {"val_loss": loss_sum / len(self.val_set)}
        if self.layers:
            summary = metrics.load_summary(counts_LE)
            out.update({"maxvio_global": summary["maxvio"], "maxvio_global_worst": summary["maxvio_worst"],
                        "cv_global": summary["cv"], "dead_experts": summary["dead_experts"],
                        "entropy_global": summary["entropy"]})
            k_all = torch.cat(k_per_token)
            out.update(metrics.experts_per_token_summary(k_all))
            hist = torch.bincount(k_all, minlength=self.cfg.model.num_experts + 1).float()
            out["k_hist"] = (hist / hist.sum()).tolist()  # fraction of (layer, token) pairs using k experts
            self.record_loads(step, "global", counts_LE)
            if batch_counts_LE is not None:
                self.record_loads(step, "batch", batch_counts_LE.cpu())
        return out

    def record_loads(self, step: int, scope: str, counts_LE: torch.Tensor) -> None:
        frac_LE = counts_LE / counts_LE.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        for layer, row in enumerate(frac_LE.tolist()):
            self.loads += [{"step": step, "layer": layer, "expert": e, "scope": scope, "load": v} for e, v in enumerate(row)]

    def run(self) -> dict:
        tc, status, last_eval, window = self.cfg.train, "ok", {}, []
        window_tokens, window_time, counts_LE = 0, 0.0, None
        for step in range(1, tc.steps + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            lm, aux, counts_LE = self.train_step(step - 1)
            lm_value = lm.item()  # NOTE: the once-per-step sync, needed to stop a diverged run
            elapsed = time.perf_counter() - start
            self.train_time += elapsed
            self.train_cpu += time.process_time() - cpu_start
            window_time, window_tokens = window_time + elapsed, window_tokens + self.tokens_per_step
            window.append(lm_value)
            self.bar.update(1)
            if not math.isfinite(lm_value) or not math.isfinite(aux.item()):
                status = "diverged"
                self.steps.append({"step": step, "tokens": step * self.tokens_per_step, "train_loss": lm_value})
                break
            is_eval = step == tc.steps or (tc.eval_every and step % tc.eval_every == 0)
            if step % tc.log_every == 0 or is_eval:
                row = self.step_row(step, window, aux.item(), counts_LE, window_tokens / max(window_time, 1e-9))
                window, window_tokens, window_time = [], 0, 0.0
                if is_eval:
                    last_eval = self.evaluate(step, counts_LE)
                    row.update({k: last_eval[k] for k in ("val_loss", "maxvio_global") if k in last_eval})
                    self.bar.set_postfix(val_loss=f"{last_eval['val_loss']:.3f}")
                self.steps.append(row)
                if is_eval and self.on_eval and self.on_eval(step, last_eval["val_loss"]):
                    status = "pruned"
                    break
        self.bar.close()
        return self.summary(status, last_eval, step)

    def step_row(self, step: int, window: list[float], aux: float, counts_LE, tokens_per_s: float) -> dict:
        row = {"step": step, "tokens": step * self.tokens_per_step, "train_loss": sum(window) / len(window),
               "aux_loss": aux, "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": tokens_per_s}
        if self.layers:
            vio = self.vio_history[-1].tolist()
            row.update({"maxvio_batch": vio[0], "maxvio_batch_worst": vio[1],
                        "mean_k": counts_LE.sum().item() / (len(self.layers) * self.tokens_per_step)})
        return row

    def cpu_use(self) -> dict:
        """Wall and CPU time of the training steps; on CPU, a run that got far less CPU than it has
        threads shared the machine, and its throughput is flagged unreliable."""
        threads = torch.get_num_threads() if self.device.type == "cpu" else 1
        utilisation = self.train_cpu / max(self.train_time, 1e-9) / threads
        reliable = self.device.type != "cpu" or utilisation >= MIN_CPU_UTILISATION
        return {"train_wall_s": self.train_time, "train_cpu_s": self.train_cpu, "cpu_threads": threads,
                "cpu_utilisation": utilisation, "throughput_reliable": bool(reliable)}

    def summary(self, status: str, last_eval: dict, steps_done: int) -> dict:
        half = self.vio_history[len(self.vio_history) // 2:]
        vio = torch.stack(half).mean(dim=0).tolist() if half else [math.nan, math.nan]
        tail = [r["train_loss"] for r in self.steps[-3:] if "train_loss" in r]
        record = {"status": status, "steps_done": steps_done, "train_loss": sum(tail) / len(tail) if tail else math.nan,
                  "maxvio_batch": vio[0], "maxvio_batch_worst": vio[1],
                  "tokens_per_s": steps_done * self.tokens_per_step / max(self.train_time, 1e-9),
                  **self.cpu_use(),
                  "num_params": sum(p.numel() for p in self.model.parameters()),
                  "compute_ratio": last_eval.get("mean_k", math.nan) / self.cfg.model.top_k}
        record.update(last_eval if status in ("ok", "pruned") else {})
        record["val_bpb"] = record.get("val_loss", math.nan) / math.log(2) if self.corpus.vocab_size == 256 else math.nan
        record["peak_mem_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda"
                                 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return record


def dense_probe(cfg: RunConfig, corpus: Corpus) -> float:
    """Training tokens/s of the dense-FFN twin of `cfg`'s model (equal active width), timed over
    `train.dense_probe_steps` steps after one untimed step: the yardstick that cancels most of
    what the machine is doing meanwhile. NaN when disabled."""
    steps = cfg.train.dense_probe_steps
    if steps == 0:
        return math.nan
    device = torch.device(cfg.train.device)
    torch.manual_seed(cfg.seed)  # NOTE: the run reseeds after this, so the probe changes nothing in it
    model = MoETransformer(dataclasses.replace(cfg.model, ffn="dense"), cfg.router_cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    gen, amp = torch.Generator().manual_seed(0), autocast_for(cfg)
    tokens = cfg.train.batch_size * cfg.model.seq_len

    def step() -> None:
        x, y = (t.to(device) for t in sample_batch(corpus.train, cfg.train.batch_size, cfg.model.seq_len, gen))
        with amp:
            logits = model(x)
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * tokens / (time.perf_counter() - start)


def corpus_for(cfg: RunConfig) -> Corpus:
    """The run's corpus (cached), checked against the model's vocabulary."""
    corpus = load_corpus(cfg.data.source, cfg.data.val_fraction)
    if corpus.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"data.source = {cfg.data.source!r} has token ids up to {corpus.vocab_size - 1}; "
                         f"set model.vocab_size >= {corpus.vocab_size}")
    shortest = min(len(corpus.train), len(corpus.val))
    if shortest < cfg.model.seq_len + 2:
        raise ValueError(f"model.seq_len = {cfg.model.seq_len} does not fit data.source = {cfg.data.source!r}: its "
                         f"{'validation' if len(corpus.val) == shortest else 'training'} split has {shortest} tokens; "
                         f"use model.seq_len <= {max(1, shortest - 2)} or more data")
    return corpus


def run(cfg: RunConfig, *, progress: bool = False, on_eval: EvalCallback | None = None) -> RunResult:
    """Train one model under `cfg`. A NaN/inf loss ends the run with status 'diverged'; an
    `on_eval` callback that returns True ends it with status 'pruned'."""
    start = time.perf_counter()
    corpus = corpus_for(cfg)
    dense_tokens_per_s = dense_probe(cfg, corpus)
    trainer = Trainer(cfg, corpus, progress, on_eval)
    record = {"run_id": cfg.run_id, "config_id": cfg.config_id, **cfg.flat(), **trainer.run()}
    record["dense_tokens_per_s"] = dense_tokens_per_s
    record["throughput_ratio"] = record["tokens_per_s"] / dense_tokens_per_s  # MoE speed as a fraction of dense
    record.update(environment(cfg.train.device), **corpus.fingerprint, wall_s=time.perf_counter() - start)
    for row in trainer.steps + trainer.loads:
        row["run_id"] = cfg.run_id
    return RunResult(record, trainer.steps, trainer.loads)
