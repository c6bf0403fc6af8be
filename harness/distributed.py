"""One run on many devices: torchrun data parallel, on PyTorch's own distributed package.

    torchrun --standalone --nproc_per_node 8 $(which moe-harness) run SUITE.toml
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        $(which moe-harness) run SUITE.toml

Every rank runs every run of the suite together: one device per local rank, the model in
DistributedDataParallel, NCCL on CUDA and Gloo on CPU. Each optimizer step draws one global
batch of world x micro-batch sequences from the run's data generator (the same on every
rank) and each rank takes its slice, so N ranks x micro-batch B see exactly the data of one
process x N B. Expert counts are summed over ranks before every bias update and for the
global-batch aux loss, so every rank holds the same bias. Only rank 0 writes and prints.
"""

from __future__ import annotations

import gc
import os
import time

import torch
import torch.distributed as dist

BACKENDS = ("auto", "nccl", "gloo")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str, backend: str = "auto") -> None:
    """Join the process group torchrun describes (a no-op outside torchrun); ValueError on a
    setup that cannot work, naming what to change."""
    if not launched_by_torchrun() or is_distributed():
        return
    if backend not in BACKENDS:
        raise ValueError(f"--dist-backend = {backend!r}; choose one of {list(BACKENDS)}")
    world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend if backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    if backend == "nccl" and device != "cuda":
        raise ValueError(f"--dist-backend nccl needs CUDA devices, but the runs use device {device!r}; "
                         "use --dist-backend gloo (or auto) on CPU")
    if device == "cuda":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if local_world > torch.cuda.device_count():
            raise ValueError(f"torchrun started {local_world} processes on this node but it has "
                             f"{torch.cuda.device_count()} CUDA device(s); use --nproc_per_node <= "
                             f"{torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)


def device_for(device: str) -> torch.device:
    """The device this rank trains on: its local GPU under torchrun on CUDA."""
    if device == "cuda" and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def all_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (identity in one process)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def all_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor (a copy; identity in one process)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def all_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, concatenated in rank order (equal shapes on every rank)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast_object(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's value of a picklable object, in rank order."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def failures(error: BaseException | None) -> list[str]:
    """Every rank's failure of the run just ended, the first to fail first ("Type: message (rank R)");
    [] where none failed. A rank that failed aborts the process group, so the others fail too, in
    the collective they wait in or in this one, instead of hanging there; then every rank joins a
    fresh group on the same store for the next run. In one process: its own error."""
    if not is_distributed():
        return [] if error is None else [f"{type(error).__name__}: {error}"]
    failed_at = time.time() if error is not None else None
    if error is None:
        box = [None] * world_size()
        try:  # NOTE: every rank meets here after each run; a rank that failed has aborted the group
            dist.all_gather_object(box, None)
            return []
        except Exception as err:  # noqa: BLE001 - another rank failed and aborted the group
            error, failed_at = err, time.time()
    text = f"{type(error).__name__}: {error}"
    # NOTE: the failed run's frames hold its DDP model, and so the process group: a Gloo group closes
    # its connections, which is what wakes a waiting peer, only once nothing holds it
    error.__traceback__ = None
    del error
    gc.collect()
    _rejoin()
    box = [None] * world_size()
    dist.all_gather_object(box, (failed_at, rank(), text))
    return [f"{text} (rank {r})" for _, r, text in sorted(b for b in box if b[0] is not None)]


_rejoins = [0]


def _rejoin() -> None:
    """Abort this rank's process group (a peer waiting in one of its collectives then raises at once)
    and join a new one under a prefix of its own: under the old keys a rank that rejoined first would
    reconnect to its peer's old group, which would then wait on."""
    c10d = dist.distributed_c10d
    backend, me, world = dist.get_backend(), rank(), world_size()
    store = c10d._get_default_store()
    try:
        abort = getattr(c10d, "_abort_process_group", None)
        abort() if abort else dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a group a peer already broke
        pass
    if dist.is_initialized():
        dist.destroy_process_group()
    _rejoins[0] += 1
    dist.init_process_group(backend, store=dist.PrefixStore(f"moe_harness_rejoin_{_rejoins[0]}", store), rank=me,
                            world_size=world)
