"""The fitted feature pipeline: impute + scale numerics, one-hot categoricals.

One object serves three callers with identical output: Ray Data batches during
training and evaluation, batch inference, and single requests in a Serve replica.
Fitting is one pass: every block yields mergeable statistics (counts, sums, a
quantile sketch, value counts) that are merged on the driver. The fitted state is
plain JSON (no pickle), stored in the model version.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from raypipe.errors import ArtifactError

SKETCH_POINTS = 1001  # quantile points each block contributes to the median estimate
OTHER = "__other__"


def _as_float(col: Any) -> np.ndarray:
    """A column as float64 with NaN for missing/None; bools become 0/1."""
    s = col if isinstance(col, pd.Series) else pd.Series(col)
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
        s = pd.to_numeric(s, errors="coerce")
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def _as_str(col: Any) -> pd.Series:
    s = col if isinstance(col, pd.Series) else pd.Series(col, dtype=object)
    return s.astype(object).where(s.notna(), None)


class FeaturePipeline:
    """Numeric impute/scale and categorical one-hot, fitted once, applied everywhere.

    Args:
        numeric: numeric (and boolean) input columns.
        categorical: string input columns.
        impute: ``mean``, ``median`` or ``constant`` (uses ``fill_value``).
        fill_value: the constant for ``impute="constant"``.
        scale: ``standard``, ``minmax`` or ``none``.
        max_categories: one-hot columns per categorical column, besides ``__other__``
            (rare and unseen values). A missing value encodes as all zeros.
    """

    def __init__(
        self,
        numeric: list[str],
        categorical: list[str],
        *,
        impute: str = "median",
        fill_value: float = 0.0,
        scale: str = "standard",
        max_categories: int = 32,
    ) -> None:
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.impute = impute
        self.fill_value = fill_value
        self.scale = scale
        self.max_categories = max_categories

    # -- fitting ----------------------------------------------------------------------
    def partial_stats(self, batch: pd.DataFrame) -> dict[str, Any]:
        """Mergeable statistics of one block (see :meth:`fit_from_stats`)."""
        out: dict[str, Any] = {"numeric": {}, "categorical": {}}
        for c in self.numeric:
            x = _as_float(batch[c])
            x = x[np.isfinite(x)]
            sketch = np.quantile(x, np.linspace(0, 1, SKETCH_POINTS)).tolist() if len(x) else []
            out["numeric"][c] = {
                "n": int(len(x)), "sum": float(x.sum()), "sumsq": float((x * x).sum()),
                "min": float(x.min()) if len(x) else None, "max": float(x.max()) if len(x) else None,
                "sketch": sketch,
            }
        for c in self.categorical:
            counts = _as_str(batch[c]).value_counts(dropna=True)
            out["categorical"][c] = {str(k): int(v) for k, v in counts.items()}
        return out

    def fit_from_stats(self, parts: list[dict[str, Any]]) -> "FeaturePipeline":
        """Fit from the statistics of every block."""
        self.impute_values_: dict[str, float] = {}
        self.centers_: dict[str, float] = {}
        self.scales_: dict[str, float] = {}
        for c in self.numeric:
            stats = [p["numeric"][c] for p in parts if p["numeric"][c]["n"]]
            n = sum(s["n"] for s in stats)
            if n == 0:
                raise ValueError(f"numeric column {c!r} has no finite values in the training data; drop it or fix the data")
            mean = sum(s["sum"] for s in stats) / n
            var = max(sum(s["sumsq"] for s in stats) / n - mean * mean, 0.0)
            lo, hi = min(s["min"] for s in stats), max(s["max"] for s in stats)
            fill = {"mean": mean, "median": _merged_median(stats), "constant": self.fill_value}[self.impute]
            self.impute_values_[c] = float(fill)
            if self.scale == "standard":
                center, scale = mean, float(np.sqrt(var))
            elif self.scale == "minmax":
                center, scale = lo, hi - lo
            else:
                center, scale = 0.0, 1.0
            self.centers_[c], self.scales_[c] = float(center), float(scale) if scale > 0 else 1.0
        self.categories_: dict[str, list[str]] = {}
        for c in self.categorical:
            total: dict[str, int] = {}
            for p in parts:
                for k, v in p["categorical"][c].items():
                    total[k] = total.get(k, 0) + v
            ranked = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
            self.categories_[c] = [k for k, _ in ranked[: self.max_categories]]
        self.feature_names_ = list(self.numeric) + [
            f"{c}={v}" for c in self.categorical for v in [*self.categories_[c], OTHER]
        ]
        return self

    def fit(self, data: Any) -> "FeaturePipeline":
        """Fit on a pandas DataFrame or a ``ray.data.Dataset`` (one pass, per-block stats)."""
        if isinstance(data, pd.DataFrame):
            return self.fit_from_stats([self.partial_stats(data)])
        parts_ds = data.map_batches(
            lambda b: {"stats": [json.dumps(self.partial_stats(b))]}, batch_format="pandas", batch_size=None
        )
        return self.fit_from_stats([json.loads(s) for s in parts_ds.to_pandas()["stats"]])

    # -- transforming -----------------------------------------------------------------
    @property
    def n_features(self) -> int:
        self._check_fitted()
        return len(self.feature_names_)

    def transform(self, batch: pd.DataFrame | dict[str, Any]) -> np.ndarray:
        """The feature matrix (float32, one row per input row) of a batch."""
        self._check_fitted()
        if isinstance(batch, dict):
            batch = pd.DataFrame(batch)
        n = len(batch)
        out = np.zeros((n, self.n_features), dtype=np.float32)
        for j, c in enumerate(self.numeric):
            x = _as_float(batch[c])
            x = np.where(np.isfinite(x), x, self.impute_values_[c])
            out[:, j] = (x - self.centers_[c]) / self.scales_[c]
        j = len(self.numeric)
        for c in self.categorical:
            cats = self.categories_[c]
            s = _as_str(batch[c])
            codes = pd.Categorical(s, categories=cats).codes.astype(np.int64)
            codes = np.where((codes < 0) & s.notna().to_numpy(), len(cats), codes)  # rare/unseen -> other
            rows = np.nonzero(codes >= 0)[0]
            out[rows, j + codes[rows]] = 1.0
            j += len(cats) + 1
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_"):
            raise RuntimeError("FeaturePipeline must be fitted (fit or from_dict) before transform")

    # -- serialisation (JSON, no pickle) --------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": "raypipe.features/1",
            "params": {
                "numeric": self.numeric, "categorical": self.categorical, "impute": self.impute,
                "fill_value": self.fill_value, "scale": self.scale, "max_categories": self.max_categories,
            },
            "state": {
                "impute_values_": self.impute_values_, "centers_": self.centers_, "scales_": self.scales_,
                "categories_": self.categories_, "feature_names_": self.feature_names_,
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeaturePipeline":
        if d.get("format") != "raypipe.features/1":
            raise ArtifactError(f"not a raypipe feature pipeline (format {d.get('format')!r})")
        obj = cls(**d["params"])
        for k, v in d["state"].items():
            setattr(obj, k, v)
        return obj


def _merged_median(stats: list[dict[str, Any]]) -> float:
    """Median from per-block quantile sketches, each weighted by its block's row count."""
    values = np.concatenate([np.asarray(s["sketch"]) for s in stats])
    weights = np.concatenate([np.full(len(s["sketch"]), s["n"] / len(s["sketch"])) for s in stats])
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])
