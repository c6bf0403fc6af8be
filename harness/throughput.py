"""What a run's speed means: the machine and code it ran on, whether it had the CPU to itself,
and a dense yardstick timed in the same process.

A CPU run that got far less CPU time than its threads could use shared the machine
(`throughput_reliable = false`); `dense_probe` times the dense-FFN twin of the model right before
the run, and the ratio of the two speeds cancels most of what else the machine is doing.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import harness
from harness import distributed
from harness.config import RunConfig
from harness.data import Corpus, sample_batch
from harness.model import MoETransformer
from harness.optim import autocast_for, build_optimizer

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
            "git_commit": GIT_COMMIT}


def cpu_use(train_cpu: float, train_time: float, device: torch.device) -> dict:
    """Wall and CPU time of the training steps; on CPU, a run that got far less CPU than it has
    threads shared the machine, and its throughput is flagged unreliable."""
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    utilisation = train_cpu / max(train_time, 1e-9) / threads
    reliable = device.type != "cpu" or utilisation >= MIN_CPU_UTILISATION
    return {"train_wall_s": train_time, "train_cpu_s": train_cpu, "cpu_threads": threads,
            "cpu_utilisation": utilisation, "throughput_reliable": bool(reliable)}


def dense_probe(cfg: RunConfig, corpus: Corpus) -> float:
    """Training tokens/s of the dense-FFN twin of `cfg`'s model (equal active width), timed over
    `train.dense_probe_steps` steps after one untimed step: the yardstick that cancels most of
    what the machine is doing meanwhile. NaN when disabled."""
    steps = cfg.train.dense_probe_steps
    if steps == 0:
        return math.nan
    device = distributed.device_for(cfg.train.device)
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
