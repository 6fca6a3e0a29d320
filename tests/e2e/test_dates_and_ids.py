"""A CSV export as it comes, end to end: an ISO date column, a ``Year``-style date column, a dd/mm/yyyy
column with a broken value, and an order reference that identifies rows. The dates become calendar
features, the bad date is quarantined with its value, the reference is named and kept out of the
features, and the registered model answers a request that sends dates as strings exactly as the
batch path answers the stored rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.datasets import read_parquet
from raypipe.progress import Progress
from raypipe.serve.request_model import request_model
from tests.conftest import champion_predictor

N = 400


def _export(path) -> None:
    rng = np.random.default_rng(4)
    at = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 700 * 24, N), unit="h")
    winter = np.cos(2 * np.pi * (at.month.to_numpy() - 1) / 12)
    plan = rng.choice(["free", "pro", "team"], N)
    churn = rng.random(N) < 1 / (1 + np.exp(-(3 * winter + (plan == "free") - 0.5)))
    ordered = np.where(rng.random(N) < 0.5, at.strftime("%Y-%m-%d %H:%M:%S"), at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    ordered = ordered.astype(object)
    ordered[[3, 50]] = ["31/31/2024", "n/a"]  # what a hand-edited export holds
    pd.DataFrame({
        "Year": (pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 9, N) * 365, unit="D")).strftime("%Y-%m-%d"),
        "ordered_at": ordered,
        "paid_on": at.strftime("%d/%m/%Y"),
        "order_ref": [f"ORD-{i:07d}" for i in rng.permutation(N)],
        "plan": plan,
        "amount": rng.exponential(40.0, N).round(2),
        "churned": churn.astype(int),
    }).to_csv(path, index=False)


def test_dates_and_an_identifier_through_the_pipeline_and_a_request(ray_session, tmp_path):
    _export(tmp_path / "orders.csv")
    spec = {
        "name": "t-dates", "storage": str(tmp_path / "store"),
        "data": {"source": {"type": "csv", "path": str(tmp_path / "orders.csv")}, "target": "churned"},
        "model": {"kind": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 500}},
        "evaluate": {"gate": {"min": {"roc_auc": 0.6}}},
        "monitor": {"drift": {"min_rows": 100}},
    }
    result = raypipe.run(spec, progress=Progress(quiet=True))
    val = result.outputs["validate"]
    schema = val.read_json(val.outputs.schema)
    cols = schema["columns"]
    assert cols["Year"]["type"] == "datetime" and cols["ordered_at"]["format"] == "iso"
    assert cols["paid_on"] == {"type": "datetime", "nullable": False, "format": "dmy", "date_fraction": 1.0}
    assert schema["features"]["datetime"] == ["Year", "ordered_at", "paid_on"]
    assert schema["features"]["categorical"] == ["plan"] and cols["order_ref"]["id_like"]
    assert any("'order_ref' looks like an identifier" in w and "data.id_columns" in w for w in val.outputs.warnings)

    quarantined = pd.concat(read_parquet(val.store, f"quarantine/{s}").to_pandas()
                            for s, c in val.outputs.counts.items() if c["quarantined"])
    # 'n/a' is one of data.na_values: a missing date, not a bad one
    assert sorted(quarantined["__reason"]) == ["ordered_at: not a date: '31/31/2024'"]
    assert cols["ordered_at"]["nullable"]

    names = result.outputs["features"].read_json("features.json")["feature_names"]
    assert "ordered_at:hour_sin" in names and "Year:month_cos" in names and "Year:hour" not in names
    assert not [n for n in names if n.startswith(("order_ref", "ordered_at=", "paid_on="))]

    predictor = champion_predictor(tmp_path / "store", "t-dates")
    stored = read_parquet(val.store, val.outputs.splits["test"]).to_pandas().head(20)
    offline = predictor.predict_records(stored)
    Row = request_model(schema)
    requests = [Row(**{
        "Year": pd.Timestamp(r["Year"]).date().isoformat(), "ordered_at": pd.Timestamp(r["ordered_at"]).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "paid_on": r["paid_on"], "plan": r["plan"], "amount": r["amount"]}).model_dump(exclude_none=True)
        for r in stored.to_dict("records")]
    assert predictor.predict_records(requests) == offline
    one = predictor.predict_records([requests[0]])
    # One row alone: the same prediction; its float32 scores may differ in the last place (BLAS sums a
    # 1-row product in another order than a 20-row one)
    assert one[0]["prediction"] == offline[0]["prediction"]
    assert one[0]["scores"] == pytest.approx(offline[0]["scores"], rel=1e-6)

    # monitoring the export itself: each date column by its weekday (and hour, where it has a time of day)
    report = raypipe.monitor(spec, input=str(tmp_path / "orders.csv"))
    dated = {c: e for c, e in report.columns.items() if ":" in c}
    assert set(dated) == {"Year:weekday", "ordered_at:weekday", "ordered_at:hour", "paid_on:weekday"}
    assert not {"Year", "ordered_at", "paid_on"} & set(report.columns)
    assert {c: e.drifted for c, e in dated.items()} == dict.fromkeys(dated, False)
    assert report.columns["ordered_at:hour"].model_dump()["outside_training_range"] < 0.05
