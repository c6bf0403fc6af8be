"""Load metrics (docs/methods.md, "Metrics"): pure functions of per-expert counts.

Counts are tensors or arrays of shape [E] (one token set) or [L, E] (one row per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.routing.balancing import expert_capacity



@dataclass(kw_only=True)
class MetricsConfig:
    # expert-parallel sizes N to simulate: experts placed contiguously, n/N per device (sizes that
    # do not divide model.num_experts are skipped)
    ep_sizes: list[int] = field(default_factory=lambda: [4, 8])
    # capacity factors c whose drop rate (what a dropping system would lose) every run reports
    capacity_factors: list[float] = field(default_factory=lambda: [1.0, 1.25])

    def __post_init__(self) -> None:
        if not isinstance(self.ep_sizes, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                                          for n in self.ep_sizes):
            raise ValueError(f"metrics.ep_sizes = {self.ep_sizes!r} must be a list of whole numbers >= 1")
        if not isinstance(self.capacity_factors, list) or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c < math.inf
                for c in self.capacity_factors):
            raise ValueError(f"metrics.capacity_factors = {self.capacity_factors!r} must be a list of finite "
                             "numbers > 0")
        self.capacity_factors = [float(c) for c in self.capacity_factors]

    def series_columns(self, num_experts: int) -> list[str]:
        """The columns of the numbered metric series (ep{N}_..., drop_frac_cf{N}) a run of `num_experts`
        experts records under these settings: `cost_metrics` makes exactly these."""
        sizes = [n for n in self.ep_sizes if num_experts % n == 0]
        return ([f"ep{n}_{what}" for n in sizes for what in ("imbalance", "efficiency")]
                + [f"drop_frac_cf{c}" for c in self.capacity_factors])


def ep_balance(counts_LE: torch.Tensor, ep_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulated expert parallelism (docs/methods.md, "Metrics"): experts placed
    contiguously on `ep_size` devices; per layer the busiest device's load over the mean, minus 1
    (imbalance), and mean over max (efficiency: the share of expert compute a synchronous step
    uses). Layer means, as tensors (no host sync)."""
    num_layers, num_experts = counts_LE.shape
    loads_LN = counts_LE.float().view(num_layers, ep_size, num_experts // ep_size).sum(dim=-1)
    mean_L, max_L = loads_LN.mean(dim=-1), loads_LN.max(dim=-1).values.clamp_min(1e-12)
    return (max_L / mean_L.clamp_min(1e-12) - 1).mean(), (mean_L / max_L).mean()


def capacity_drop_frac(counts_LE: torch.Tensor, num_tokens: int, top_k: int, factor: float) -> torch.Tensor:
    """Fraction of assignments a capacity-`factor` system would drop: sum_i max(0, c_i - C) /
    sum_i c_i with C = ceil(factor T k / n), per layer, layer mean."""
    capacity = expert_capacity(factor, num_tokens, top_k, counts_LE.shape[-1])
    counts_LE = counts_LE.float()
    return ((counts_LE - capacity).clamp_min(0).sum(dim=-1) / counts_LE.sum(dim=-1).clamp_min(1e-12)).mean()


def cost_metrics(micro_LE: torch.Tensor, num_tokens: int, top_k: int, cfg: MetricsConfig) -> dict[str, torch.Tensor]:
    """What one micro-batch's load pattern would cost: ep{N}_imbalance / ep{N}_efficiency and
    drop_frac_cf{c}, each a 0-d tensor."""
    out = {}
    for size in cfg.ep_sizes:
        if micro_LE.shape[-1] % size == 0:
            out[f"ep{size}_imbalance"], out[f"ep{size}_efficiency"] = ep_balance(micro_LE, size)
    for factor in cfg.capacity_factors:
        out[f"drop_frac_cf{factor}"] = capacity_drop_frac(micro_LE, num_tokens, top_k, factor)
    return out


def _as_array(counts) -> np.ndarray:
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().float().cpu().numpy()
    return np.asarray(counts, dtype=np.float64)


def maxvio_of(counts_E: torch.Tensor) -> torch.Tensor:
    """MaxVio = max_i c_i / mean_i c_i - 1 = n max_i F_i - 1 over the last axis (per layer for
    [L, E]), 0 where nothing was routed; a tensor on the counts' device (no host sync). The one
    MaxVio formula: training steps, micro-batches and evaluations all use it."""
    mean = counts_E.mean(dim=-1)
    return torch.where(mean > 0, counts_E.max(dim=-1).values / mean.clamp_min(1e-12) - 1, torch.zeros_like(mean))


def maxvio(counts) -> float | np.ndarray:
    """`maxvio_of` for host-side counts (an array, a list or a tensor), in float64."""
    out = maxvio_of(torch.from_numpy(_as_array(counts))).numpy()
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


def specialisation(joint_LED) -> float:
    """Normalised mutual information between an assignment's expert and its token's domain, from
    [L, E, D] assignment counts: I(expert; domain) / mean(H(expert), H(domain)) per layer (0: the
    expert says nothing of the domain, 1: it determines it), layer mean. NaN with < 2 domains."""
    joint = _as_array(joint_LED)
    if joint.ndim == 2:
        joint = joint[None]
    values = []
    for table in joint:
        table = table[:, table.sum(axis=0) > 0]
        total = table.sum()
        if table.shape[1] < 2 or total == 0:
            return math.nan
        p = table / total
        pe, pd = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
        nz = p > 0
        mutual = float((p[nz] * np.log(p[nz] / (pe @ pd)[nz])).sum())
        entropy = [float(-(q[q > 0] * np.log(q[q > 0])).sum()) for q in (pe, pd)]
        values.append(mutual / max(sum(entropy) / 2, 1e-12))
    return float(np.mean(values))


def k_loss_correlation(k_LT, loss_T, bins: int = 10) -> tuple[float, list[float]]:
    """Dynamic k against difficulty: Spearman's rho between a token's number of experts and its
    loss per layer (layer mean; NaN where k does not vary), and the layer-mean k of each loss
    decile (easiest first)."""
    from scipy.stats import spearmanr

    k, loss = _as_array(k_LT), _as_array(loss_T)
    rhos = [spearmanr(row, loss).statistic if row.std() > 0 else math.nan for row in k]
    rho = float(np.nanmean(rhos)) if not all(map(math.isnan, rhos)) else math.nan
    decile = np.minimum((np.argsort(np.argsort(loss, kind="stable")) * bins) // len(loss), bins - 1)
    mean_k = k.mean(axis=0)
    return rho, [float(mean_k[decile == b].mean()) for b in range(bins)]


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
