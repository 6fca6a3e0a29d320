"""Column helpers the stages share: coercion (the same whatever dtype a block arrived in), row hashing
(values only, not block layout: the split, duplicates, resampling), the one mergeable quantile
sketch (the fitted numeric features and the data profile read their quantiles from the same merge)
and a mergeable frequent-values sketch (the fitted categorical features).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd


# -- coercion ------------------------------------------------------------------------
def as_float(col: Any) -> np.ndarray:
    """A column as float64 with NaN for missing/None; bools become 0/1."""
    if isinstance(col, np.ndarray) and col.dtype == np.float64:
        return col
    s = col if isinstance(col, pd.Series) else pd.Series(col)
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
        s = pd.to_numeric(s, errors="coerce")
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


NUMBER_TYPES = (int, float, bool)


# -- text that holds typed values ----------------------------------------------------
# One grammar per type, used both to infer a text column's type (by majority) and to check
# each value afterwards, so a value counts the same way in every block. Leading and trailing
# white space is ignored. Missing values (null) are neither parsed nor failed.
# ASCII digits, as a CSV export writes them; an infinity is a number too (later quarantined as infinite).
NUMBER_PATTERN = r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity))$"
INTEGER_PATTERN = r"^[+-]?\d+$"
TRUE_TOKENS = ("true", "t", "yes", "y", "1")
FALSE_TOKENS = ("false", "f", "no", "n", "0")
TRUE_FALSE_WORDS = ("true", "false", "1", "0")  # a target's booleans: yes/no, y/n, t/f labels stay text


class Parsed(NamedTuple):
    """A column read as one type: the values (float64: numbers, booleans as 1.0/0.0; NaN where
    missing or not parsed) and, per row, whether a present value failed to parse."""

    values: np.ndarray
    failed: np.ndarray


def is_text(col: Any) -> bool:
    """True for a column of strings (object, pandas string or Arrow string dtype)."""
    if isinstance(col, pd.Series):
        return not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)
                    or pd.api.types.is_datetime64_any_dtype(col))
    import pyarrow as pa

    t = col.type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def text_array(col: Any) -> Any:
    """A column as a trimmed ``pyarrow`` string array (null where missing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        arr = col if not pa.types.is_dictionary(col.type) else col.cast(pa.string())
        arr = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
    else:
        s = col if isinstance(col, pd.Series) else pd.Series(col)
        try:  # Arrow-backed strings (pandas' str dtype) pass without a copy, object strings in one go
            arr = pa.array(s, from_pandas=True)
            if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_null(arr.type)):
                raise pa.ArrowTypeError(f"not text: {arr.type}")
            arr = arr.cast(pa.string())
        except (pa.ArrowTypeError, pa.ArrowInvalid):  # values that are not all str: their text
            arr = pa.array(as_str(s).to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    return pc.utf8_trim_whitespace(arr)


def _mask(arr: Any) -> np.ndarray:
    """A boolean arrow array (nulls: False) as numpy."""
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def present(col: Any) -> np.ndarray:
    """Per row: a value is there (not null / NaN)."""
    import pyarrow as pa

    if isinstance(col, (pa.Array, pa.ChunkedArray)):
        return _mask(col.is_valid())
    s = col if isinstance(col, pd.Series) else pd.Series(col)
    return s.notna().to_numpy()


def number_matches(text: Any) -> np.ndarray:
    """Per value of a :func:`text_array`: it is a number (or an infinity)."""
    import pyarrow.compute as pc

    return _mask(pc.match_substring_regex(text, NUMBER_PATTERN))


def integer_matches(text: Any) -> np.ndarray:
    """Per value of a :func:`text_array`: it is an integer literal."""
    import pyarrow.compute as pc

    return _mask(pc.match_substring_regex(text, INTEGER_PATTERN))


def boolean_matches(text: Any, tokens: tuple[str, ...] = TRUE_TOKENS + FALSE_TOKENS) -> np.ndarray:
    """Per value of a :func:`text_array`: it is one of ``tokens`` (any case)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return _mask(pc.is_in(pc.utf8_lower(text), value_set=pa.array(tokens)))


def parse_numbers(col: Any) -> Parsed:
    """A column as float64 numbers: text by :data:`NUMBER_PATTERN`, numbers and booleans as they are."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not is_text(col):
        x = as_float(col.to_pandas() if isinstance(col, (pa.Array, pa.ChunkedArray)) else col)
        return Parsed(x, np.zeros(len(x), dtype=bool))
    text = text_array(col)
    ok = number_matches(text)
    values = pc.cast(pc.if_else(pa.array(ok), text, pa.scalar(None, pa.string())), pa.float64())
    return Parsed(values.to_numpy(zero_copy_only=False).astype(np.float64), present(text) & ~ok)


def parse_integers(col: Any) -> pd.Series | None:
    """A text column of integer literals as pandas' nullable ``Int64``, exactly (an id beyond 2**53
    keeps every digit); None when a present value is no integer literal or does not fit 64 bits."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = text_array(col)
    if (present(text) & ~integer_matches(text)).any():
        return None
    try:
        ints = pc.cast(pc.replace_substring_regex(text, r"^\+", ""), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # beyond int64
        return None
    out = ints.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return out.set_axis(col.index) if isinstance(col, pd.Series) else out


def parse_booleans(col: Any) -> Parsed:
    """A column as booleans (1.0 / 0.0): text by :data:`TRUE_TOKENS` / :data:`FALSE_TOKENS`, numbers 1 and 0."""
    import pyarrow as pa

    if not is_text(col):
        x = as_float(col.to_pandas() if isinstance(col, (pa.Array, pa.ChunkedArray)) else col)
        bad = ~np.isnan(x) & (x != 0) & (x != 1)
        return Parsed(np.where(bad, np.nan, x), bad)
    text = text_array(col)
    yes, no = boolean_matches(text, TRUE_TOKENS), boolean_matches(text, FALSE_TOKENS)
    return Parsed(np.where(yes, 1.0, np.where(no, 0.0, np.nan)), present(text) & ~(yes | no))


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


# -- the quantile sketch -----------------------------------------------------------------
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
def merge_sketches(parts: Iterable[tuple[int, Sequence[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Every block's sketch points, sorted, each weighted by its block's rows / points.

    ``parts`` holds ``(rows, points)`` per block (:func:`quantile_sketch` of its values);
    blocks without values are skipped. The result can be read with :func:`sketch_quantiles`.
    """
    used = [(n, np.asarray(p, dtype=np.float64)) for n, p in parts if len(p)]
    if not used:
        return np.zeros(0), np.zeros(0)
    values = np.concatenate([p for _, p in used])
    weights = np.concatenate([np.full(len(p), n / len(p)) for n, p in used])
    order = np.argsort(values, kind="stable")
    return values[order], weights[order]


def sketch_quantiles(values: np.ndarray, weights: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of merged sketch points: the first point whose cumulative weight reaches the level.

    Exact for level 0 (the minimum); with one block, the block's own sketch points. NaN
    when there are no points.
    """
    if not len(values):
        return np.full(len(levels), np.nan)
    cum = np.cumsum(weights)
    idx = np.searchsorted(cum, np.asarray(levels, dtype=np.float64) * cum[-1])
    return values[np.minimum(idx, len(values) - 1)]


# -- fixed quantile bins (the drift reference) ---------------------------------------------
DRIFT_BINS = 10


def bin_of(edges: Sequence[float] | np.ndarray, x: np.ndarray) -> np.ndarray:
    """The bin of each value: ``i`` where ``edges[i-1] <= x < edges[i]`` (bin 0 below the first edge,
    bin ``len(edges)`` from the last one up). The profile's reference counts and the monitor's
    window counts use this one rule, so equal values always land in the same bin.

    For a few edges the bin is counted as ``sum(x >= edge)`` (the same as ``searchsorted(...,
    side="right")`` for every number; NaN goes to bin 0, callers drop it first): ten vectorised
    comparisons over a million values cost a fraction of a binary search per value.
    """
    e = np.asarray(edges, dtype=np.float64)
    if len(e) > 32:
        return np.searchsorted(e, x, side="right")
    x = np.asarray(x, dtype=np.float64)
    idx = np.zeros(len(x), dtype=np.intp)
    for edge in e:
        idx += x >= edge
    return idx


def quantile_bins(values: np.ndarray, weights: np.ndarray, n: int, bins: int = DRIFT_BINS) -> dict[str, Any]:
    """Fixed bins for drift from merged sketch points (:func:`merge_sketches`): ``bins`` quantile bins of the
    reference, their reference counts (scaled to ``n`` values) and each bin's mean.

    The edges are the reference's inner quantiles (deduplicated: a column with few distinct values
    gets fewer bins), so they never move with the data being compared, and counts from any number
    of windows or blocks add up. Counts are approximate like the sketch (rank error ~1/points);
    the means let the Wasserstein distance be computed from the binned distributions.
    """
    if not len(values):
        return {"edges": [], "counts": [], "means": []}
    edges = np.unique(sketch_quantiles(values, weights, np.arange(1, bins) / bins))
    idx = bin_of(edges, values)
    w = np.bincount(idx, weights=weights, minlength=len(edges) + 1)
    sums = np.bincount(idx, weights=weights * values, minlength=len(edges) + 1)
    total = w.sum()
    exact = w * n / total if total > 0 else w
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: n - int(counts.sum())]] += 1
    means = [float(s / c) if c > 0 else None for s, c in zip(sums, w)]
    return {"edges": edges.tolist(), "counts": counts.tolist(), "means": means}


# -- the frequent-values sketch ---------------------------------------------------------
def counts_sketch(values: Sequence[Any], counts: Sequence[int] | np.ndarray, size: int,
                  n: int | None = None) -> dict[str, Any]:
    """A Misra-Gries summary of at most ``size`` counters from exact (value, count) pairs.

    When there are more than ``size`` values, the ``size + 1``-th largest count is taken
    off every counter and those left at zero or below are dropped (the Misra-Gries
    reduction). The result ``{"values", "counts", "n"}`` (``n``: every value counted,
    kept or not) is merged with :func:`merge_counts_sketches`, any number of times in
    any order (Agarwal et al., "Mergeable summaries", 2012).

    Error bound: for every value, ``true - (n - sum(counts)) / (size + 1) <= estimate <=
    true`` (a value not kept has estimate 0), so every value seen in more than
    ``n / (size + 1)`` rows is kept. With no more than ``size`` distinct values in all
    it is exact.
    """
    v = np.asarray(values, dtype=object)
    c = np.asarray(counts, dtype=np.int64)
    total = int(c.sum()) if n is None else int(n)
    if len(c) > size:
        cut = np.partition(c, len(c) - size - 1)[len(c) - size - 1]  # the (size+1)-th largest count
        keep = c > cut
        v, c = v[keep], c[keep] - cut
    return {"values": v.tolist(), "counts": c.tolist(), "n": total}


def merge_counts_sketches(parts: Iterable[dict[str, Any]], size: int) -> dict[str, Any]:
    """Add :func:`counts_sketch` summaries value by value, then reduce to ``size`` counters again."""
    parts = [p for p in parts if p["values"]] or [{"values": [], "counts": [], "n": 0}]
    n = sum(int(p["n"]) for p in parts)
    if len(parts) == 1 and len(parts[0]["values"]) <= size:
        return {"values": list(parts[0]["values"]), "counts": list(parts[0]["counts"]), "n": n}
    summed = pd.Series(np.concatenate([np.asarray(p["counts"], dtype=np.int64) for p in parts]),
                       index=pd.Index(np.concatenate([np.asarray(p["values"], dtype=object) for p in parts]),
                                      dtype=object)).groupby(level=0, sort=False).sum()
    return counts_sketch(summed.index.to_numpy(dtype=object), summed.to_numpy(dtype=np.int64), size, n)


def sketch_error(sketch: dict[str, Any], size: int) -> float:
    """The most any count in ``sketch`` is under its true value: (n - kept) / (size + 1)."""
    return (sketch["n"] - sum(sketch["counts"])) / (size + 1)


# -- row hashing ---------------------------------------------------------------------
def column_hashes(s: pd.Series) -> np.ndarray:
    """A uint64 hash per value of one column, the same whatever dtype its block arrived in.

    An int column with nulls reaches pandas as float in one block and as int in
    another, strings as object or Arrow-backed: numbers are hashed as float64, other
    values as their text (missing as None). Text is factorised first, so each distinct
    value is hashed once. Images (arrays) are hashed by their bytes.
    """
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return pd.util.hash_array(s.to_numpy(dtype=np.float64, na_value=np.nan), categorize=False)
    if holds_arrays(s):  # images: their bytes, not numpy's abbreviated repr
        return pd.util.hash_array(np.array(
            [None if v is None or (np.ndim(v) == 0 and pd.isna(v)) else
             hashlib.blake2b(np.ascontiguousarray(v).tobytes(), digest_size=16).hexdigest() for v in s],
            dtype=object), categorize=False)
    codes, texts = str_codes(s)  # each value as text; raw objects are not factorised (1 and 1.0 differ)
    # missing (code -1) hashes to the largest uint64, as pandas' categorize=True does
    return np.append(pd.util.hash_array(texts, categorize=False), _MISSING)[codes]


def holds_arrays(s: pd.Series) -> bool:
    """A tensor column, or an object column whose first present value is an array."""
    if "Tensor" in type(s.dtype).__name__:
        return True
    if s.dtype != object or not len(s):
        return False
    present = s.notna().to_numpy()
    return bool(present.any()) and isinstance(s.iloc[int(np.argmax(present))], np.ndarray)


_MISSING = np.uint64(np.iinfo(np.uint64).max)


_M1, _M2, _PRIME = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x100000001B3)


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every input bit affects every output bit."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_columns(columns: list[np.ndarray], n: int, seed: int = 0) -> np.ndarray:
    """A 64-bit hash per row from per-column value hashes (:func:`column_hashes`), mixed with ``seed``.

    The columns are folded in order; no DataFrame is built. pandas hashes numbers
    without its key, so the seed is mixed in at the end.
    """
    h = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in columns:
            h = (h * _PRIME) ^ a
        return _mix(h ^ _mix(np.full(1, seed & 0xFFFFFFFF, dtype=np.uint64)))  # the seed mod 2**32


def row_uniform(df: pd.DataFrame, seed: int) -> np.ndarray:
    """A number in [0, 1) per row, a pure function of the row's values and ``seed``."""
    h = hash_columns([column_hashes(df[c]) for c in df.columns], len(df), seed)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
