"""Load metrics (ROUTING.md, "Load metrics"): pure functions of per-expert counts.

Counts are tensors or arrays of shape [E] (one token set) or [L, E] (one row per layer).
"""

from __future__ import annotations

import numpy as np
import torch


def _as_array(counts) -> np.ndarray:
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().float().cpu().numpy()
    return np.asarray(counts, dtype=np.float64)


def maxvio(counts) -> float | np.ndarray:
    """(max_i c_i - mean_i c_i) / mean_i c_i = n max_i F_i - 1; per layer for [L, E] input."""
    c = _as_array(counts)
    mean = c.mean(axis=-1)
    out = np.where(mean > 0, (c.max(axis=-1) - mean) / np.where(mean > 0, mean, 1.0), 0.0)
    return float(out) if out.ndim == 0 else out


def coefficient_of_variation(counts) -> float | np.ndarray:
    c = _as_array(counts)
    mean = c.mean(axis=-1)
    out = np.where(mean > 0, c.std(axis=-1) / np.where(mean > 0, mean, 1.0), 0.0)
    return float(out) if out.ndim == 0 else out


def dead_experts(counts, threshold: float = 0.01) -> float | np.ndarray:
    """Fraction of experts whose load is below `threshold` times the mean load."""
    c = _as_array(counts)
    out = (c < threshold * c.mean(axis=-1, keepdims=True)).mean(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def normalized_entropy(counts) -> float | np.ndarray:
    """Entropy of F divided by log n: 1 is uniform, 0 is total collapse."""
    c = _as_array(counts)
    frac = c / np.clip(c.sum(axis=-1, keepdims=True), 1e-12, None)
    ent = -(np.where(frac > 0, frac * np.log(np.where(frac > 0, frac, 1.0)), 0.0)).sum(axis=-1)
    out = ent / np.log(c.shape[-1])
    return float(out) if np.ndim(out) == 0 else out


def experts_per_token_summary(num_selected_T) -> dict[str, float]:
    """Mean, quantiles and the fraction with none, of the number of experts each token used."""
    k = _as_array(num_selected_T)
    q10, q50, q90 = np.quantile(k, [0.1, 0.5, 0.9]) if k.size else (0.0, 0.0, 0.0)
    return {
        "mean_k": float(k.mean()) if k.size else 0.0,
        "k_p10": float(q10), "k_p50": float(q50), "k_p90": float(q90),
        "k_zero_frac": float((k == 0).mean()) if k.size else 0.0,
    }


def load_summary(counts_LE) -> dict[str, float]:
    """Layer-averaged metrics of one token set, plus the worst layer's MaxVio."""
    vio_L = np.atleast_1d(maxvio(counts_LE))
    return {
        "maxvio": float(vio_L.mean()),
        "maxvio_worst": float(vio_L.max()),
        "cv": float(np.mean(coefficient_of_variation(counts_LE))),
        "dead_experts": float(np.mean(dead_experts(counts_LE))),
        "entropy": float(np.mean(normalized_entropy(counts_LE))),
    }
