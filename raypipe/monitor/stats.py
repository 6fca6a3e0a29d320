"""Drift statistics on binned counts: effect sizes, not p-values.

Every statistic here takes the reference's counts and a window's counts over the same fixed
bins (numeric: the reference's quantile bins; categorical: its categories plus one bucket for
everything else), so it is as cheap for 100M rows as for 1,000 and the counts of many blocks
or windows simply add up. A p-value test on a big window flags every harmless wobble; an
effect size with a threshold (PSI 0.2: the conventional "significant shift") does not.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon as _scipy_js
from scipy.stats import wasserstein_distance

EPS = 1e-4  # an empty bin's share: PSI's log ratio stays finite (a common choice, as Evidently's 0.0001)


def _shares(counts: Sequence[float]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else np.full(len(c), 1.0 / max(len(c), 1))


def psi(reference: Sequence[float], window: Sequence[float], eps: float = EPS) -> float:
    """Population stability index: sum over bins of (q - p) * ln(q / p), shares floored at ``eps``."""
    p, q = np.maximum(_shares(reference), eps), np.maximum(_shares(window), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(reference: Sequence[float], window: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, so in [0, 1]) between the two binned distributions (scipy)."""
    return float(_scipy_js(_shares(reference), _shares(window), base=2.0))


def wasserstein_binned(ref_means: Sequence[float | None], ref_counts: Sequence[float],
                       win_means: Sequence[float | None], win_counts: Sequence[float], scale: float | None) -> float:
    """Wasserstein-1 distance between the binned distributions, divided by the reference's std (``scale``).

    Each bin is one point at its mean value (the reference's from the profile sketch, the
    window's from its own per-bin sums), weighted by its count: scipy's
    ``wasserstein_distance(u_values, v_values, u_weights, v_weights)``. Exact when every value
    of a bin is its mean; otherwise it misses the movement inside a bin, at most a bin's width
    per row. The outer bins are open, so a shift beyond the reference's range still moves the
    window's outer mean and is measured in full.
    """
    def points(means: Sequence[float | None], counts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        keep = [(m, c) for m, c in zip(means, counts) if m is not None and c > 0]
        return np.array([m for m, _ in keep], dtype=np.float64), np.array([c for _, c in keep], dtype=np.float64)

    (u, uw), (v, vw) = points(ref_means, ref_counts), points(win_means, win_counts)
    if not len(u) or not len(v):
        return 0.0
    d = float(wasserstein_distance(u, v, uw, vw))
    return d / scale if scale else d

