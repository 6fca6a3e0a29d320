"""The data profile: mergeable per-block summaries, finished on the driver.

``block_profile`` summarises one block of valid rows into a small JSON-able dict,
``merge_profiles`` adds any number of them (its result can be merged again) and
``finish`` turns the sum into the profile stored in the report and the reference.

Exact: row, null, zero and empty counts, min, max, mean, std (population),
text lengths, image shapes and pixel mean/std, categorical counts up to
``MAX_DISTINCT`` distinct values, and the duplicate-row count (see ``row_hashes``).

Approximate:

* drift bins (``bins``, the monitor's reference): numeric columns get the edges of ten
  quantile bins of the merged sketch, the reference counts in them and each bin's mean;
  categorical columns their 100 most frequent values with counts (exact up to
  ``MAX_DISTINCT`` distinct values).

* quantiles: each block sends ``SKETCH_POINTS`` evenly spaced quantiles of its
  values (all its values when it has fewer), each point weighted by the block's
  rows / points; a quantile of the split is read off the merged, weighted points.
  The rank error is about ``1 / SKETCH_POINTS`` of the rows.
* histogram: ``HIST_BINS`` equal-width bins over the exact [min, max]; each bin's
  count is the weight of the sketch points that fall in it, scaled to the exact
  number of values: the shape of the distribution, not exact per-bin counts.
* duplicates are counted exactly (up to 64-bit hash collisions, about n²/2⁶⁵):
  every block sends one 8-byte hash per valid row (32 MB for 4M rows) and the
  driver counts repeats with numpy.
* categorical columns with more than ``MAX_DISTINCT`` distinct values report
  ``"10000+"`` and no value list; their top values are then approximate (each block
  sends its ``MAX_DISTINCT`` most frequent values).
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from raypipe.columns import (as_float, column_hashes, hash_columns, holds_arrays, merge_sketches, quantile_bins,
                             quantile_sketch, sketch_quantiles)
from raypipe.schema import label_strings

FORMAT = "raypipe.profile/1"
SKETCH_POINTS = 201
HIST_BINS = 20
TOP_VALUES = 20
MAX_DISTINCT = 10_000
DRIFT_CATEGORIES = 100  # categories kept with their counts for drift (the rest are counted together)
UNSEEN_EXAMPLES = 5
QUANTILES = {"p1": 0.01, "p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}
_PIXELS_PER_CHUNK = 1 << 22


def profile_kind(col_type: str, is_id: bool = False) -> str:
    """How a column is profiled: numeric, categorical, text, image or id (counts only)."""
    if is_id:
        return "id"
    return {"number": "numeric", "integer": "numeric", "boolean": "numeric", "string": "categorical",
            "text": "text", "image": "image", "audio": "image"}.get(col_type, "id")  # audio: sample mean/std


# --- one block ----------------------------------------------------------------------------------
def _sketch(x: np.ndarray) -> list[float]:
    if len(x) <= SKETCH_POINTS:
        return np.sort(x).tolist()
    return quantile_sketch(x, SKETCH_POINTS).tolist()


def _numeric_block(s: pd.Series, bounds: dict[str, Any], name: str) -> dict[str, Any]:
    x = as_float(s)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(x.mean()) if n else 0.0
    part = {"n": n, "min": float(x.min()) if n else None, "max": float(x.max()) if n else None, "mean": mean,
            "m2": float(np.square(x - mean).sum()) if n else 0.0, "zeros": int((x == 0).sum()),
            "sketches": [[n, _sketch(x)]] if n else []}
    rng = bounds.get("ranges", {}).get(name)
    if rng is not None:
        part["out_of_range"] = int(((x < rng[0]) | (x > rng[1])).sum())
    return part


def text_value_counts(s: pd.Series) -> pd.Series:
    """Counts of the non-missing values, keyed by their text (as ``label_strings``), most frequent first.

    Counted first, converted after: only the distinct values are turned into text.
    """
    vc = s.value_counts(dropna=True)
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        keys = label_strings(pd.Series(vc.index)).to_numpy(dtype=object)
    else:
        keys = vc.index.astype(str).to_numpy(dtype=object)
    counts = pd.Series(vc.to_numpy(dtype=np.int64), index=pd.Index(keys, dtype=object))
    if not counts.index.is_unique:
        counts = counts.groupby(level=0).sum()
    return counts.sort_values(ascending=False, kind="stable")


def _categorical_block(s: pd.Series, bounds: dict[str, Any], name: str) -> dict[str, Any]:
    counts = text_value_counts(s)
    part = {"n": int(counts.sum()), "overflow": len(counts) > MAX_DISTINCT,
            "counts": {str(k): int(v) for k, v in counts.head(MAX_DISTINCT + 1).items()}}
    allowed = bounds.get("values", {}).get(name)
    if allowed is not None:
        unseen = counts[~counts.index.isin(allowed)]
        part["unseen"] = int(unseen.sum())
        part["unseen_examples"] = {str(k): int(v) for k, v in unseen.head(UNSEEN_EXAMPLES).items()}
    return part


def _text_block(s: pd.Series, bounds: dict[str, Any], name: str) -> dict[str, Any]:
    t = s.dropna().astype(str)
    lengths = t.str.len().to_numpy(dtype=np.int64, na_value=0)
    n = len(lengths)
    return {"n": n, "empty": int((t.str.strip().str.len() == 0).sum()), "len_sum": int(lengths.sum()),
            "len_min": int(lengths.min()) if n else None, "len_max": int(lengths.max()) if n else None}


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _image_block(s: pd.Series, bounds: dict[str, Any], name: str) -> dict[str, Any]:
    by_shape: dict[tuple[int, ...], list[Any]] = defaultdict(list)
    for v in s.to_numpy(dtype=object):
        if not _is_missing(v):
            by_shape[tuple(np.shape(v))].append(v)
    total = squares = 0.0
    pixels = 0
    for shape, images in by_shape.items():
        step = max(1, _PIXELS_PER_CHUNK // max(1, int(np.prod(shape))))
        for i in range(0, len(images), step):
            a = np.stack([np.asarray(v) for v in images[i : i + step]]).astype(np.float64)
            total, squares, pixels = total + float(a.sum()), squares + float(np.square(a).sum()), pixels + a.size
    return {"n": sum(len(v) for v in by_shape.values()), "px_n": pixels, "px_sum": total, "px_sq": squares,
            "shapes": {"x".join(map(str, k)): len(v) for k, v in by_shape.items()}}


def _id_block(s: pd.Series, bounds: dict[str, Any], name: str) -> dict[str, Any]:
    return {"n": int(s.notna().sum())}


_BLOCK: dict[str, Callable[[pd.Series, dict[str, Any], str], dict[str, Any]]] = {
    "numeric": _numeric_block, "categorical": _categorical_block, "text": _text_block, "image": _image_block,
    "id": _id_block,
}


def block_profile(batch: pd.DataFrame, schema: dict[str, Any], bounds: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mergeable profile of one block of (valid) rows.

    Args:
        bounds: from :func:`reference_bounds`: also count values outside the
            reference range and categories the reference never saw.
    """
    bounds = bounds or {}
    ids = set(schema.get("id_columns", []))
    columns = {}
    for name, col in schema["columns"].items():
        if name not in batch.columns:
            continue
        kind = profile_kind(col["type"], name in ids)
        s = batch[name]
        part = _BLOCK[kind](s, bounds, name)
        columns[name] = {"kind": kind, "type": col["type"], "nulls": int(len(s) - part["n"]), **part}
    return {"rows": len(batch), "columns": columns}


