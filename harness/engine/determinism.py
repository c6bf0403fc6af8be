"""`MOE_HARNESS_DETERMINISTIC=1`: deterministic algorithms for every run of the process.

On CPU a run is bit-identical to its rerun and to a resumed run without it. On CUDA some kernels
accumulate with atomics in whatever order the threads reach them (index_add_, index_select's
backward, scatter_add_), so a rerun or a resumed run ends equal within floating-point rounding,
not bit for bit; this switch makes PyTorch use deterministic kernels (slower) and raise on an op
that has none, and sets cuBLAS's workspace as its docs ask (`CUBLAS_WORKSPACE_CONFIG=:4096:8`).
An environment variable, not a config key: it changes how a run computes, not what it computes,
so run ids stay the same; `--jobs` workers and torchrun ranks inherit it. Each run row records it.
"""

from __future__ import annotations

import os

import torch

ENV = "MOE_HARNESS_DETERMINISTIC"


def requested() -> bool:
    value = os.environ.get(ENV, "0").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"{ENV}={value!r}: use 1 (deterministic algorithms) or 0 (the default)")
    return value == "1"


def apply() -> None:
    """Turn deterministic algorithms on where the environment asks; a bad value raises (exit 2)."""
    if requested():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # NOTE: before the first cuBLAS handle
        torch.use_deterministic_algorithms(True)
