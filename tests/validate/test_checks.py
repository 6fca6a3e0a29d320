"""Unit tests for ``raypipe.schema`` and ``raypipe.validate.checks``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.errors import DataValidationError
from raypipe.rowchecks import MAX_EXAMPLES, REASON, annotate, coerce_numeric, missing_column_findings, null_findings
from raypipe.validate.checks import batch_stats, merge_stats, row_findings
from raypipe.schema import feature_columns, infer_schema, label_strings, label_value

ARROW = pa.schema([
    ("transaction_id", pa.int64()),
    ("amount", pa.float64()),
    ("score", pa.float32()),
    ("price", pa.decimal128(10, 2)),
    ("hour", pa.int32()),
    ("card_present", pa.bool_()),
    ("country", pa.string()),
    ("device", pa.large_string()),
    ("channel", pa.dictionary(pa.int32(), pa.string())),
    ("empty", pa.null()),
    ("__u", pa.float64()),
    ("is_fraud", pa.int64()),
])


def schema() -> dict:
    return infer_schema(ARROW, target="is_fraud", task="classification", id_columns=["transaction_id"])


# --- infer_schema -----------------------------------------------------------------------------------
def test_infer_schema_types() -> None:
    s = schema()
    types = {c: v["type"] for c, v in s["columns"].items()}
    assert types == {
        "transaction_id": "integer", "amount": "number", "score": "number", "price": "number", "hour": "integer",
        "card_present": "boolean", "country": "string", "device": "string", "channel": "string",
        "empty": "number", "is_fraud": "integer",
    }
    assert "__u" not in s["columns"]  # internal columns are skipped
    assert s["target"] == {"name": "is_fraud", "type": "integer", "task": "classification"}
    assert s["id_columns"] == ["transaction_id"]


def test_infer_schema_features_exclude_target_and_ids() -> None:
    s = schema()
    assert s["features"]["numeric"] == ["amount", "score", "price", "hour", "card_present", "empty"]
    assert s["features"]["categorical"] == ["country", "device", "channel"]
    feats = feature_columns(s)
    assert "is_fraud" not in feats and "transaction_id" not in feats


def test_infer_schema_unsupported_type_names_column() -> None:
    arrow = ARROW.append(pa.field("waited", pa.duration("s"))).append(pa.field("tags", pa.list_(pa.string())))
    with pytest.raises(DataValidationError) as info:
        infer_schema(arrow, target="is_fraud", task="classification", id_columns=[])
    assert len(info.value.problems) == 2
    assert "'waited'" in info.value.problems[0] and "duration" in info.value.problems[0]
    assert "'tags'" in info.value.problems[1]
    assert info.value.exit_code == 3


def test_infer_schema_unsupported_type_in_id_columns_still_rejected() -> None:
    # the message suggests listing it in data.id_columns; either it is accepted there, or
    # at least the error names the column. Here: it names the column.
    arrow = pa.schema([("ts", pa.duration("s")), ("y", pa.int64())])
    try:
        s = infer_schema(arrow, target="y", task="classification", id_columns=["ts"])
    except DataValidationError as exc:
        assert any("'ts'" in p for p in exc.problems)
    else:
        assert "ts" not in feature_columns(s)


def test_infer_schema_missing_target() -> None:
    with pytest.raises(DataValidationError) as info:
        infer_schema(ARROW, target="label", task="classification", id_columns=[])
    assert any("'label'" in p and "not found" in p for p in info.value.problems)


def test_infer_schema_missing_id_column() -> None:
    with pytest.raises(DataValidationError) as info:
        infer_schema(ARROW, target="is_fraud", task="classification", id_columns=["nope"])
    assert any("data.id_columns" in p and "'nope'" in p for p in info.value.problems)


def test_infer_schema_reports_all_problems_at_once() -> None:
    arrow = pa.schema([("ts", pa.duration("s")), ("x", pa.float64())])
    with pytest.raises(DataValidationError) as info:
        infer_schema(arrow, target="y", task="classification", id_columns=["id"])
    assert len(info.value.problems) == 3


# --- annotate ---------------------------------------------------------------------------------------
SMALL = {
    "columns": {"x": {"type": "number"}, "n": {"type": "integer"}, "c": {"type": "string"}, "y": {"type": "integer"}},
    "target": {"name": "y", "type": "integer", "task": "classification"},
}


def is_valid(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def test_annotate_valid_rows() -> None:
    df = pd.DataFrame({"x": [1.0, np.nan], "n": [1, 2], "c": ["a", None], "y": [0, 1]})
    out = annotate(df, SMALL, classes=["0", "1"])
    assert out[REASON].map(is_valid).all()
    assert out[REASON].isna().all()


def test_annotate_non_numeric_string_object_dtype() -> None:
    df = pd.DataFrame({
        "x": pd.Series(["1.5", "abc", None, 2], dtype=object),
        "n": [1, 2, 3, 4], "c": ["a"] * 4, "y": [0, 1, 0, 1],
    })
    out = annotate(df, SMALL, classes=["0", "1"])
    reasons = out[REASON].tolist()
    assert reasons[1] == "x: not a number: 'abc'"  # the reason names the value that did not parse
    assert is_valid(reasons[0]) and is_valid(reasons[2]) and is_valid(reasons[3])
    assert out["x"][1] == "abc"  # the raw value is kept: quarantine and error examples show it
    fixed = coerce_numeric(out, SMALL)
    assert fixed["x"].dtype == np.float64
    assert fixed["x"][0] == 1.5 and np.isnan(fixed["x"][1]) and fixed["x"][3] == 2.0


def test_annotate_non_numeric_string_str_dtype() -> None:
    """pandas 3 gives string data the ``str`` dtype, not object (e.g. a numeric column that
    arrives as text from Arrow): non-numbers must still be flagged and the column made numeric."""
    df = pd.DataFrame({"x": pd.Series(["1.5", "abc", None]), "n": [1, 2, 3], "c": ["a"] * 3, "y": [0, 1, 0]})
    assert df["x"].dtype != object
    out = annotate(df, SMALL, classes=["0", "1"])
    assert out[REASON][1] == "x: not a number: 'abc'"
    assert is_valid(out[REASON][0]) and is_valid(out[REASON][2])
    assert coerce_numeric(out, SMALL)["x"].dtype == np.float64


def test_annotate_infinite() -> None:
    df = pd.DataFrame({"x": [np.inf, -np.inf, 1.0], "n": [1, 2, 3], "c": ["a"] * 3, "y": [0, 1, 0]})
    out = annotate(df, SMALL)
    assert out[REASON].tolist()[:2] == ["x: infinite value", "x: infinite value"]
    assert is_valid(out[REASON][2])


def test_annotate_infinite_string_object_dtype() -> None:
    df = pd.DataFrame({"x": pd.Series(["inf", "3"], dtype=object), "n": [1, 2], "c": ["a", "b"], "y": [0, 1]})
    out = annotate(df, SMALL)
    assert out[REASON][0] == "x: infinite value"


def test_annotate_missing_target_and_unseen_class() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "n": [1, 2, 3, 4], "c": ["a"] * 4, "y": [0.0, np.nan, 2.0, 1.0]})
    out = annotate(df, SMALL, classes=["0", "1"])
    r = out[REASON].tolist()
    assert is_valid(r[0]) and is_valid(r[3])  # 0.0 and 1.0 are the classes "0" and "1"
    assert r[1] == "y: target is missing"
    assert r[2] == "y: class not seen in the training split"


def test_annotate_first_reason_wins_and_no_classes_means_no_class_check() -> None:
    df = pd.DataFrame({"x": [np.inf], "n": [1], "c": ["a"], "y": [np.nan]})
    assert annotate(df.copy(), SMALL)[REASON][0] == "x: infinite value"
    df = pd.DataFrame({"x": [1.0], "n": [1], "c": ["a"], "y": [7]})
    assert is_valid(annotate(df, SMALL, classes=None)[REASON][0])


def test_annotate_ignores_columns_absent_from_batch() -> None:
    df = pd.DataFrame({"x": [1.0], "y": [0]})
    out = annotate(df, SMALL, classes=["0"])
    assert is_valid(out[REASON][0])


# --- stats ------------------------------------------------------------------------------------------------
def annotated() -> pd.DataFrame:
    df = pd.DataFrame({
        "x": pd.Series(["a1", "a2", "a3", "a4", 1.0, np.inf, None], dtype=object),
        "n": [1, 2, 3, 4, 5, 6, 7], "c": ["a", None, "b", None, "a", "a", None],
        "y": [0, 1, 0, 1, 1, 0, None],
    })
    return annotate(df, SMALL, classes=["0", "1"])


def test_batch_stats_counts() -> None:
    st = batch_stats(annotated(), "y")
    assert st["rows"] == 7
    assert st["invalid"] == 6
    assert st["reasons"] == {"x: not a number": 4, "x: infinite value": 1, "y: target is missing": 1}
    assert len(st["examples"]["x: not a number"]) == MAX_EXAMPLES
    assert st["nulls"]["c"] == 3 and st["nulls"]["y"] == 1
    assert st["nulls"]["x"] == 1  # only the None: non-numbers are invalid rows, not missing values
    assert REASON not in st["nulls"]
    assert st["classes"] == {"0": 3, "1": 3}


def test_merge_stats() -> None:
    a = batch_stats(annotated(), "y")
    b = batch_stats(annotate(pd.DataFrame({"x": [1.0, 2.0], "n": [1, 2], "c": ["a", "b"], "y": [1, 2]}), SMALL, ["0", "1"]), "y")
    m = merge_stats([a, b])
    assert m["rows"] == 9 and m["invalid"] == 7
    assert m["reasons"]["x: not a number"] == 4
    assert m["reasons"]["y: class not seen in the training split"] == 1
    assert m["nulls"]["c"] == 3 and m["nulls"]["x"] == 1
    assert m["classes"] == {"0": 3, "1": 4, "2": 1}
    assert all(len(v) <= MAX_EXAMPLES for v in m["examples"].values())
    assert merge_stats([])["rows"] == 0
    lines = [f["message"] for f in row_findings(m, "train")]
    assert any(line.startswith("train: 4 row(s) invalid — x: not a number") for line in lines)


def test_missing_column_findings() -> None:
    problems = [f["message"] for f in missing_column_findings(SMALL, present=["x", "y"])]
    assert len(problems) == 2
    assert "'n'" in problems[0] and "missing" in problems[0] and "integer" in problems[0]
    assert "'c'" in problems[1] and "string" in problems[1]


def test_null_findings_fraction() -> None:
    stats = {"rows": 10, "nulls": {"x": 4, "n": 3, "c": 0, "y": 0, "extra": 9}}
    problems = [f["message"] for f in null_findings(stats, SMALL, max_missing=0.3)]
    assert len(problems) == 1  # 30% is not over the limit; 'extra' is not in the schema
    p = problems[0]
    assert "'x'" in p and "40.0%" in p and "validate.max_missing_fraction=0.3" in p


# --- labels ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        pd.Series([1, 0]),
        pd.Series([1.0, 0.0]),
        pd.Series(["1", "0"]),
        pd.Series(["1", "0"], dtype=object),
        pd.Series(np.array([1, 0], dtype=np.int8)),
        pd.Series([1, 0], dtype="Int64"),
        [1, 0],
        np.array([1.0, 0.0]),
    ],
)
def test_label_strings_consistent(values) -> None:
    assert label_strings(values).tolist() == ["1", "0"]


def test_label_strings_keeps_missing() -> None:
    assert label_strings(pd.Series([1.0, np.nan, 0.0])).tolist() == ["1", None, "0"]
    # pandas 3 infers the str dtype for the result: missing is NaN there, still "missing"
    out = label_strings(pd.Series(["a", None]))
    assert out[0] == "a" and pd.isna(out[1])
    assert label_strings(pd.Series([1, None], dtype="Int64")).tolist() == ["1", None]
    assert label_strings(pd.Series([True, False])).tolist() == ["True", "False"]


def test_label_strings_non_integral_floats_and_index() -> None:
    s = pd.Series([1.5, 2.0], index=[10, 20])
    out = label_strings(s)
    assert out.tolist() == ["1.5", "2"]
    assert out.index.tolist() == [10, 20]


def test_label_value_round_trip() -> None:
    assert label_value("1", "integer") == 1
    assert label_value("1.5", "number") == 1.5
    assert label_value("True", "boolean") is True and label_value("False", "boolean") is False
    assert label_value("cat", "string") == "cat"