def _digests(s: pd.Series) -> np.ndarray:
    """Per image a short digest of its shape and pixels (None when missing)."""
    def digest(v: Any) -> str | None:
        if _is_missing(v):
            return None
        a = np.ascontiguousarray(v)
        return hashlib.blake2b(str(a.shape).encode() + a.tobytes(), digest_size=8).hexdigest()

    return np.array([digest(v) for v in s.to_numpy(dtype=object)], dtype=object)


def row_hashes(batch: pd.DataFrame, schema: dict[str, Any]) -> np.ndarray:
    """A 64-bit hash of each row's values (``split.hash_columns`` on canonical values).

    Numeric schema columns are hashed as numbers whatever dtype they arrived in, so
    equal rows hash equally in every block. Images enter as a digest of their shape
    and pixels (otherwise every image data set would be mostly "duplicates" of its
    labels). Internal ``__`` columns are left out. 8 bytes a row travel to the driver.
    """
    cols: list[np.ndarray] = []
    for c in batch.columns:
        t = schema["columns"].get(c, {}).get("type")
        s = batch[c]
        if c.startswith("__"):
            continue
        if t in ("image", "audio") or holds_arrays(s):
            cols.append(pd.util.hash_array(_digests(s), categorize=False))
        else:
            cols.append(column_hashes(pd.Series(as_float(s)) if t in ("number", "integer") else s))
    if not cols or not len(batch):
        return np.zeros(0, dtype=np.uint64)
    return hash_columns(cols, len(batch))


