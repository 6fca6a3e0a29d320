"""Numeric columns: impute, clip, log, scale (in that order), fitted in one pass.

Every block contributes, per column, the count, sum, sum of squares, min, max and a
quantile sketch (``SKETCH_POINTS`` evenly spaced quantiles) of its finite values,
plus the sum and sum of squares of ``sign(x) * log1p(|x|)`` for the ``log`` columns.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from raypipe.columns import as_float, merge_sketches, quantile_sketch, record_numbers, sketch_quantiles
from raypipe.model.features.base import Batch, Operator, column, num_rows

SKETCH_POINTS = 1001  # quantile points each block contributes to the quantile estimates
IMPUTE = ("mean", "median", "constant")
SCALE = ("standard", "minmax", "robust", "none")


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: monotone, defined for every real x."""
    return np.sign(x) * np.log1p(np.abs(x))


class NumericTransformer(Operator):
    """Impute → clip → log → scale numeric (and boolean) columns.

    Args:
        columns: input columns; values are coerced to float (bools to 0/1, junk to NaN).
        impute: the value for missing/NaN/inf: training ``mean``, ``median`` (from the
            merged quantile sketch, approximate across blocks) or ``constant``.
        fill_value: the constant for ``impute="constant"``.
        clip: quantiles ``(lo, hi)`` of the training values to clip at, or None.
        log: columns transformed with ``sign(x) * log1p(|x|)`` after clipping.
        scale: ``standard`` (mean/std), ``minmax``, ``robust`` (median/IQR) or ``none``.

    The scaling statistics describe the values after clip and log. Since both are
    monotone, the quantile-based ones (min/max, median, IQR) are those transforms of
    the sketch quantiles (min/max exact). ``standard`` uses the exact per-block
    moments of the raw values (no clip, no log) or of the log-transformed values
    (log, no clip: that transform needs no fitted state); with ``clip`` the bounds
    are only known after the merge, so the moments are then computed from the merged
    sketch, each point weighted by its block's rows / points: an approximation, good
    to about the sketch resolution. Statistics ignore missing values; an imputed value
    goes through clip, log and scale like any other.
    """

    kind = "numeric"
    state_keys = ("impute_values_", "clip_", "centers_", "scales_")

    def __init__(self, columns: Sequence[str], *, impute: str = "median", fill_value: float = 0.0,
                 clip: Sequence[float] | None = None, log: Sequence[str] = (), scale: str = "standard") -> None:
        self.columns = list(columns)
        self.impute, self.fill_value, self.scale = impute, float(fill_value), scale
        self.clip = (float(clip[0]), float(clip[1])) if clip is not None else None
        self.log = [c for c in self.columns if c in set(log)]
        if impute not in IMPUTE:
            raise ValueError(f"impute must be one of {IMPUTE}, not {impute!r}")
        if scale not in SCALE:
            raise ValueError(f"scale must be one of {SCALE}, not {scale!r}")
        if self.clip is not None and not 0.0 <= self.clip[0] < self.clip[1] <= 1.0:
            raise ValueError(f"clip takes two quantiles lo < hi in [0, 1], not {list(self.clip)}")
        unknown = sorted(set(log) - set(self.columns))
        if unknown:
            raise ValueError(f"log columns {unknown} are not numeric feature columns {self.columns}")

    def get_params(self) -> dict[str, Any]:
        return {"columns": self.columns, "impute": self.impute, "fill_value": self.fill_value,
                "clip": list(self.clip) if self.clip else None, "log": self.log, "scale": self.scale}

    # -- fitting ----------------------------------------------------------------------
    def partial_stats(self, batch: Batch) -> dict[str, Any]:
        return {c: self._column_stats(c, as_float(column(batch, c))) for c in self.columns}

    def _column_stats(self, c: str, x: np.ndarray) -> dict[str, Any]:
        x = x[np.isfinite(x)]
        n = len(x)
        out = {
            "n": n, "sum": float(x.sum()), "sumsq": float((x * x).sum()),
            "min": float(x.min()) if n else None, "max": float(x.max()) if n else None,
            "sketch": quantile_sketch(x, SKETCH_POINTS).tolist() if n else [],
        }
        if c in self.log:
            t = signed_log1p(x)
            out["log_sum"], out["log_sumsq"] = float(t.sum()), float((t * t).sum())
        return out

    def _fit(self, parts: list[dict[str, Any]]) -> None:
        self.impute_values_: dict[str, float] = {}
        self.clip_: dict[str, list[float]] = {}
        self.centers_: dict[str, float] = {}
        self.scales_: dict[str, float] = {}
        for c in self.columns:
            stats = [p[c] for p in parts if p[c]["n"]]
            if not stats:
                raise ValueError(f"numeric column {c!r} has no finite values in the training data; drop it or fix the data")
            self.impute_values_[c] = self._fill_value(stats)
            if self.clip is not None:
                self.clip_[c] = [float(v) for v in merged_quantiles(stats, list(self.clip))]
            center, scale = self._scaling(c, stats)
            self.centers_[c], self.scales_[c] = float(center), float(scale) if scale > 0 and np.isfinite(scale) else 1.0

    def _fill_value(self, stats: list[dict[str, Any]]) -> float:
        if self.impute == "mean":
            return float(_moments(stats, "sum", "sumsq")[0])
        if self.impute == "median":
            return float(merged_quantiles(stats, [0.5])[0])
        return self.fill_value

    def _scaling(self, c: str, stats: list[dict[str, Any]]) -> tuple[float, float]:
        """(center, scale) of the values after clip and log."""
        def g(v: Any) -> np.ndarray:
            return self._clip_log(c, np.asarray(v, dtype=np.float64))

        if self.scale == "minmax":
            lo, hi = g([min(s["min"] for s in stats), max(s["max"] for s in stats)])
            return lo, hi - lo
        if self.scale == "robust":
            q25, q50, q75 = g(merged_quantiles(stats, [0.25, 0.5, 0.75]))
            return q50, q75 - q25
        if self.scale == "standard":
            if self.clip is not None:
                mean, var = _sketch_moments(stats, g)
            elif c in self.log:
                mean, var = _moments(stats, "log_sum", "log_sumsq")
            else:
                mean, var = _moments(stats, "sum", "sumsq")
            return mean, float(np.sqrt(var))
        return 0.0, 1.0

    # -- transforming -----------------------------------------------------------------
    def _clip_log(self, c: str, x: np.ndarray) -> np.ndarray:
        if c in self.clip_:
            x = np.clip(x, *self.clip_[c])
        return signed_log1p(x) if c in self.log else x

    def transform(self, batch: Batch) -> np.ndarray:
        self.check_fitted()
        out = np.empty((num_rows(batch), len(self.columns)), dtype=np.float32)
        for j, c in enumerate(self.columns):
            x = as_float(column(batch, c))
            x = self._clip_log(c, np.where(np.isfinite(x), x, self.impute_values_[c]))
            out[:, j] = (x - self.centers_[c]) / self.scales_[c]
        return out

    def transform_records(self, rows: list[dict[str, Any]]) -> np.ndarray | None:
        cols = {c: record_numbers(rows, c) for c in self.columns}
        return None if any(v is None for v in cols.values()) else self.transform(cols)

    @property
    def feature_names(self) -> list[str]:
        return list(self.columns)


def _moments(stats: list[dict[str, Any]], s1: str, s2: str) -> tuple[float, float]:
    """(mean, population variance) from merged sums."""
    n = sum(s["n"] for s in stats)
    mean = sum(s[s1] for s in stats) / n
    return mean, max(sum(s[s2] for s in stats) / n - mean * mean, 0.0)


def _weighted_sketch(stats: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return merge_sketches((s["n"], s["sketch"]) for s in stats)


def merged_quantiles(stats: list[dict[str, Any]], qs: Sequence[float]) -> np.ndarray:
    """Quantiles from the per-block sketches (:func:`raypipe.columns.sketch_quantiles`)."""
    return sketch_quantiles(*_weighted_sketch(stats), qs)


def _sketch_moments(stats: list[dict[str, Any]], g: Any) -> tuple[float, float]:
    """(mean, variance) of ``g(x)`` estimated from the weighted merged sketch."""
    values, weights = _weighted_sketch(stats)
    t = g(values)
    mean = float(np.sum(weights * t) / weights.sum())
    return mean, float(np.sum(weights * (t - mean) ** 2) / weights.sum())
