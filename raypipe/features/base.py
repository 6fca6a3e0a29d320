"""What every feature operator shares: the fit/transform/serialise protocol and column helpers.

An operator is fitted in one pass: :meth:`Operator.partial_stats` turns one block
(a pandas DataFrame or a dict of columns) into JSON-able statistics, and
:meth:`Operator.fit_from_stats` merges those of all blocks on the driver. Its
fitted state is plain JSON (:meth:`Operator.to_dict`), never pickle.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

Batch = pd.DataFrame | Mapping[str, Any]
"""A pandas DataFrame or a dict of equally long columns (lists, numpy arrays, Series)."""

class Operator:
    """Base class: a fitted, JSON-serialisable transformation to a float32 matrix.

    Subclasses set :attr:`kind`, implement :meth:`get_params` (constructor keyword
    arguments), :meth:`partial_stats`, :meth:`_fit` and :meth:`transform`, and list
    their fitted attributes (ending in ``_``) in :attr:`state_keys`.
    """

    kind: ClassVar[str] = ""
    state_keys: ClassVar[tuple[str, ...]] = ()

    fitted_: bool = False

    def get_params(self) -> dict[str, Any]:
        """The constructor's keyword arguments, JSON-able."""
        raise NotImplementedError

    def partial_stats(self, batch: Any) -> dict[str, Any]:
        """Mergeable, JSON-able statistics of one block."""
        raise NotImplementedError

    def fit_from_stats(self, parts: list[dict[str, Any]]) -> Self:
        """Fit from the statistics of every block (see :meth:`partial_stats`)."""
        self._fit(parts)
        self.fitted_ = True
        return self

    def _fit(self, parts: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def fit(self, batch: Any) -> Self:
        """Fit on a single in-memory batch."""
        return self.fit_from_stats([self.partial_stats(batch)])

    def transform(self, batch: Any) -> np.ndarray:
        """float32 features, shape (rows, :attr:`n_features`)."""
        raise NotImplementedError

    def transform_records(self, rows: list[dict[str, Any]]) -> np.ndarray | None:
        """:meth:`transform` of a list of records without building a DataFrame, or None where
        this operator (or a value's type) needs the general path. Same output, bit for bit."""
        return None

    @property
    def feature_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def check_fitted(self) -> None:
        if not self.fitted_:
            raise RuntimeError(f"{type(self).__name__} must be fitted (fit or from_dict) before transform")

    # -- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"kind", "params", "state"}``: plain JSON."""
        self.check_fitted()
        return {"kind": self.kind, "params": self.get_params(), "state": {k: getattr(self, k) for k in self.state_keys}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        if d.get("kind") != cls.kind:
            raise ValueError(f"not a {cls.kind!r} operator: kind {d.get('kind')!r}")
        obj = cls(**d["params"])
        missing = [k for k in cls.state_keys if k not in d["state"]]
        if missing:
            raise ValueError(f"{cls.kind} operator state lacks {missing}")
        for k in cls.state_keys:
            setattr(obj, k, d["state"][k])
        obj._after_load()
        obj.fitted_ = True
        return obj

    def _after_load(self) -> None:
        """Hook: rebuild derived, unserialised helpers after the state is set."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


# -- columns -------------------------------------------------------------------------
def column(batch: Batch, name: str) -> Any:
    """The column ``name`` of a batch (KeyError naming it when absent)."""
    try:
        return batch[name]
    except KeyError:
        raise KeyError(f"input column {name!r} is missing") from None


def num_rows(batch: Batch) -> int:
    if isinstance(batch, pd.DataFrame):
        return len(batch)
    for v in batch.values():
        return len(v)
    return 0


SKETCH_SAMPLE = 65_536


def quantile_sketch(x: np.ndarray, points: int) -> np.ndarray:
    """``points`` evenly spaced quantiles of ``x`` (finite values), from at most ``SKETCH_SAMPLE`` of them.

    A larger block is thinned by a fixed stride first: the sketch is approximate anyway
    (rank error ~1/sqrt(sample), 0.4 %). The minimum and maximum stay exact: they are
    put back after thinning. The quantiles are read off one sort of the sample, with
    ``np.quantile``'s linear method (same values): ``np.quantile`` with many points costs
    a partition per point, 6x the sort for 1,001 points of 65,536 values.
    """
    levels = np.linspace(0.0, 1.0, points)
    if len(x) <= SKETCH_SAMPLE:
        return sorted_quantiles(np.sort(x), levels)  # its ends are the minimum and maximum
    q = sorted_quantiles(np.sort(x[:: -(-len(x) // SKETCH_SAMPLE)]), levels)
    q[0], q[-1] = x.min(), x.max()
    return q


def sorted_quantiles(xs: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``np.quantile(xs, levels)`` (linear method) of an already sorted array, without partitioning."""
    n = len(xs)
    if n == 0:
        return np.full(len(levels), np.nan)
    virtual = (n - 1) * levels  # numpy's virtual index for the linear method
    below = np.floor(virtual)
    t = virtual - below
    below = np.clip(below, 0, n - 1).astype(np.intp)
    a, b = xs[below], xs[np.minimum(below + 1, n - 1)]
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)  # numpy's _lerp


def as_float(col: Any) -> np.ndarray:
    """A column as float64 with NaN for missing/None; bools become 0/1."""
    if isinstance(col, np.ndarray) and col.dtype == np.float64:
        return col
    s = col if isinstance(col, pd.Series) else pd.Series(col)
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
        s = pd.to_numeric(s, errors="coerce")
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


NUMBER_TYPES = (int, float, bool)


def record_numbers(rows: list[dict[str, Any]], c: str) -> np.ndarray | None:
    """Column ``c`` of records as float64 (None → NaN, bools 0/1), or None when a value is no
    plain Python number or None (the general path coerces those) or a record lacks ``c``."""
    try:
        values = [r[c] for r in rows]
    except KeyError:
        return None
    if not all(v is None or type(v) in NUMBER_TYPES for v in values):
        return None
    return np.array(values, dtype=np.float64)


def as_str(col: Any) -> pd.Series:
    """A column as an object Series of ``str`` (values compared as strings), None where missing."""
    if isinstance(col, pd.Series):
        values = col.to_numpy(dtype=object)
    elif isinstance(col, np.ndarray):
        values = col.astype(object).ravel()
    else:
        values = np.empty(len(col), dtype=object)
        values[:] = list(col)
    missing = pd.isna(values)
    out = np.full(len(values), None, dtype=object)
    out[~missing] = [v if type(v) is str else str(v) for v in values[~missing]]
    return pd.Series(out, dtype=object)


def _arrow_string(dtype: Any) -> bool:
    import pyarrow as pa

    return isinstance(dtype, pd.ArrowDtype) and (pa.types.is_string(dtype.pyarrow_dtype)
                                                 or pa.types.is_large_string(dtype.pyarrow_dtype))


def str_codes(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """A column as :func:`as_str` would give it, factorised: per row an index into the
    distinct texts (-1 where missing), and those texts.

    A string column is factorised as it is, and only its distinct values become
    Python objects. Other columns go through :func:`as_str` first: factorising raw
    objects would merge 1 and 1.0, whose texts differ.
    """
    if isinstance(col, pd.Series) and (isinstance(col.dtype, pd.StringDtype) or _arrow_string(col.dtype)):
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        return codes.astype(np.int64), np.asarray(uniques, dtype=object)
    codes, uniques = pd.factorize(as_str(col).to_numpy(dtype=object), use_na_sentinel=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)