def count_duplicates(hashes: list[np.ndarray]) -> int:
    """Rows whose hash equals an earlier row's: exact up to 64-bit hash collisions.

    Sorted, then neighbours compared: numpy 2.4's ``np.unique`` takes a hash-table path
    for 64-bit integers that needed 4.3 s for 2.8M distinct hashes, a sort 0.07 s.
    """
    h = np.concatenate([np.asarray(x, dtype=np.uint64) for x in hashes]) if hashes else np.zeros(0, np.uint64)
    h.sort()
    return int(np.count_nonzero(h[1:] == h[:-1]))


# --- merging ------------------------------------------------------------------------------------
def _add(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        if k in b:
            a[k] = a.get(k, 0) + b[k]


def _extreme(a: Any, b: Any, pick: Callable[[Any, Any], Any]) -> Any:
    return b if a is None else a if b is None else pick(a, b)


def _merge_numeric(a: dict[str, Any], b: dict[str, Any]) -> None:
    n = a["n"] + b["n"]
    if n:
        delta = b["mean"] - a["mean"]
        a["m2"] = a["m2"] + b["m2"] + delta * delta * a["n"] * b["n"] / n
        a["mean"] = a["mean"] + delta * b["n"] / n
    a["min"], a["max"] = _extreme(a["min"], b["min"], min), _extreme(a["max"], b["max"], max)
    a["sketches"] = a["sketches"] + b["sketches"]
    _add(a, b, ("zeros", "out_of_range"))
    a["n"] = n


def _top(counts: dict[str, int], k: int) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k])


def _merge_categorical(a: dict[str, Any], b: dict[str, Any]) -> None:
    counts = dict(a["counts"])
    for k, v in b["counts"].items():
        counts[k] = counts.get(k, 0) + v
    a["overflow"] = a["overflow"] or b["overflow"] or len(counts) > MAX_DISTINCT
    a["counts"] = _top(counts, MAX_DISTINCT + 1) if a["overflow"] else counts
    if "unseen_examples" in b:
        examples = dict(a.get("unseen_examples", {}))
        for k, v in b["unseen_examples"].items():
            examples[k] = examples.get(k, 0) + v
        a["unseen_examples"] = _top(examples, UNSEEN_EXAMPLES)
    _add(a, b, ("n", "unseen"))


def _merge_text(a: dict[str, Any], b: dict[str, Any]) -> None:
    a["len_min"], a["len_max"] = _extreme(a["len_min"], b["len_min"], min), _extreme(a["len_max"], b["len_max"], max)
    _add(a, b, ("n", "empty", "len_sum"))


def _merge_image(a: dict[str, Any], b: dict[str, Any]) -> None:
    shapes = dict(a["shapes"])
    for k, v in b["shapes"].items():
        shapes[k] = shapes.get(k, 0) + v
    a["shapes"] = shapes
    _add(a, b, ("n", "px_n", "px_sum", "px_sq"))


def _merge_id(a: dict[str, Any], b: dict[str, Any]) -> None:
    _add(a, b, ("n",))


_MERGE: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "numeric": _merge_numeric, "categorical": _merge_categorical, "text": _merge_text, "image": _merge_image,
    "id": _merge_id,
}


