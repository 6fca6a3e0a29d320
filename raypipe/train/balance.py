"""Class balancing of the training split: loss weights, or resampling (never validation or test).

``class_weight`` weighs each class's loss by ``n / (k * n_c)`` (scikit-learn's "balanced").

``oversample`` repeats the rows of each class ``n_max / n_c`` times, ``undersample``
keeps each row of a class with probability ``n_min / n_c``. The fractional part of a
factor is decided per row by a hash of its content and ``seed`` (see
:func:`raypipe.columns.row_uniform`), so the result does not depend on block
layout and is the same on every run.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raypipe.columns import row_uniform
from raypipe.schema import label_strings


def factors(counts: dict[str, int], how: str) -> dict[str, float]:
    """Expected copies of each row, by class."""
    present = {c: n for c, n in counts.items() if n > 0}
    if how == "oversample":
        top = max(present.values())
        return {c: top / n for c, n in present.items()}
    if how == "undersample":
        low = min(present.values())
        return {c: low / n for c, n in present.items()}
    raise ValueError(f"features.balance: {how!r} is not a resampling method; use oversample or undersample")


def resample_batch(batch: pd.DataFrame, target: str, factor: dict[str, float], seed: int) -> pd.DataFrame:
    """Each row repeated ``floor(f)`` times, plus once more when its hash falls below ``f - floor(f)``."""
    f = label_strings(batch[target]).map(factor).fillna(1.0).to_numpy(dtype=np.float64)
    u = row_uniform(batch, seed)
    copies = np.floor(f).astype(np.int64) + (u < f - np.floor(f))
    return batch.iloc[np.repeat(np.arange(len(batch)), copies)].reset_index(drop=True)


def class_counts(ds: Any, target: str) -> dict[str, int]:
    """Rows per class of a Ray Dataset (only the label column travels)."""
    counts = ds.select_columns([target]).map_batches(
        lambda b: label_strings(b[target]).value_counts().rename_axis("k").reset_index(name="n"), batch_format="pandas"
    ).to_pandas()
    return {str(k): int(v) for k, v in counts.groupby("k")["n"].sum().items()}


def resample(ds: Any, target: str, how: str, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The resampled dataset and a report of class counts before and the factors used."""
    before = class_counts(ds, target)
    factor = factors(before, how)
    out = ds.map_batches(resample_batch, fn_kwargs={"target": target, "factor": factor, "seed": seed},
                         batch_format="pandas")
    return out, {"method": how, "before": before, "factors": factor}


def class_weights(counts: dict[str, int], classes: list[str]) -> list[float]:
    """Balanced weights per class, as scikit-learn's ``class_weight="balanced"``; 0 for a class with no rows."""
    from sklearn.utils.class_weight import compute_class_weight

    present = [c for c in classes if counts.get(c)]
    y = np.repeat(np.arange(len(present)), [counts[c] for c in present])
    weights = dict(zip(present, compute_class_weight("balanced", classes=np.arange(len(present)), y=y)))
    return [float(weights.get(c, 0.0)) for c in classes]
