"""scikit-learn's bundled datasets (no download) as tidy frames and Ray Datasets.

Every set is returned with snake_case feature columns (``mean radius`` ->
``mean_radius``, ``sepal length (cm)`` -> ``sepal_length_cm``) and its label in the
column :data:`TARGET_COLUMN`. Classification labels are class names as strings where
scikit-learn has names (iris ``setosa``, breast_cancer ``malignant``/``benign``, wine
``class_0``...), the integer classes otherwise (digits ``0``-``9``); diabetes is a
float regression target.
"""
from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import ray.data


TARGET_COLUMN = "target"


class SklearnSet(NamedTuple):
    """What a bundled set is: its task, its ``sklearn.datasets`` loader and row count."""

    task: str
    loader: str
    rows: int


SKLEARN_SETS: dict[str, SklearnSet] = {
    "breast_cancer": SklearnSet("classification", "load_breast_cancer", 569),
    "digits": SklearnSet("classification", "load_digits", 1797),
    "wine": SklearnSet("classification", "load_wine", 178),
    "iris": SklearnSet("classification", "load_iris", 150),
    "diabetes": SklearnSet("regression", "load_diabetes", 442),
}


def _check_name(name: str) -> SklearnSet:
    """The set's entry, or a ``ValueError`` listing the known names."""
    try:
        return SKLEARN_SETS[name]
    except KeyError:
        raise ValueError(f"unknown scikit-learn dataset {name!r}; expected one of {sorted(SKLEARN_SETS)}") from None


def default_task(name: str) -> str:
    """``classification`` or ``regression``: the task the set is made for."""
    return _check_name(name).task


def sanitize_column(name: str) -> str:
    """A snake_case identifier: ``'sepal length (cm)'`` -> ``'sepal_length_cm'``."""
    out = re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower()
    if not out:
        return "col"
    return f"f_{out}" if out[0].isdigit() else out


def _unique(names: list[str]) -> list[str]:
    """Appends ``_2``, ``_3``... to names seen before (none of the bundled sets needs it)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def _target(bunch, task: str) -> pd.Series:
    """The label column: class names (str) where sklearn gives string names, else as is."""
    y = bunch.target
    if task != "classification":
        return y.astype(np.float64).rename(TARGET_COLUMN)
    names = getattr(bunch, "target_names", None)
    if names is not None and all(isinstance(n, str) for n in np.asarray(names).tolist()):
        labels = np.asarray(names, dtype=object)[y.to_numpy()]
        return pd.Series(labels, index=y.index, dtype=object, name=TARGET_COLUMN)
    return y.astype(np.int64).rename(TARGET_COLUMN)


def load_frame(name: str) -> pd.DataFrame:
    """Loads a bundled set as one frame: sanitised float64 features, then ``target``.

    Args:
        name: One of :data:`SKLEARN_SETS`.

    Returns:
        A frame with a fresh ``RangeIndex``.
    """
    import sklearn.datasets

    entry = _check_name(name)
    bunch = getattr(sklearn.datasets, entry.loader)(as_frame=True)
    x = bunch.data.astype(np.float64)
    x.columns = _unique([sanitize_column(c) for c in x.columns])
    if TARGET_COLUMN in x.columns:
        raise ValueError(f"{name}: a feature column is named {TARGET_COLUMN!r}")
    df = pd.concat([x, _target(bunch, entry.task)], axis=1)
    return df.reset_index(drop=True)


def sklearn_dataset(name: str, blocks: int = 4) -> ray.data.Dataset:
    """The set as a ``ray.data.Dataset`` of ``blocks`` contiguous blocks (row order kept).

    ``from_pandas(df, override_num_blocks=N)`` is broken in this Ray, so the frame is
    split on the driver and passed as a list.
    """
    import ray.data

    return ray.data.from_pandas(sklearn_parts(name, blocks))


def sklearn_parts(name: str, blocks: int = 4) -> list[pd.DataFrame]:
    """The set's frame cut into ``blocks`` contiguous parts (row order kept): the blocks of its dataset."""
    df = load_frame(name)
    n = max(1, min(blocks, len(df)))
    bounds = np.linspace(0, len(df), n + 1).astype(int)
    return [df.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(bounds)]
