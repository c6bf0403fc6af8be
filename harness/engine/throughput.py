"""What a run's speed means: the machine and code it ran on, whether it had the CPU to itself,
and a dense yardstick timed in the same process, through the run.

A CPU run that got far less CPU time than its threads could use shared the machine
(`throughput_reliable = false`); the dense-FFN twin of the model is timed at points spread
through the run (`SpeedMeter`), and the ratio of the two speeds cancels most of what else the
machine is doing. The thread count follows the cores other processes leave free (threads.py).
"""

from __future__ import annotations

import math
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import harness
from harness.engine.compile import WARMUP_STEPS
from harness.engine.config import RunConfig
from harness.data.corpus import Corpus, sample_batch
from harness.engine.model import build_dense
from harness.engine.optim import autocast_for, build_optimizer
from harness.engine.threads import ThreadGovernor


# NOTE: measured on the 2-core VM (issue 11), tiny and small models: 0.96-0.99 of the threads
# alone, 0.87-0.89 per rank under torchrun (Gloo waits), 0.40-0.50 beside one or two busy
# processes (tokens/s cut 3-4x), and one run at 0.77 that lost 40 % of its speed
MIN_CPU_UTILISATION = 0.8


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
            "git_commit": GIT_COMMIT, "deterministic": torch.are_deterministic_algorithms_enabled()}


class DenseProbe:
    """The dense-FFN twin of `cfg`'s model (equal active width) with its own optimizer and data
    stream, built as the run is (under torch.compile when `train.compile`); `step()` trains it one
    step and returns the seconds it took. Untimed steps at construction warm it up (and compile it)."""

    def __init__(self, cfg: RunConfig, corpus: Corpus, device: torch.device):
        torch.manual_seed(cfg.seed)  # NOTE: the run reseeds after this, so the probe changes nothing in it
        self.model = build_dense(cfg.model, cfg.router_cfg).to(device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.cfg, self.corpus, self.device = cfg, corpus, device
        self.gen, self.amp = torch.Generator().manual_seed(0), autocast_for(cfg)
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.tokens = cfg.train.batch_size * cfg.model.seq_len
        for _ in range(2 if cfg.train.compile else 1):  # NOTE: the first compiled steps compile forward and backward
            self.step()

    def step(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        x, y = (t.to(self.device) for t in sample_batch(self.corpus.train, self.cfg.train.batch_size,
                                                         self.cfg.model.seq_len, self.gen))
        with self.amp:
            logits = self.forward(x)
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


class SpeedMeter:
    """A run's speed and what it means: tokens/s, the ratio to the dense twin, the CPU it got.

    The first `WARMUP_STEPS` steps each process runs (allocator, lazy init, compilation) are timed
    apart (`warmup_s`) and left out of `tokens_per_s`, unless the process ran no step after them.

    The dense twin is timed (median of 3 steps) at `train.dense_probe_steps` points spread
    through the run, each against the median of the run's few steps just before it, and
    `throughput_ratio` is the median of those ratios: a load that comes and goes then moves
    both sides of a ratio alike, where one probe before the run measured another moment."""

    RECENT = 5  # run steps each probe is compared with
    # NOTE: one dense step's time varies by about 8 % on a quiet CPU; the median of 3 per probe
    # brought the spread of identical runs' ratios within a few per cent (issue 17)
    STEPS_PER_PROBE = 3
    WARMUP_STEPS = WARMUP_STEPS  # NOTE: the steps after which a compiled run's graphs are set (compile.py)

    def __init__(self, cfg: RunConfig, corpus: Corpus, device: torch.device, tokens_per_step: int, world: int):
        steps, probes = cfg.train.steps, cfg.train.dense_probe_steps
        self.probe = DenseProbe(cfg, corpus, device) if probes else None
        self.every = max(1, steps // probes) if probes else 0
        self.probes, self.tokens_per_step, self.world, self.device = probes, tokens_per_step, world, device
        # NOTE: not under compile: a new thread count recompiles every graph (threads.py)
        self.governor = ThreadGovernor(active=device.type == "cpu", follow_load=not cfg.train.compile)
        self.recent: list[float] = []  # seconds of the last RECENT run steps
        self.ratios: list[float] = []  # per probe: run tokens/s over dense tokens/s (all ranks)
        self.dense_rates: list[float] = []  # per probe: dense tokens/s, all ranks
        self.wall = self.cpu = self.thread_seconds = 0.0  # inside run steps
        self.warmup_wall, self.warm_steps, self.steps_here = 0.0, 0, 0  # warm steps: after this process's warm-up
        if device.type == "cuda":  # NOTE: peak_mem_mb is this run's, not the process's (a suite runs many)
            torch.cuda.reset_peak_memory_stats(device)

    def step(self, step: int, seconds: float, cpu_seconds: float) -> None:
        """Account one run step (`seconds` wall, `cpu_seconds` of the process); probe when due."""
        self.wall, self.cpu = self.wall + seconds, self.cpu + cpu_seconds
        self.steps_here += 1
        if self.steps_here <= self.WARMUP_STEPS:
            self.warmup_wall += seconds
        else:
            self.warm_steps += 1
        self.thread_seconds += seconds * (torch.get_num_threads() if self.device.type == "cpu" else 1)
        self.recent = (self.recent + [seconds])[-self.RECENT:]
        if self.probe and step % self.every == 0 and len(self.ratios) < self.probes:
            dense_s = statistics.median(self.probe.step() for _ in range(self.STEPS_PER_PROBE))
            dense_rate = self.world * self.probe.tokens / dense_s
            self.dense_rates.append(dense_rate)
            self.ratios.append(self.tokens_per_step / statistics.median(self.recent) / dense_rate)
        self.governor.tick()

    def summary(self, steps_done: int) -> dict:
        utilisation = self.cpu / max(self.thread_seconds, 1e-9)
        reliable = self.device.type != "cpu" or utilisation >= MIN_CPU_UTILISATION
        warm = (self.warm_steps, self.wall - self.warmup_wall) if self.warm_steps else (steps_done, self.wall)
        return {"tokens_per_s": warm[0] * self.tokens_per_step / max(warm[1], 1e-9), "warmup_s": self.warmup_wall,
                "dense_tokens_per_s": statistics.median(self.dense_rates) if self.dense_rates else math.nan,
                "throughput_ratio": statistics.median(self.ratios) if self.ratios else math.nan,
                "train_wall_s": self.wall, "train_cpu_s": self.cpu, "cpu_utilisation": utilisation,
                "throughput_reliable": bool(reliable), **self.governor.summary(),
                "peak_mem_mb": (torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda"
                                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}

    def close(self) -> None:
        self.governor.close()

    def state_dict(self) -> dict:
        return {"recent": self.recent, "ratios": self.ratios, "dense_rates": self.dense_rates, "wall": self.wall,
                "cpu": self.cpu, "thread_seconds": self.thread_seconds, "warmup_wall": self.warmup_wall,
                "warm_steps": self.warm_steps}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
