"""New sources through the whole pipeline: ingest -> validate -> features -> train -> evaluate -> register.

Images (scikit-learn's digits written as PNG files), text files, SQLite and PostgreSQL
(a real server), a built-in scikit-learn set and the synthetic sensors series. Each
registered model answers a single request exactly as the batch path does.
"""
from __future__ import annotations

import sqlite3
import tempfile

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.datasets import read_parquet
from raypipe.progress import Progress
from raypipe.serve.request_model import request_model
from tests.conftest import champion_predictor

quiet = Progress(quiet=True)
LOGREG = {"kind": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 500}}


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("sources") / "store"


def _test_rows(result) -> pd.DataFrame:
    val = result.outputs["validate"]
    return read_parquet(val.store, val.outputs.splits["test"]).to_pandas()


def test_digits_png_images_end_to_end(ray_session, storage, tmp_path):
    from raypipe.ingest.unstructured import write_digits_png

    n = write_digits_png(tmp_path / "png", per_class=80)
    spec = {
        "name": "t-digits-png", "storage": str(storage),
        "data": {"source": {"type": "images", "path": str(tmp_path / "png"), "size": [8, 8]}, "target": "label"},
        "features": {"image": {"normalize": "standard"}, "pca": {"components": 24}},
        "model": LOGREG,
        "evaluate": {"metrics": ["accuracy", "f1_macro"], "gate": {"min": {"accuracy": 0.85}}},
    }
    result = raypipe.run(spec, progress=quiet)
    assert result.status == "ok" and result.metrics["accuracy"] >= 0.85
    assert result.outputs["ingest"].outputs.input_rows == n == 800
    schema = result.outputs["validate"].store.read_json("schema.json")
    assert schema["columns"]["image"]["type"] == "image" and schema["features"]["image"] == ["image"]
    assert result.outputs["features"].outputs.n_features == 24
    # One request: the image as nested lists of pixels, validated by the endpoint's request model.
    predictor = champion_predictor(storage, "t-digits-png")
    rows = _test_rows(result).head(20)
    batch = predictor.predict_records(rows)
    Row = request_model(schema)
    for i in range(len(rows)):
        payload = {"image": np.asarray(rows["image"].iloc[i]).tolist()}
        one = predictor.predict_records([Row(**payload).model_dump()])[0]
        # Features are bit-identical (tests/features); BLAS may round one row differently from a batch.
        assert one["prediction"] == batch[i]["prediction"]
        assert one["scores"] == pytest.approx(batch[i]["scores"], rel=1e-4, abs=1e-7)
    assert np.mean([b["prediction"] == t for b, t in zip(batch, rows["label"])]) > 0.8


def test_text_folder_tfidf_end_to_end(ray_session, storage, tmp_path):
    rng = np.random.default_rng(0)
    words = {"billing": ["invoice", "refund", "charge", "payment", "card"],
             "outage": ["down", "error", "timeout", "server", "unreachable"]}
    common = ["please", "help", "today", "account", "thanks", "team"]
    for label, vocab in words.items():
        (tmp_path / "tickets" / label).mkdir(parents=True)
        for i in range(150):
            text = " ".join(rng.choice(vocab, 3).tolist() + rng.choice(common, 6).tolist())
            (tmp_path / "tickets" / label / f"{i:04d}.txt").write_text(text + " é")
    spec = {
        "name": "t-tickets", "storage": str(storage),
        "data": {"source": {"type": "text", "path": str(tmp_path / "tickets")}, "target": "label"},
        "features": {"text": {"method": "tfidf", "max_features": 64, "min_df": 2}},
        "model": LOGREG,
        "evaluate": {"metrics": ["accuracy"], "gate": {"min": {"accuracy": 0.95}}},
    }
    result = raypipe.run(spec, progress=quiet)
    assert result.status == "ok"
    schema = result.outputs["validate"].store.read_json("schema.json")
    assert schema["columns"]["text"]["type"] == "text" and schema["features"]["text"] == ["text"]
    predictor = champion_predictor(storage, "t-tickets")
    answer = predictor.predict_records([{"text": "my card payment needs a refund"}])[0]
    assert answer["prediction"] == "billing"


