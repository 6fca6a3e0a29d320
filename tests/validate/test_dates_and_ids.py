"""Validate's column-kind rules: date strings become datetime columns, identifier-like columns are named."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from raypipe.schema import feature_columns, infer_schema, refine_schema
from raypipe.rowchecks import annotate
from raypipe.validate.checks import batch_stats, column_kind_findings, merge_stats
from raypipe.validate.reference import schema_findings


def _messy(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """An export as they come: ISO dates (a few broken), a dd/mm column, an order ref, an int id."""
    rng = np.random.default_rng(seed)
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    signup = days.strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=object)
    signup[[5, 17]] = ["31/31/2024", "yesterday"]
    signup[[8, 9]] = None
    return pd.DataFrame({
        "signup": signup,
        "paid_on": days.strftime("%d/%m/%Y"),
        "order_ref": [f"ORD-{i:06d}" for i in rng.permutation(n)],
        "customer_no": rng.permutation(n) + 10_000,
        "plan": rng.choice(["free", "pro", "team"], n),
        "visits": rng.integers(0, 9, n),
        "churned": rng.integers(0, 2, n),
    })


def _schema(df: pd.DataFrame, **kw) -> dict:
    s = infer_schema(pa.Table.from_pandas(df, preserve_index=False).schema, target="churned", task="classification",
                     id_columns=kw.pop("id_columns", []))
    return refine_schema(s, df, **kw)


def test_date_strings_become_datetime_columns_with_their_format() -> None:
    s = _schema(_messy())
    assert s["columns"]["signup"] == {"type": "datetime", "nullable": True, "format": "iso",
                                      "date_fraction": round(296 / 298, 6)}
    assert s["columns"]["paid_on"]["type"] == "datetime" and s["columns"]["paid_on"]["format"] == "dmy"
    assert s["features"]["datetime"] == ["signup", "paid_on"] and s["features"]["categorical"] == ["plan"]


def test_identifier_like_strings_leave_the_features_integers_are_only_flagged() -> None:
    s = _schema(_messy())
    assert s["columns"]["order_ref"]["id_like"] and s["columns"]["order_ref"]["distinct_fraction"] == 1.0
    assert s["columns"]["customer_no"]["id_like"]
    assert "order_ref" not in feature_columns(s) and "customer_no" in s["features"]["numeric"]
    assert "visits" in s["features"]["numeric"] and not s["columns"]["visits"].get("id_like")
    findings = column_kind_findings(s, {"columns": {}}, high_cardinality=1000)
    assert [(f["check"], f["column"]) for f in findings] == [("id_like", "order_ref"), ("id_like", "customer_no")]
    assert "data.id_columns" in findings[0]["message"] and "kept out of the features" in findings[0]["message"]
    assert "used as a number" in findings[1]["message"]


def test_declared_ids_target_and_small_samples_are_left_alone() -> None:
    df = _messy()
    s = _schema(df, id_columns=["order_ref"])
    assert not s["columns"]["order_ref"].get("id_like") and not s["columns"]["churned"].get("id_like")
    few = _schema(df.head(30))  # 30 distinct refs say little: too few values to call it an identifier
    assert not few["columns"]["order_ref"].get("id_like") and "order_ref" in few["features"]["categorical"]


def test_a_text_column_with_some_dates_stays_text() -> None:
    df = _messy()
    df["note"] = ["2024-01-01" if i % 3 else "call back" for i in range(len(df))]
    s = _schema(df)
    assert s["columns"]["note"]["type"] == "string"
    assert _schema(df, datetime_fraction=0.6)["columns"]["note"]["type"] == "datetime"


def test_bad_dates_are_quarantined_with_the_value_and_counted_by_kind() -> None:
    df = _messy()
    s = _schema(df)
    out = annotate(df.copy(), s)
    bad = out["__reason"].dropna()
    assert bad.to_dict() == {5: "signup: not a date: '31/31/2024'", 17: "signup: not a date: 'yesterday'"}
    stats = merge_stats([batch_stats(out.iloc[:100].copy(), "churned"), batch_stats(out.iloc[100:].copy(), "churned")])
    assert stats["reasons"] == {"signup: not a date": 2}
    assert stats["examples"]["signup: not a date"] == ["31/31/2024", "yesterday"]


def test_ambiguous_day_month_is_warned_and_dayfirst_settles_it() -> None:
    df = _messy()
    df["paid_on"] = [f"{1 + i % 12:02d}/{1 + i % 11:02d}/2024" for i in range(len(df))]  # every value reads both ways
    s = _schema(df)
    assert s["columns"]["paid_on"]["format"] == "mdy" and s["columns"]["paid_on"]["ambiguous_order"]
    warn = [f for f in column_kind_findings(s, {"columns": {}}, 1000) if f["check"] == "date_order"]
    assert len(warn) == 1 and "validate.dayfirst" in warn[0]["message"]
    s = _schema(df, dayfirst=True)
    assert s["columns"]["paid_on"]["format"] == "dmy" and "ambiguous_order" not in s["columns"]["paid_on"]


def test_high_cardinality_strings_are_warned_about() -> None:
    s = _schema(_messy())
    profile = {"columns": {"plan": {"distinct": "10000+"}}}
    (f,) = column_kind_findings(s, profile, high_cardinality=1000)[2:]
    assert f["check"] == "high_cardinality" and f["column"] == "plan" and "10000+" in f["message"]
    assert "features.categorical.encode: hashing" in f["message"] and "data.id_columns" in f["message"]
    assert not column_kind_findings(s, {"columns": {"plan": {"distinct": 3}}}, 1000)[2:]


def test_reference_accepts_dates_as_text_or_arrow_dates() -> None:
    s = _schema(_messy())
    stats = {"rows": 300, "reasons": {"signup: not a date": 2}, "unparsed": {"signup": 2}}
    as_text = pa.schema([("signup", pa.string())])
    as_dates = pa.schema([("signup", pa.date32())])
    assert not [f for f in schema_findings(s, as_text, stats, 0.3, "the reference schema") if f["column"] == "signup"]
    assert not [f for f in schema_findings(s, as_dates, stats, 0.3, "the reference schema") if f["column"] == "signup"]
    broken = {"rows": 300, "reasons": {"signup: not a date": 200}, "unparsed": {"signup": 200}}
    (f,) = [f for f in schema_findings(s, as_text, broken, 0.3, "the reference schema") if f["column"] == "signup"]
    assert f["check"] == "changed_type" and "not dates" in f["message"]


def test_arrow_date_and_timestamp_columns_are_datetime() -> None:
    arrow = pa.schema([("Year", pa.date32()), ("at", pa.timestamp("ms", tz="UTC")), ("y", pa.int64())])
    s = infer_schema(arrow, target="y", task="classification", id_columns=[])
    assert s["columns"]["Year"] == {"type": "datetime", "nullable": True, "format": "iso"}
    assert s["features"]["datetime"] == ["Year", "at"]
