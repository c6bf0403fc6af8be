"""`train.compile = true`: the training forward under torch.compile, and one line on what runs eager.

What has static shapes (embeddings, attention, norms, the dense FFN, the experts: grouped_mm, or
the CPU loop as the opaque op of expert_loop.py) traces into graphs. A routing step whose shapes
or Python control flow follow the data (variable k's nonzero, a capacity drop, a plugin's loop
over the counts) is a graph break: Dynamo runs that code eagerly between two graphs and resumes
compiled after it. A fixed-k router compiles to one graph.

After the first `WARMUP_STEPS` optimizer steps (the bias made ready, dynamic sizes seen once) a
run compiles nothing new. At that point the trainer prints one line naming where the forward
ran eager (file:line of each graph break, Dynamo's graph-break log read through a handler), and
one more line if a later step ever compiles again (`recompiles` counts the graphs).

Dynamo's own warnings about the same breaks (a traceback per kind) are kept off the console.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch
from torch._dynamo.utils import counters

WARMUP_STEPS = 5  # optimizer steps before a run's graphs are set

# NOTE: Dynamo's graph-break artifact logger: silent unless a handler and a level are set on it
BREAK_LOGGER = "torch._dynamo.symbolic_convert.__graph_breaks"
BREAK_AT = re.compile(r"in user code at (?P<file>.+?):(?P<line>\d+)")
NOISY = re.compile(r"Graph break from `Tensor\.item\(\)`|Dynamo does not know how to trace")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def frames_compiled() -> int:
    """Frames Dynamo has compiled in this process (each graph break adds a resume frame)."""
    return counters["frames"]["total"]


def short_path(path: str) -> str:
    """A source path as a user reads it: relative to the checkout for the harness's own files."""
    try:
        return str(Path(path).resolve().relative_to(PACKAGE_ROOT))
    except ValueError:
        return path.rpartition("site-packages/")[2]


class _BreakSites(logging.Handler):
    """Collects the file:line of each graph break Dynamo logs, in the order first seen."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.sites: dict[str, None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = BREAK_AT.search(record.getMessage().partition("\n")[0])
        if found:
            self.sites.setdefault(f"{short_path(found['file'])}:{found['line']}")


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISY.search(record.getMessage())


class CompiledForward:
    """`torch.compile(module)` called like the module; `end_step` after each optimizer step
    returns a line to print when there is one (the eager parts at warm-up, a late recompile)."""

    def __init__(self, module: torch.nn.Module):
        self.fn = torch.compile(module)
        self.steps, self.recompiles, self.graphs = 0, 0, 0
        self.frames_before = frames_compiled()
        self.frames_warm: int | None = None
        self.sites = _BreakSites()
        self.quiet = _Quiet()
        self.break_log = logging.getLogger(BREAK_LOGGER)
        self.level_before, self.propagate_before = self.break_log.level, self.break_log.propagate
        self.break_log.addHandler(self.sites)
        self.break_log.setLevel(logging.DEBUG)
        self.break_log.propagate = False  # NOTE: to our handler only, not to torch's console handler
        for name in ("torch._dynamo", "torch._dynamo.variables.tensor"):
            logging.getLogger(name).addFilter(self.quiet)

    def __call__(self, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NOISY.pattern)
            return self.fn(*args, **kwargs)

    def end_step(self) -> str | None:
        self.steps += 1
        frames = frames_compiled()
        if self.steps == WARMUP_STEPS:
            self.frames_warm, self.graphs = frames, frames - self.frames_before
            self.close()  # NOTE: the break sites are known now; later compiles are counted
            return self.eager_line()
        if self.frames_warm is not None and frames > self.frames_warm:
            new, first = frames - self.frames_warm, not self.recompiles
            self.recompiles += new
            self.frames_warm = frames
            if first:
                return (f"train.compile: optimizer step {self.steps} compiled {new} new graph(s) after warm-up "
                        "(a shape or value the graphs had fixed changed; TORCH_LOGS=recompiles names it); "
                        "later ones are counted, not printed")
        return None

    def eager_line(self) -> str | None:
        if not self.sites.sites:
            return None
        sites = list(self.sites.sites)
        shown = ", ".join(sites[:6]) + (f" and {len(sites) - 6} more" if len(sites) > 6 else "")
        return (f"train.compile: {self.graphs} compiled frame(s); these parts ran eager between them (their shapes "
                f"or Python control flow follow the data): {shown}; TORCH_LOGS=graph_breaks says why")

    def summary(self) -> dict:
        """The run record's columns: frames compiled by warm-up (0: an eager run), and after it."""
        self.close()
        return {"compile_graphs": self.graphs or frames_compiled() - self.frames_before,
                "compile_recompiles": self.recompiles}

    def close(self) -> None:
        """Take the handler and filters off Dynamo's loggers (a process may run many runs); idempotent."""
        if self.sites not in self.break_log.handlers:
            return
        self.break_log.removeHandler(self.sites)
        self.break_log.setLevel(self.level_before)
        self.break_log.propagate = self.propagate_before
        for name in ("torch._dynamo", "torch._dynamo.variables.tensor"):
            logging.getLogger(name).removeFilter(self.quiet)
