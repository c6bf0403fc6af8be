"""Run checkpoints: a preempted run resumes where it stopped and ends as if never stopped.

`OUT/<suite>/checkpoints/<run_id>.pt` holds everything the next step depends on: the model
(with the router buffers: bias, dynamic-k state), the optimizer, every RNG and the data
generator, the step reached (the learning-rate schedule is a function of it), and the step
and load rows so far. It is written to a temporary name and renamed, by rank 0 only, every
`train.checkpoint_every` steps; it is deleted when the run completes unless
`train.keep_checkpoint`. A checkpoint names its run_id: one of another config is refused, and
one that cannot be read is reported and ignored (the run starts over).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from harness import distributed
from harness.tables import write_atomic


FORMAT = 2  # the layout of a checkpoint's dict: each part's state_dict (2: issue 18)


class CheckpointMismatch(ValueError):
    """A checkpoint file that names another run: bad input (exit 2), never loaded."""


def path_for(folder: Path, run_id: str) -> Path:
    return Path(folder) / f"{run_id}.pt"


def due(step: int, train_cfg) -> bool:
    """Whether a checkpoint is saved after `step` (every checkpoint_every steps, never after the last)."""
    every = train_cfg.checkpoint_every
    return bool(every) and step % every == 0 and step < train_cfg.steps


def save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load(path: Path, run_id: str) -> dict | None:
    """The checkpoint at `path`, or None if there is none or it cannot be read (said on stderr).
    Its tensors are mapped from the file, not read into memory: a rank copies each to its device."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file: start over, say so
        print(f"moe-harness: ignoring unreadable checkpoint {path} ({type(err).__name__}: {err}); "
              "the run starts from step 0", file=sys.stderr)
        return None
    if state.get("format") != FORMAT:
        print(f"moe-harness: ignoring checkpoint {path}: written by another version of moe-harness (format "
              f"{state.get('format', 1)}, this one reads {FORMAT}); the run starts from step 0", file=sys.stderr)
        return None
    if state.get("run_id") != run_id:
        raise CheckpointMismatch(f"checkpoint {path} belongs to run {state.get('run_id')!r}, not {run_id!r} (another config); "
                         "move it away or delete it")
    return state


def _file_id(path: Path) -> tuple[int, int] | None:
    with contextlib.suppress(OSError):
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    return None


def load_shared(path: Path, run_id: str) -> dict | None:
    """Rank 0's checkpoint, on every rank: all ranks resume from the same step. Where every rank sees
    rank 0's file (a shared filesystem), each reads it itself; only where some rank does not is the
    state sent from rank 0 (one pickled object of the whole checkpoint, said on stderr). A mismatch
    stops every rank, not only rank 0."""
    if not distributed.is_distributed():
        return load(path, run_id)
    state, error, seen = None, None, _file_id(path)
    if distributed.rank() == 0:
        try:
            state = load(path, run_id)
        except CheckpointMismatch as err:
            error = str(err)
    step, seen_by_0, error = distributed.broadcast_object((state and state["step"], seen, error))
    if error:
        raise CheckpointMismatch(error)
    if step is None:
        return None
    if all(distributed.all_gather_object(seen == seen_by_0)):
        state = state if distributed.rank() == 0 else load(path, run_id)
        if not all(distributed.all_gather_object(state is not None and state["step"] == step)):
            raise RuntimeError(f"checkpoint {path} changed or could not be read on some rank while resuming")
        return state
    if distributed.rank() == 0:
        print(f"moe-harness: some ranks do not see {path}; sending the checkpoint from rank 0", file=sys.stderr)
    return distributed.broadcast_object(state)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def rng_state(data_gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, data_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
