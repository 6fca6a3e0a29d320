"""Deterministic stratified train/validation/test split.

Each row gets a uniform number from a hash of its content and the split seed, so
the assignment does not depend on block layout or parallelism, and duplicate rows
always land in the same split (no leakage across splits). Per class, the rows with
the smallest numbers go to test, the next to validation: exact proportions per class.
Only the label and that number travel to the driver.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from raypipe.validate.schema import label_strings

U_COL, SPLIT_COL = "__u", "__split"
SPLITS = ("train", "validation", "test")


def _canonical_column(s: pd.Series) -> np.ndarray:
    """A column's values in one representation whatever dtype its block arrived in.

    An int column with nulls reaches pandas as float in one block and as int in
    another, strings as object or Arrow-backed: hashing must not see the difference.
    """
    if _is_tensor(s):  # images: their bytes, not numpy's abbreviated repr
        return np.array([hashlib.blake2b(np.ascontiguousarray(v).tobytes(), digest_size=16).hexdigest()
                         for v in s], dtype=object)
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_string_dtype(s):
        return s.to_numpy(dtype=object, na_value=None)
    missing = s.isna().to_numpy()
    return np.where(missing, None, s.astype(str).to_numpy(dtype=object, na_value=None))


_M1, _M2, _PRIME = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x100000001B3)


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every input bit affects every output bit."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_columns(columns: list[np.ndarray], n: int, seed: int = 0) -> np.ndarray:
    """A 64-bit hash per row of already canonical column arrays, mixed with ``seed``.

    Each column is hashed by ``pandas.util.hash_array`` (strings are factorised first,
    so only distinct values are hashed) and folded in column order; no DataFrame is
    built. pandas hashes numbers without its key, so the seed is mixed in at the end.
    """
    h = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in columns:
            h = (h * _PRIME) ^ pd.util.hash_array(a, categorize=True)
        return _mix(h ^ _mix(np.full(1, seed & 0xFFFFFFFF, dtype=np.uint64)))  # the seed mod 2**32


def _is_tensor(s: pd.Series) -> bool:
    if "Tensor" in type(s.dtype).__name__:
        return True
    first = s.dropna().head(1)
    return s.dtype == object and len(first) > 0 and isinstance(first.iloc[0], np.ndarray)


def row_uniform(df: pd.DataFrame, seed: int) -> np.ndarray:
    """A number in [0, 1) per row, a pure function of the row's values and ``seed``."""
    h = hash_columns([_canonical_column(df[c]) for c in df.columns], len(df), seed)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def stratum(values: pd.Series | None, n: int) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=object)
    return label_strings(values).fillna("__null__").astype(str).to_numpy()


def thresholds(strata: np.ndarray, u: np.ndarray, test: float, validation: float) -> dict[str, tuple[float, float]]:
    """Per stratum: u below the first bound -> test, below the second -> validation."""
    return {str(s): _bounds(np.sort(u[strata == s]), test, validation) for s in np.unique(strata)}


def assign(batch: pd.DataFrame, bounds: dict[str, tuple[float, float]], target: str | None) -> pd.DataFrame:
    s = pd.Series(stratum(batch[target] if target else None, len(batch)), dtype=object).astype(str)
    lo = s.map({k: v[0] for k, v in bounds.items()}).to_numpy(dtype=np.float64)
    hi = s.map({k: v[1] for k, v in bounds.items()}).to_numpy(dtype=np.float64)
    u = batch[U_COL].to_numpy()
    batch[SPLIT_COL] = np.where(u < lo, "test", np.where(u < hi, "validation", "train"))
    return batch


def _strata_u(batch: pd.DataFrame, key: str | None) -> pd.DataFrame:
    """One row per stratum of a block, holding the u values of its rows (not one row per row)."""
    strata = stratum(batch[key] if key else None, len(batch))
    u = batch[U_COL].to_numpy()
    names, codes = np.unique(strata.astype(str), return_inverse=True)
    return pd.DataFrame({"s": names, "u": [u[codes == i] for i in range(len(names))]})


def label_splits(ds: Any, *, target: str | None, stratify: bool, test: float, validation: float,
                 seed: int) -> tuple[Any, dict[str, int]]:
    """Every row with its split name in ``__split`` (lazy), and the exact rows per split.

    The input is read once and kept in Ray's object store with each row's number;
    only the numbers, grouped by class, reach the driver (8 bytes a row), which
    computes the per-class bounds and counts every split exactly.
    """
    def add_u(b: pd.DataFrame) -> pd.DataFrame:
        b[U_COL] = row_uniform(b, seed)
        return b

    with_u = ds.map_batches(add_u, batch_format="pandas").materialize()
    key = target if (stratify and target) else None
    cols = [U_COL] + ([key] if key else [])
    parts = with_u.select_columns(cols).map_batches(_strata_u, fn_kwargs={"key": key}, batch_format="pandas",
                                                    batch_size=None).to_pandas()
    by_stratum: dict[str, list[np.ndarray]] = {}
    for s, u in zip(parts["s"], parts["u"]):
        by_stratum.setdefault(str(s), []).append(np.asarray(u, dtype=np.float64))
    strata_u = {s: np.sort(np.concatenate(us)) for s, us in by_stratum.items()}
    bounds = {s: _bounds(us, test, validation) for s, us in strata_u.items()}
    rows = {"train": 0, "validation": 0, "test": 0}
    for s, us in strata_u.items():
        lo, hi = np.searchsorted(us, bounds[s][0]), np.searchsorted(us, bounds[s][1])
        rows["test"] += int(lo)
        rows["validation"] += int(hi - lo)
        rows["train"] += int(len(us) - hi)
    labelled = with_u.map_batches(_label, fn_kwargs={"bounds": bounds, "key": key}, batch_format="pandas")
    return labelled, rows


def _label(batch: pd.DataFrame, bounds: dict[str, tuple[float, float]], key: str | None) -> pd.DataFrame:
    return assign(batch, bounds, key).drop(columns=[U_COL])


def split_dataset(ds: Any, *, target: str | None, stratify: bool, test: float, validation: float,
                  seed: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The three splits as lazy datasets, and their exact row counts (see :func:`label_splits`)."""
    labelled, rows = label_splits(ds, target=target, stratify=stratify, test=test, validation=validation, seed=seed)
    splits = {name: labelled.map_batches(lambda b, name=name: b[b[SPLIT_COL] == name].drop(columns=[SPLIT_COL]),
                                         batch_format="pandas") for name in SPLITS}
    return splits, rows


def _bounds(us: np.ndarray, test: float, validation: float) -> tuple[float, float]:
    """u below the first bound -> test, below the second -> validation (``us`` sorted)."""
    k_test, k_val = int(round(len(us) * test)), int(round(len(us) * (test + validation)))
    bound = lambda k: float(us[k]) if k < len(us) else 1.0  # noqa: E731
    return bound(k_test), bound(k_val)
