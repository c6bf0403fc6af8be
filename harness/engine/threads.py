"""CPU threads for a run on a machine it may share with other processes.

PyTorch's OpenMP threads wait for work by spinning. Two runs that each start one thread per
core on the same cores spin against each other: on the 2-core VM two `tiny` runs side by side
each took 45 times as long as one alone, where two that each used one thread would take
about twice as long. So a CPU run in `auto` mode (`--threads auto`, the default) looks, about once
a second, at how much CPU the *other* processes of the machine used since the last look
(/proc/stat's busy time less this process's own CPU time) and sets torch's thread count to the
cores they left free: never more than it started with (OMP_NUM_THREADS, torchrun's and
`--jobs`'s split), never fewer than one. Alone, nothing changes.

`--threads N` (environment MOE_HARNESS_THREADS) fixes N threads instead. It is how a run is
executed, not what it computes, so it is not part of the run config or its run_id.
NOTE: a matmul's floating-point sums depend on the thread count, so a run whose thread count
changed is not bit-identical to one that kept it: fix the count where that matters. A compiled
run (`train.compile`) keeps the count it starts with: torch.compile's graphs are guarded on it,
and a new count would compile them all again mid-run.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

ENV = "MOE_HARNESS_THREADS"  # auto (default) or a fixed thread count
STAT = Path("/proc/stat")
INTERVAL_S = 1.0  # how often the free cores are looked at
# NOTE: free cores are rounded up from 0.6 of a core: a stray process taking a fraction of a
# core must not halve a run's threads, a run spinning on a whole core must
ROUND_UP_FROM = 0.6


def busy_seconds() -> float | None:
    """CPU seconds every core of the machine spent busy since boot (None where /proc/stat is missing)."""
    try:
        fields = STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def fixed_threads() -> int:
    """MOE_HARNESS_THREADS as a count, 0 for auto; ValueError naming the allowed values."""
    value = os.environ.get(ENV, "auto").strip() or "auto"
    if value == "auto":
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--threads / {ENV} = {value!r} must be 'auto' or a whole number >= 1")
    return int(value)


def threads_for(free_cores: float, most: int) -> int:
    """The thread count for `free_cores` cores left free by other processes, within [1, most]."""
    return max(1, min(most, math.floor(free_cores + 1 - ROUND_UP_FROM)))


class ThreadGovernor:
    """Keeps torch's thread count at the cores other processes leave free; `tick()` once a step."""

    def __init__(self, active: bool = True, follow_load: bool = True):
        """`active`: a CPU run (a GPU run keeps whatever threads it has). `follow_load`: False keeps
        the count it starts with (a compiled run: Dynamo guards on the thread count, so each new
        count would compile every graph of the run again)."""
        fixed = fixed_threads() if active else 0
        self.original = torch.get_num_threads()
        if fixed:
            torch.set_num_threads(fixed)
        self.most = torch.get_num_threads()
        self.cores = os.cpu_count() or 1
        self.enabled = active and follow_load and not fixed and self.most > 1 and busy_seconds() is not None
        self.changes = 0  # times the thread count changed
        self.least = self.most  # the fewest threads used
        self._mark()

    def _mark(self) -> None:
        self.last = (time.monotonic(), busy_seconds() if self.enabled else 0.0, time.process_time())

    def tick(self) -> None:
        if not self.enabled or time.monotonic() - self.last[0] < INTERVAL_S:
            return
        (wall0, busy0, own0), now = self.last, time.monotonic()
        others = max(0.0, (busy_seconds() - busy0) - (time.process_time() - own0)) / (now - wall0)
        threads = threads_for(self.cores - others, self.most)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.changes += 1
            self.least = min(self.least, threads)
        self._mark()

    def close(self) -> None:
        """Give the process back the thread count it had (a suite runs many runs in one process)."""
        torch.set_num_threads(self.original)

    def summary(self) -> dict:
        return {"cpu_threads": self.most, "cpu_threads_min": self.least, "cpu_thread_changes": self.changes}
