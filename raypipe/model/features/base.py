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
