"""Image columns: pixels / 255, optionally standardised per channel, flattened in C order.

An image value is a numpy array (Ray Data: an object column of arrays, a tensor
column, or one ``(rows, h, w[, c])`` array in numpy batches) or, in a request,
nested lists. Every image of a column must have the schema's shape ``[h, w]`` or
``[h, w, c]`` (a single channel may be given or left out: ``[h, w]`` and ``[h, w, 1]``
are the same pixels). A missing image (None) gives all-zero features (the training mean
when standardised) and is ignored by the statistics.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raypipe.model.features.base import Batch, Operator, column, num_rows

NORMALIZE = ("standard", "unit")


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _same_pixels(got: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Equal shapes, or equal but for a trailing single channel."""
    return got == expected or got + (1,) == expected or got == expected + (1,)


class ImageTransformer(Operator):
    """Scale images to [0, 1] and (``normalize="standard"``) by the training mean/std per channel.

    Args:
        columns: input image columns.
        shapes: each column's image shape, ``[h, w]`` or ``[h, w, c]``.
        normalize: ``unit`` (pixels / 255) or ``standard`` (then minus the channel's
            training mean, over its training std; both from mergeable pixel sums).
    """

    kind = "image"
    state_keys = ("mean_", "std_")

    def __init__(self, columns: Sequence[str], *, shapes: Mapping[str, Sequence[int]], normalize: str = "standard") -> None:
        if normalize not in NORMALIZE:
            raise ValueError(f"image normalize must be one of {NORMALIZE}, not {normalize!r}")
        self.columns, self.normalize = list(columns), normalize
        missing = [c for c in self.columns if c not in shapes]
        if missing:
            raise ValueError(f"image columns {missing} have no shape; the schema gives it as columns[c].shape")
        self.shapes = {c: [int(v) for v in shapes[c]] for c in self.columns}
        bad = {c: s for c, s in self.shapes.items() if len(s) not in (2, 3) or min(s) < 1}
        if bad:
            raise ValueError(f"image shapes must be [h, w] or [h, w, c] with positive sizes, not {bad}")

    def get_params(self) -> dict[str, Any]:
        return {"columns": self.columns, "shapes": self.shapes, "normalize": self.normalize}

    def _channels(self, c: str) -> int:
        return self.shapes[c][2] if len(self.shapes[c]) == 3 else 1

    def pixels(self, c: str, col: Any) -> tuple[np.ndarray, np.ndarray]:
        """(float64 (rows, h, w[, c]) scaled to [0, 1] with 0 where missing, the present-rows mask)."""
        expected = tuple(self.shapes[c])
        if isinstance(col, np.ndarray) and col.dtype != object:
            arr, present = col, np.ones(len(col), dtype=bool)
            if not _same_pixels(arr.shape[1:], expected):
                raise ValueError(f"image column {c!r}: expected images of shape {list(expected)}, "
                                 f"got shape {list(arr.shape[1:])}")
            arr = arr.reshape(len(arr), *expected)
        else:
            values = list(col.to_numpy(dtype=object) if isinstance(col, pd.Series) and col.dtype == object else col)
            present = np.array([not _is_missing(v) for v in values], dtype=bool)
            arr = np.zeros((len(values), *expected), dtype=np.float64)
            for i in np.nonzero(present)[0]:
                img = np.asarray(values[i])
                if not _same_pixels(img.shape, expected):
                    raise ValueError(f"image column {c!r}: expected an image of shape {list(expected)}, "
                                     f"got shape {list(img.shape)} (row {i})")
                arr[i] = img.reshape(expected)
        return arr.astype(np.float64) / 255.0, present

    # -- fitting ----------------------------------------------------------------------
    def partial_stats(self, batch: Batch) -> dict[str, Any]:
        """Per column and channel: pixel count, sum and sum of squares (of pixels / 255)."""
        if self.normalize == "unit":
            return {}
        out = {}
        for c in self.columns:
            x, present = self.pixels(c, column(batch, c))
            x = x[present].reshape(-1, self._channels(c))
            out[c] = {"n": len(x), "sum": x.sum(axis=0).tolist(), "sumsq": (x * x).sum(axis=0).tolist()}
        return out

    def _fit(self, parts: list[dict[str, Any]]) -> None:
        self.mean_: dict[str, list[float]] = {}
        self.std_: dict[str, list[float]] = {}
        if self.normalize == "unit":
            return
        for c in self.columns:
            n = sum(p[c]["n"] for p in parts)
            if n == 0:
                raise ValueError(f"image column {c!r} has no images in the training data")
            mean = np.sum([p[c]["sum"] for p in parts], axis=0) / n
            var = np.maximum(np.sum([p[c]["sumsq"] for p in parts], axis=0) / n - mean * mean, 0.0)
            std = np.sqrt(var)
            self.mean_[c] = mean.tolist()
            self.std_[c] = np.where(std > 0, std, 1.0).tolist()

    # -- transforming -----------------------------------------------------------------
    def transform(self, batch: Batch) -> np.ndarray:
        self.check_fitted()
        n = num_rows(batch)
        blocks = []
        for c in self.columns:
            x, present = self.pixels(c, column(batch, c))
            if self.normalize == "standard":
                mean, std = np.asarray(self.mean_[c]), np.asarray(self.std_[c])
                if len(self.shapes[c]) == 2:
                    mean, std = mean[0], std[0]
                x = (x - mean) / std
                x[~present] = 0.0
            blocks.append(x.reshape(n, -1).astype(np.float32))
        return np.hstack(blocks) if blocks else np.zeros((n, 0), dtype=np.float32)

    @property
    def feature_names(self) -> list[str]:
        return [f"{c}[{i}]" for c in self.columns for i in range(int(np.prod(self.shapes[c])))]