def merge_profiles(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add block profiles (or merged ones): the result can be merged again."""
    total: dict[str, Any] = {"rows": 0, "columns": {}}
    for p in parts:
        total["rows"] += p["rows"]
        for name, col in p["columns"].items():
            mine = total["columns"].get(name)
            if mine is None:
                total["columns"][name] = {**col, **({"counts": dict(col["counts"])} if "counts" in col else {})}
            else:
                nulls = mine["nulls"] + col["nulls"]
                _MERGE[col["kind"]](mine, col)
                mine["nulls"] = nulls
    return total


# --- finishing ----------------------------------------------------------------------------------
def _weighted_points(sketches: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
    return merge_sketches((n, p) for n, p in sketches)


def quantiles(sketches: list[list[Any]], levels: dict[str, float] = QUANTILES) -> dict[str, float]:
    """Quantiles from the merged sketches (:func:`raypipe.columns.sketch_quantiles`, as the fitted features)."""
    if not sketches:
        return {k: None for k in levels}
    q = sketch_quantiles(*_weighted_points(sketches), list(levels.values()))
    return {k: float(v) for k, v in zip(levels, q)}


def _round_to(parts: np.ndarray, total: int) -> list[int]:
    """Integers proportional to ``parts`` that add up to ``total`` (largest remainders)."""
    if parts.sum() <= 0:
        return [0] * len(parts)
    exact = parts * total / parts.sum()
    out = np.floor(exact).astype(np.int64)
    out[np.argsort(-(exact - out), kind="stable")[: total - int(out.sum())]] += 1
    return out.tolist()


def histogram(sketches: list[list[Any]], lo: float | None, hi: float | None, n: int) -> dict[str, list[Any]]:
    """``HIST_BINS`` equal-width bins over [lo, hi]; counts approximated from the sketch weights."""
    if not sketches or lo is None or hi is None:
        return {"edges": [], "counts": []}
    if hi <= lo:
        return {"edges": [lo, hi], "counts": [n]}
    values, weights = _weighted_points(sketches)
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    counts, _ = np.histogram(values, bins=edges, weights=weights)
    return {"edges": edges.tolist(), "counts": _round_to(counts, n)}


def _finish_numeric(p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    out = {"min": p["min"], "max": p["max"], "mean": p["mean"] if n else None,
           "std": float(np.sqrt(p["m2"] / n)) if n else None, "zeros": p["zeros"],
           "quantiles": quantiles(p["sketches"]), "histogram": histogram(p["sketches"], p["min"], p["max"], n),
           "bins": quantile_bins(*_weighted_points(p["sketches"]), n)}
    if "out_of_range" in p:
        out["out_of_range"] = p["out_of_range"]
    if n and p["min"] == p["max"]:
        out["constant_value"] = p["min"]
    return out


def _finish_categorical(p: dict[str, Any]) -> dict[str, Any]:
    counts = p["counts"]
    top = _top(counts, TOP_VALUES)
    out: dict[str, Any] = {
        "distinct": f"{MAX_DISTINCT}+" if p["overflow"] else len(counts),
        "top": [[k, v] for k, v in top.items()],
        "values": None if p["overflow"] else sorted(counts),
        "bins": _category_bins(counts, p["n"]),
    }
    if "unseen" in p:
        out["unseen"] = p["unseen"]
        out["unseen_examples"] = list(p.get("unseen_examples", {}))
    if not p["overflow"] and len(counts) == 1:
        out["constant_value"] = next(iter(counts))
    return out


def _category_bins(counts: dict[str, int], n: int) -> dict[str, Any]:
    """The drift reference of a categorical column: its ``DRIFT_CATEGORIES`` most frequent values with
    their counts, and how many values fall outside them (``rest``; 0 when it has no more values)."""
    top = _top(counts, DRIFT_CATEGORIES)
    return {"values": list(top), "counts": list(top.values()), "rest": int(n - sum(top.values()))}


def _finish_text(p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    return {"length": {"min": p["len_min"], "mean": p["len_sum"] / n if n else None, "max": p["len_max"]},
            "empty": p["empty"]}


def _finish_image(p: dict[str, Any]) -> dict[str, Any]:
    shapes = dict(sorted(p["shapes"].items(), key=lambda kv: -kv[1]))
    common = next(iter(shapes), None)
    px = p["px_n"]
    mean = p["px_sum"] / px if px else None
    return {"shape": [int(d) for d in common.split("x")] if common else None, "shapes": shapes,
            "pixel_mean": mean, "pixel_std": float(np.sqrt(max(p["px_sq"] / px - mean * mean, 0.0))) if px else None}


_FINISH: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "numeric": _finish_numeric, "categorical": _finish_categorical, "text": _finish_text, "image": _finish_image,
    "id": lambda p: {},
}


def finish(merged: dict[str, Any], duplicates: int | None = None) -> dict[str, Any]:
    """The profile of a split from its merged block profiles and its duplicate-row count."""
    rows = merged["rows"]
    columns = {}
    for name, p in merged["columns"].items():
        columns[name] = {"type": p["type"], "kind": p["kind"], "count": p["n"], "nulls": p["nulls"],
                         "missing_rate": p["nulls"] / rows if rows else 0.0, **_FINISH[p["kind"]](p)}
    return {
        "format": FORMAT,
        "rows": rows,
        "duplicates": duplicates,
        "duplicate_fraction": None if duplicates is None else (duplicates / rows if rows else 0.0),
        "constant_columns": [c for c, p in columns.items() if "constant_value" in p],
        "columns": columns,
    }


def reference_bounds(profile: dict[str, Any] | None) -> dict[str, Any]:
    """What each block needs of a reference profile: numeric ranges and known categories."""
    if not profile:
        return {}
    cols = profile.get("columns", {})
    return {
        "ranges": {c: [p["min"], p["max"]] for c, p in cols.items()
                   if p.get("kind") == "numeric" and p.get("min") is not None},
        "values": {c: p["values"] for c, p in cols.items()
                   if p.get("kind") == "categorical" and p.get("values") is not None},
    }
