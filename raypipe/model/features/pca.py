"""PCA on the matrix the other feature operators output, fitted from mergeable sums.

Its input is the fitted operators' output, so fitting it takes a second pass over the
data (after the operators' one pass). Every block contributes its row count, column
sums and centred scatter matrix (float64); they merge exactly (Chan et al.'s parallel
update), giving the covariance, whose ``numpy.linalg.eigh`` yields the components.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from raypipe.model.features.base import Operator


class PcaReducer(Operator):
    """Project onto the top ``components`` principal axes (optionally whitened).

    Args:
        components: number of components kept.
        whiten: divide each projection by the square root of its explained variance.

    The covariance uses ``n - 1`` like :class:`sklearn.decomposition.PCA`, so the
    explained variances agree with it; every component's largest-magnitude loading
    is made positive (components equal sklearn's up to sign).
    """

    kind = "pca"
    state_keys = ("mean_", "components_", "explained_variance_", "explained_variance_ratio_", "n_samples_")

    def __init__(self, components: int, *, whiten: bool = False) -> None:
        if int(components) < 1:
            raise ValueError(f"pca components must be >= 1, not {components}")
        self.components, self.whiten = int(components), bool(whiten)

    def get_params(self) -> dict[str, Any]:
        return {"components": self.components, "whiten": self.whiten}

    # -- fitting ----------------------------------------------------------------------
    def partial_stats(self, batch: np.ndarray) -> dict[str, Any]:
        """Rows, column sums and the centred scatter matrix of one block of features."""
        x = np.asarray(batch, dtype=np.float64)
        n = len(x)
        if n == 0:
            return {"n": 0, "sum": [0.0] * x.shape[1], "m2": np.zeros((x.shape[1],) * 2).tolist()}
        xc = x - x.mean(axis=0)
        return {"n": n, "sum": x.sum(axis=0).tolist(), "m2": (xc.T @ xc).tolist()}

    @staticmethod
    def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
        """One block's worth of statistics from many (exact up to rounding)."""
        parts = [p for p in parts if p["n"]]
        if not parts:
            raise ValueError("PCA needs at least two training rows")
        n = sum(p["n"] for p in parts)
        total = np.sum([np.asarray(p["sum"], dtype=np.float64) for p in parts], axis=0)
        mean = total / n
        m2 = np.zeros((len(mean), len(mean)))
        for p in parts:
            delta = np.asarray(p["sum"], dtype=np.float64) / p["n"] - mean
            m2 += np.asarray(p["m2"], dtype=np.float64) + p["n"] * np.outer(delta, delta)
        return {"n": n, "sum": total.tolist(), "m2": m2.tolist()}

    def _fit(self, parts: list[dict[str, Any]]) -> None:
        s = self.merge_stats(parts)
        n, d = s["n"], len(s["sum"])
        if n < 2:
            raise ValueError("PCA needs at least two training rows")
        if self.components > d:
            raise ValueError(f"pca components={self.components} exceeds the {d} features the other operators output")
        cov = np.asarray(s["m2"]) / (n - 1)
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        order = np.argsort(-values, kind="stable")[: self.components]
        comps = vectors[:, order].T
        flip = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
        comps *= np.where(flip == 0, 1.0, flip)[:, None]
        self.mean_ = (np.asarray(s["sum"]) / n).tolist()
        self.components_ = comps.tolist()
        explained = np.maximum(values[order], 0.0)
        total = float(np.trace(cov))
        self.explained_variance_ = explained.tolist()
        self.explained_variance_ratio_ = (explained / total if total > 0 else np.zeros(len(order))).tolist()
        self.n_samples_ = int(n)
        self._after_load()

    def _after_load(self) -> None:
        self._mean = np.asarray(self.mean_, dtype=np.float64)
        w = np.asarray(self.components_, dtype=np.float64).T  # (d, k)
        if self.whiten:
            ev = np.sqrt(np.asarray(self.explained_variance_))
            w = w / np.where(ev > 0, ev, 1.0)
        self._weights = np.ascontiguousarray(w)

    # -- transforming -----------------------------------------------------------------
    def transform(self, batch: np.ndarray) -> np.ndarray:
        """float32 projections; each row computed alone, in a fixed order (no BLAS).

        A matrix product's rounding can depend on how many rows it has (BLAS picks
        kernels by shape); accumulating feature by feature keeps a single request row
        bit-identical to the same row in a large batch.
        """
        self.check_fitted()
        x = np.asarray(batch, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self._mean):
            raise ValueError(f"PCA expects {len(self._mean)} input features, got shape {list(x.shape)}")
        xc = x - self._mean
        out = np.zeros((len(x), self.components), dtype=np.float64)
        for j in range(xc.shape[1]):
            out += xc[:, j, None] * self._weights[j]
        return out.astype(np.float32)

    @property
    def feature_names(self) -> list[str]:
        return [f"pca[{i}]" for i in range(self.components)]
