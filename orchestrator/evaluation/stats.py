"""Means and percentile-bootstrap confidence intervals.

A metric is a list of per-example values, optionally with per-example weights
(IFEval's instruction-level accuracy weighs each prompt by its number of
instructions, so the mean is ``sum(passed) / sum(instructions)``). ``None``
values (a metric that does not apply to an example) are dropped.

Across seeds (``hbat compare``) the point estimate is the mean over seeds of
each seed's mean, and the interval comes from a two-level bootstrap: resample
seeds with replacement, then examples within each drawn seed. It therefore
covers both training-seed noise and eval-set sampling noise; with a single
seed it reduces to the ordinary example bootstrap. Differences between two
methods (contrasts) are paired: the same seeds and the same example indices
are drawn for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Metric", "summarize", "bootstrap_ci", "seed_bootstrap", "paired_seed_bootstrap"]

N_BOOT = 2000
ALPHA = 0.05


@dataclass
class Metric:
    """Per-example values (``None`` = not applicable) and optional weights."""

    values: list[float | None]
    weights: list[float] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        w = self.weights if self.weights is not None else [1.0] * len(self.values)
        keep = [i for i, v in enumerate(self.values) if v is not None and w[i] > 0]
        return (np.asarray([float(self.values[i]) for i in keep], dtype=np.float64),
                np.asarray([float(w[i]) for i in keep], dtype=np.float64))


def _wmean(v: np.ndarray, w: np.ndarray) -> float:
    return float((v * w).sum() / w.sum()) if w.sum() > 0 else float("nan")


def _resampled_means(v: np.ndarray, w: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Weighted mean of each row of resample indices ``idx`` [B, n]."""
    ws = w[idx]
    return (v[idx] * ws).sum(1) / np.maximum(ws.sum(1), 1e-300)


def bootstrap_ci(v: np.ndarray, w: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                 alpha: float = ALPHA) -> tuple[float, float]:
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = _resampled_means(v, w, rng.integers(0, len(v), size=(n_boot, len(v))))
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def summarize(metric: Metric, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """mean, 95% bootstrap CI, std, n (and the weight total when weighted)."""
    v, w = metric.arrays()
    out = {"mean": _wmean(v, w), "n": int(len(v))}
    out["ci_low"], out["ci_high"] = bootstrap_ci(v, w, n_boot, seed)
    out["std"] = float(np.sqrt(_wmean((v - out["mean"]) ** 2, w))) if len(v) else float("nan")
    if metric.weights is not None:
        out["weight"] = float(w.sum())
    return out


def _per_seed_draw(rng, groups: list[tuple[np.ndarray, np.ndarray]], seed_idx: np.ndarray) -> np.ndarray:
    """For each bootstrap row, the mean over its drawn seeds of a resampled per-seed mean."""
    n_boot, k = seed_idx.shape
    total = np.zeros(n_boot)
    for j in range(k):
        for g, (v, w) in enumerate(groups):
            rows = np.nonzero(seed_idx[:, j] == g)[0]
            if len(rows) == 0:
                continue
            idx = rng.integers(0, len(v), size=(len(rows), len(v)))
            total[rows] += _resampled_means(v, w, idx)
    return total / k


def seed_bootstrap(groups: list[Metric], n_boot: int = N_BOOT, seed: int = 0, alpha: float = ALPHA) -> dict:
    """Mean over seeds and the two-level bootstrap CI (see module doc)."""
    arrays = [m.arrays() for m in groups]
    arrays = [(v, w) for v, w in arrays if len(v)]
    if not arrays:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "seed_std": float("nan"),
                "seeds": [], "n": 0}
    per_seed = [_wmean(v, w) for v, w in arrays]
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, len(arrays), size=(n_boot, len(arrays)))
    means = _per_seed_draw(rng, arrays, seed_idx)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(np.mean(per_seed)), "ci_low": float(lo), "ci_high": float(hi),
            "seed_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan"),
            "seeds": per_seed, "n": int(sum(len(v) for v, _ in arrays))}


def paired_seed_bootstrap(a: list[Metric], b: list[Metric], n_boot: int = N_BOOT, seed: int = 0,
                          alpha: float = ALPHA) -> dict:
    """Difference ``mean(a) - mean(b)`` over paired seeds and examples.

    ``a[i]`` and ``b[i]`` are the same seed's per-example metrics on the same
    eval set (same order); examples missing in either are dropped from both.
    """
    pairs = []
    for ma, mb in zip(a, b):
        wa = ma.weights if ma.weights is not None else [1.0] * len(ma.values)
        wb = mb.weights if mb.weights is not None else [1.0] * len(mb.values)
        keep = [i for i in range(min(len(ma.values), len(mb.values)))
                if ma.values[i] is not None and mb.values[i] is not None and wa[i] > 0 and wb[i] > 0]
        if keep:
            pairs.append(tuple(np.asarray([float(x[i]) for i in keep]) for x in (ma.values, wa, mb.values, wb)))
    if not pairs:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "seed_diffs": [],
                "seed_std": float("nan")}
    seed_diffs = [_wmean(va, wa) - _wmean(vb, wb) for va, wa, vb, wb in pairs]
    rng = np.random.default_rng(seed)
    k = len(pairs)
    seed_idx = rng.integers(0, k, size=(n_boot, k))
    total = np.zeros(n_boot)
    for j in range(k):
        for g, (va, wa, vb, wb) in enumerate(pairs):
            rows = np.nonzero(seed_idx[:, j] == g)[0]
            if len(rows) == 0:
                continue
            idx = rng.integers(0, len(va), size=(len(rows), len(va)))
            total[rows] += _resampled_means(va, wa, idx) - _resampled_means(vb, wb, idx)
    lo, hi = np.quantile(total / k, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(np.mean(seed_diffs)), "ci_low": float(lo), "ci_high": float(hi),
            "seed_diffs": seed_diffs,
            "seed_std": float(np.std(seed_diffs, ddof=1)) if k > 1 else float("nan")}
