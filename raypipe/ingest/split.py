"""Deterministic stratified train/validation/test split.

Each row gets a uniform number from a hash of its content and the split seed, so
the assignment does not depend on block layout or parallelism, and duplicate rows
always land in the same split (no leakage across splits). Per class, the rows with
the smallest numbers go to test, the next to validation: exact proportions per class.
Only the label and that number travel to the driver.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raypipe.validate.schema import label_strings

U_COL, SPLIT_COL = "__u", "__split"
SPLITS = ("train", "validation", "test")


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Values in one representation whatever dtype a block arrived in.

    An int column with nulls reaches pandas as float in one block and as int in
    another, strings as object or Arrow-backed: hashing must not see the difference.
    """
    out = {}
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            out[c] = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            missing = s.isna().to_numpy()
            out[c] = np.where(missing, None, s.astype(str).to_numpy(dtype=object, na_value=None))
    return pd.DataFrame(out)


def row_uniform(df: pd.DataFrame, seed: int) -> np.ndarray:
    """A number in [0, 1) per row, a pure function of the row's values and ``seed``."""
    key = f"{seed & 0xFFFFFFFF:016x}"
    h = pd.util.hash_pandas_object(_canonical(df), index=False, hash_key=key).to_numpy(dtype=np.uint64)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def stratum(values: pd.Series | None, n: int) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=object)
    return label_strings(values).fillna("__null__").astype(str).to_numpy()


def thresholds(strata: np.ndarray, u: np.ndarray, test: float, validation: float) -> dict[str, tuple[float, float]]:
    """Per stratum: u below the first bound -> test, below the second -> validation."""
    out: dict[str, tuple[float, float]] = {}
    for s in np.unique(strata):
        us = np.sort(u[strata == s])
        k_test, k_val = int(round(len(us) * test)), int(round(len(us) * (test + validation)))
        bound = lambda k: float(us[k]) if k < len(us) else 1.0  # noqa: E731
        out[str(s)] = (bound(k_test), bound(k_val))
    return out


def assign(batch: pd.DataFrame, bounds: dict[str, tuple[float, float]], target: str | None) -> pd.DataFrame:
    s = pd.Series(stratum(batch[target] if target else None, len(batch)), dtype=object).astype(str)
    lo = s.map({k: v[0] for k, v in bounds.items()}).to_numpy(dtype=np.float64)
    hi = s.map({k: v[1] for k, v in bounds.items()}).to_numpy(dtype=np.float64)
    u = batch[U_COL].to_numpy()
    batch[SPLIT_COL] = np.where(u < lo, "test", np.where(u < hi, "validation", "train"))
    return batch


def split_dataset(ds: Any, *, target: str | None, stratify: bool, test: float, validation: float, seed: int) -> dict[str, Any]:
    """Split a Ray Dataset into materialised train/validation/test datasets."""
    def add_u(b: pd.DataFrame) -> pd.DataFrame:
        b[U_COL] = row_uniform(b, seed)
        return b

    with_u = ds.map_batches(add_u, batch_format="pandas").materialize()
    key = target if (stratify and target) else None
    cols = [U_COL] + ([key] if key else [])
    small = with_u.select_columns(cols).to_pandas()
    bounds = thresholds(stratum(small[key] if key else None, len(small)), small[U_COL].to_numpy(), test, validation)
    labelled = with_u.map_batches(assign, fn_kwargs={"bounds": bounds, "target": key}, batch_format="pandas").materialize()
    return {
        name: labelled.map_batches(
            lambda b, name=name: b[b[SPLIT_COL] == name].drop(columns=[U_COL, SPLIT_COL]), batch_format="pandas"
        )
        for name in SPLITS
    }
