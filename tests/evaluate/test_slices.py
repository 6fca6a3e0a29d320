"""Slice labels per column kind, and the gap between the best and worst eligible slice."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.evaluate.slices import MISSING, slice_keys, sliced_metrics

QUARTILE = re.compile(r"^([\[(])(-?[\d.e+-]+), (-?[\d.e+-]+)\]$")


# --- slice_keys ---------------------------------------------------------------------
def test_string_column_with_missing_values():
    s = pd.Series(["a", None, "b", "a", np.nan], index=[10, 11, 12, 13, 14], dtype=object)
    keys = slice_keys(s)
    assert keys.tolist() == ["a", MISSING, "b", "a", MISSING]
    assert keys.index.tolist() == [10, 11, 12, 13, 14]
    assert MISSING == "(missing)"


@pytest.mark.parametrize("dtype", ["str", "string", pd.ArrowDtype(pa.string()), pd.ArrowDtype(pa.large_string())])
def test_string_dtypes(dtype):
    s = pd.Series(["x", None, "y", "x"], dtype=dtype)
    assert slice_keys(s).tolist() == ["x", MISSING, "y", "x"]


def test_high_cardinality_strings_slice_by_value():
    s = pd.Series([f"id{i}" for i in range(50)], dtype="str")
    keys = slice_keys(s)
    assert keys.nunique() == 50
    assert keys.tolist() == s.tolist()


def test_boolean_columns():
    assert slice_keys(pd.Series([True, False, True])).tolist() == ["True", "False", "True"]
    nullable = pd.Series([True, None, False], dtype="boolean")
    assert slice_keys(nullable).tolist() == ["True", MISSING, "False"]


def test_low_cardinality_ints_by_value():
    s = pd.Series([3, 1, 2, 3, 1, 1])
    assert slice_keys(s).tolist() == ["3", "1", "2", "3", "1", "1"]
    nullable = pd.Series([1, None, 2], dtype="Int64")
    assert slice_keys(nullable).tolist() == ["1", MISSING, "2"]
    # exactly max_distinct values still slices by value
    s20 = pd.Series(np.arange(20))
    assert slice_keys(s20).nunique() == 20
    assert slice_keys(s20, max_distinct=5).nunique() == 4


def _check_quartiles(keys: pd.Series, n_valid: int):
    labels = [k for k in keys.unique() if k != MISSING]
    assert 1 <= len(labels) <= 4
    parsed = sorted((float(QUARTILE.match(k).group(2)), float(QUARTILE.match(k).group(3)), QUARTILE.match(k).group(1), k)
                    for k in labels)
    # consecutive, open on the left except the first, which is closed (pandas.qcut's bins)
    assert [p[2] for p in parsed] == ["["] + ["("] * (len(parsed) - 1)
    for a, b in zip(parsed, parsed[1:]):
        assert a[1] == pytest.approx(b[0])
    counts = keys[keys != MISSING].value_counts()
    assert counts.sum() == n_valid
    return parsed, counts


def test_high_cardinality_float_quartiles():
    rng = np.random.default_rng(0)
    arr = rng.normal(50, 10, 400)
    arr[[5, 77, 300]] = np.nan
    s = pd.Series(arr)
    keys = slice_keys(s)
    assert (keys == MISSING).sum() == 3
    assert keys[[5, 77, 300]].tolist() == [MISSING] * 3
    parsed, counts = _check_quartiles(keys, 397)
    assert len(parsed) == 4
    for c in counts:
        assert abs(c - 397 / 4) <= 2
    # each row's value lies inside its label's bin
    bounds = {p[3]: (p[0], p[1], p[2]) for p in parsed}
    for v, k in zip(arr, keys):
        if np.isnan(v):
            continue
        lo, hi, _ = bounds[k]
        assert v >= lo - 1e-3 * abs(lo)
        assert v <= hi + 1e-3 * abs(hi)
    # the minimum lands in the first bin, the maximum in the last (closed) one
    assert keys[np.nanargmin(arr)] == parsed[0][3]
    assert keys[np.nanargmax(arr)] == parsed[-1][3]


def test_quartile_labels_by_hand():
    s = pd.Series(np.arange(100, dtype=float))
    keys = slice_keys(s)
    assert keys.value_counts().to_dict() == {
        "[0, 24.75]": 25, "(24.75, 49.5]": 25, "(49.5, 74.25]": 25, "(74.25, 99]": 25}
    assert keys[0] == "[0, 24.75]" and keys[99] == "(74.25, 99]"


def test_a_value_on_a_quartile_edge_falls_in_the_lower_bin():
    s = pd.Series(np.r_[np.arange(1, 100, dtype=float), 50.0])  # the median, 50, is a value of the column
    keys = slice_keys(s)
    assert keys[49] == keys[99] == "(25.75, 50]" and keys[50] == "(50, 74.25]"
    assert keys.value_counts().to_dict() == {"[1, 25.75]": 25, "(25.75, 50]": 26, "(50, 74.25]": 24, "(74.25, 99]": 25}


@pytest.mark.parametrize("dtype", ["Int64", "Float64", pd.ArrowDtype(pa.float64()), pd.ArrowDtype(pa.int64())])
def test_high_cardinality_nullable_numerics(dtype):
    s = pd.Series(list(range(40)) + [None], dtype=dtype)
    keys = slice_keys(s)
    assert keys.iloc[-1] == MISSING
    parsed, counts = _check_quartiles(keys, 40)
    assert len(parsed) == 4
    assert sorted(counts.tolist()) == [10, 10, 10, 10]


def test_skewed_column_has_fewer_bins():
    s = pd.Series(np.r_[np.zeros(80), np.arange(1, 31, dtype=float)])
    keys = slice_keys(s)
    parsed, _ = _check_quartiles(keys, 110)
    assert len(parsed) < 4


# --- sliced_metrics -----------------------------------------------------------------
def _acc(y, pred):
    def score(mask):
        return {"accuracy": float(np.mean(y[mask] == pred[mask])) if mask.any() else None, "label": "ignored"}
    return score


def test_sliced_metrics_gap_best_worst():
    keys = pd.Series(["a"] * 40 + ["b"] * 50 + ["c"] * 30)
    y = np.ones(120, dtype=int)
    pred = np.r_[np.r_[np.ones(36), np.zeros(4)], np.r_[np.ones(25), np.zeros(25)], np.r_[np.ones(21), np.zeros(9)]].astype(int)
    out = sliced_metrics(keys, _acc(y, pred), "accuracy", lower_is_better=False, min_rows=10)
    vals = out["values"]
    assert sum(v["rows"] for v in vals.values()) == 120
    assert {k: v["rows"] for k, v in vals.items()} == {"a": 40, "b": 50, "c": 30}
    assert vals["a"]["accuracy"] == pytest.approx(0.9)
    assert vals["b"]["accuracy"] == pytest.approx(0.5)
    assert vals["c"]["accuracy"] == pytest.approx(0.7)
    assert "label" not in vals["a"]  # non-numeric entries are dropped
    assert out["best"] == "a" and out["worst"] == "b"
    assert out["gap"] == pytest.approx(0.4)
    assert out["metric"] == "accuracy" and out["min_rows"] == 10


def test_tiny_slice_reported_but_not_gated():
    keys = pd.Series(["a"] * 40 + ["b"] * 40 + ["tiny"] * 2)
    y = np.ones(82, dtype=int)
    pred = np.r_[np.r_[np.ones(32), np.zeros(8)], np.r_[np.ones(24), np.zeros(16)], np.zeros(2)].astype(int)
    out = sliced_metrics(keys, _acc(y, pred), "accuracy", lower_is_better=False, min_rows=30)
    assert out["values"]["tiny"] == {"rows": 2, "accuracy": 0.0}
    assert out["best"] == "a" and out["worst"] == "b"
    assert out["gap"] == pytest.approx(0.8 - 0.6)
    # a tiny perfect slice cannot be "best" either
    pred2 = pred.copy()
    pred2[-2:] = 1
    out2 = sliced_metrics(keys, _acc(y, pred2), "accuracy", lower_is_better=False, min_rows=30)
    assert out2["values"]["tiny"]["accuracy"] == 1.0
    assert out2["best"] == "a" and out2["gap"] == pytest.approx(0.2)


def test_lower_is_better_reverses():
    keys = pd.Series(["x"] * 10 + ["y"] * 10 + ["z"] * 10)
    err = np.r_[np.full(10, 1.0), np.full(10, 3.0), np.full(10, 2.0)]

    def score(mask):
        return {"rmse": float(np.sqrt(np.mean(err[mask] ** 2)))}

    out = sliced_metrics(keys, score, "rmse", lower_is_better=True, min_rows=5)
    assert out["best"] == "x" and out["worst"] == "y"
    assert out["gap"] == pytest.approx(2.0)
    assert out["gap"] >= 0
    higher = sliced_metrics(keys, score, "rmse", lower_is_better=False, min_rows=5)
    assert higher["best"] == "y" and higher["worst"] == "x"


def test_fewer_than_two_eligible_slices_gives_no_gap():
    keys = pd.Series(["a"] * 40 + ["b"] * 3)
    y = np.ones(43, dtype=int)
    pred = np.r_[np.ones(40), np.zeros(3)].astype(int)
    out = sliced_metrics(keys, _acc(y, pred), "accuracy", lower_is_better=False, min_rows=10)
    assert out["gap"] is None and out["best"] is None and out["worst"] is None
    assert set(out["values"]) == {"a", "b"}
    single = sliced_metrics(pd.Series(["a"] * 5), _acc(y[:5], pred[:5]), "accuracy",
                            lower_is_better=False, min_rows=1)
    assert single["gap"] is None


def test_slice_with_undefined_metric_is_left_out():
    keys = pd.Series(["a"] * 10 + ["b"] * 10 + ["c"] * 10)

    def score(mask):
        i = int(np.flatnonzero(mask)[0]) // 10
        return {"auc": [0.9, None, 0.6][i]}

    out = sliced_metrics(keys, score, "auc", lower_is_better=False, min_rows=5)
    assert out["values"]["b"] == {"rows": 10, "auc": None}
    assert out["best"] == "a" and out["worst"] == "c" and out["gap"] == pytest.approx(0.3)


def test_sliced_metrics_on_slice_keys_with_missing():
    col = pd.Series(["u", None, "v", "u", None, "v"] * 10, dtype="str")
    keys = slice_keys(col)
    y = np.ones(60, dtype=int)
    pred = np.ones(60, dtype=int)
    pred[keys.to_numpy() == MISSING] = 0
    out = sliced_metrics(keys, _acc(y, pred), "accuracy", lower_is_better=False, min_rows=5)
    assert set(out["values"]) == {"u", "v", MISSING}
    assert out["values"][MISSING] == {"rows": 20, "accuracy": 0.0}
    assert out["worst"] == MISSING and out["gap"] == pytest.approx(1.0)