def _customers(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n)
    charges = rng.normal(70, 20, n).round(2)
    contract = rng.choice(["monthly", "yearly", "two_year"], n)
    logit = 1.5 - tenure / 20 + (charges - 70) / 30 + np.where(contract == "monthly", 1.0, -1.0)
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"id": np.arange(n), "tenure": tenure, "charges": charges, "contract": contract,
                         "churned": churned})


def test_sqlite_query_end_to_end(ray_session, storage, tmp_path):
    db = tmp_path / "warehouse.db"
    with sqlite3.connect(db) as con:
        _customers(3000).to_sql("customers", con, index=False)
    spec = {
        "name": "t-sqlite", "storage": str(storage),
        "data": {"source": {"type": "sql", "url": f"sqlite:///{db}", "query": "SELECT * FROM customers WHERE id < 2500",
                            "shard_keys": ["id"], "parallelism": 3, "snapshot": "v1"},
                 "target": "churned", "id_columns": ["id"]},
        "model": LOGREG, "evaluate": {"gate": {"min": {"roc_auc": 0.7}}},
    }
    result = raypipe.run(spec, progress=quiet)
    assert result.status == "ok" and result.outputs["ingest"].outputs.input_rows == 2500
    again = raypipe.run(spec, progress=quiet)  # same snapshot label: nothing is read again
    assert {s["name"]: s["status"] for s in again.stages}["ingest"] == "cached"


def test_postgres_sharded_query_end_to_end(ray_session, storage, monkeypatch):
    import psycopg

    from tests.ingest.pg import start_postgres

    url, password, stop = start_postgres(tempfile.mkdtemp(prefix="rp-pg-", dir="/tmp"))
    try:
        df = _customers(4000, seed=1)
        with psycopg.connect(url, password=password) as con:
            con.execute("CREATE TABLE customers (id int primary key, tenure int, charges numeric(8,2), "
                        "contract text, churned int)")
            with con.cursor().copy("COPY customers FROM STDIN") as copy:
                for row in df.itertuples(index=False):
                    copy.write_row(tuple(row))
        monkeypatch.setenv("RP_TEST_PGPASSWORD", password)
        spec = {
            "name": "t-postgres", "storage": str(storage),
            "data": {"source": {"type": "sql", "url": url, "password_env": "RP_TEST_PGPASSWORD",
                                "query": "SELECT * FROM customers", "shard_keys": ["id"], "parallelism": 4},
                     "target": "churned", "id_columns": ["id"]},
            "model": LOGREG, "evaluate": {"gate": {"min": {"roc_auc": 0.7}}},
        }
        result = raypipe.run(spec, progress=quiet)
        assert result.status == "ok" and result.outputs["ingest"].outputs.input_rows == 4000
        schema = result.outputs["validate"].store.read_json("schema.json")
        assert schema["columns"]["charges"]["type"] == "number"  # numeric(8,2) arrives as float
        manifest = (storage / "t-postgres").rglob("manifest.json")
        assert all(password not in p.read_text() for p in manifest)  # the secret is never written
    finally:
        stop()


@pytest.mark.parametrize("name,target,metric,floor", [
    ("iris", "target", "accuracy", 0.8),
    ("sensors", "failure_soon", "roc_auc", 0.85),
])
def test_builtin_sets_end_to_end(ray_session, storage, name, target, metric, floor):
    spec = {
        "name": f"t-builtin-{name}", "storage": str(storage),
        "data": {"source": {"type": "builtin", "name": name, "rows": 6000}, "target": target,
                 "id_columns": ["machine_id"] if name == "sensors" else []},
        "features": {"numeric": {"scale": "robust", "clip": [0.001, 0.999]}},
        "model": {"kind": "sklearn:sklearn.ensemble:HistGradientBoostingClassifier", "params": {"max_iter": 60}},
        "evaluate": {"metrics": [metric], "gate": {"min": {metric: floor}}},
    }
    result = raypipe.run(spec, progress=quiet)
    assert result.status == "ok" and result.metrics[metric] >= floor
