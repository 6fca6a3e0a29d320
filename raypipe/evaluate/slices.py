"""Sliced metrics and the bias check: a metric per value of a column, and the largest gap.

Categorical, boolean and low-cardinality numeric columns slice by value; other numeric
columns by quartile (``pandas.qcut``; labels ``[a, b]``, then ``(b, c]`` ...). Missing values
form their own slice.
Slices smaller than ``min_rows`` are reported but left out of the gap, where one
unlucky row would otherwise decide it.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

MISSING = "(missing)"
MAX_DISTINCT = 20


def slice_keys(values: pd.Series, *, max_distinct: int = MAX_DISTINCT) -> pd.Series:
    """A string slice label per row."""
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and values.nunique(dropna=True) > max_distinct:
        arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bins, edges = pd.qcut(arr, 4, labels=False, retbins=True, duplicates="drop")
        labels = [f"{'(' if i else '['}{edges[i]:.4g}, {edges[i + 1]:.4g}]" for i in range(len(edges) - 1)]
        out = np.array(labels + [MISSING], dtype=object)[np.nan_to_num(bins, nan=-1).astype(int)]  # NaN: the last
        return pd.Series(out, index=values.index)
    isna = values.isna().to_numpy()
    out = values.astype(str).to_numpy(dtype=object)
    out[isna] = MISSING
    return pd.Series(out, index=values.index)


def sliced_metrics(keys: pd.Series, score: Callable[[np.ndarray], dict[str, Any]], metric: str, *,
                   lower_is_better: bool, min_rows: int) -> dict[str, Any]:
    """``score(row_mask)`` per slice; the gap of ``metric`` between the best and worst slice.

    Returns:
        ``{"metric", "values": {slice: {"rows", metrics...}}, "gap", "best", "worst", "min_rows"}``.
    """
    keys_arr = keys.to_numpy()
    values: dict[str, dict[str, Any]] = {}
    for key in sorted(pd.unique(keys_arr), key=str):
        mask = keys_arr == key
        m = score(mask)
        values[str(key)] = {"rows": int(mask.sum()), **{k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}}
    ranked = [(v[metric], k) for k, v in values.items() if v["rows"] >= min_rows and v.get(metric) is not None]
    if len(ranked) < 2:
        return {"metric": metric, "values": values, "gap": None, "best": None, "worst": None, "min_rows": min_rows}
    ranked.sort(reverse=not lower_is_better)
    (best_v, best), (worst_v, worst) = ranked[0], ranked[-1]
    return {"metric": metric, "values": values, "gap": float(abs(best_v - worst_v)), "best": best, "worst": worst,
            "min_rows": min_rows}
