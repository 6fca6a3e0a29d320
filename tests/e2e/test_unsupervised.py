"""Clustering and anomaly detection through the whole pipeline: metrics, gate, threshold, registry.

Clustering runs on a parquet file of well-separated blobs (a real file source), anomaly
detection on the built-in transactions, with and without the fraud label.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

import raypipe
from raypipe.model.predictor import Predictor
from raypipe.progress import Progress
from raypipe.registry import Registry
from tests.conftest import small_spec

quiet = Progress(quiet=True)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("unsup") / "store"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    x, label = make_blobs(n_samples=1500, centers=3, n_features=4, cluster_std=0.8, random_state=0)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    df["region"] = np.where(np.arange(len(df)) % 2 == 0, "north", "south")
    df["row_id"], df["true_blob"] = np.arange(len(df)), label
    path = tmp_path_factory.mktemp("blobs") / "blobs.parquet"
    df.to_parquet(path)
    return path


def _doc(storage, name: str, version: int) -> dict:
    return Registry(str(storage), name).version_store(version).read_json("metrics.json")


def test_clustering_end_to_end(ray_session, storage, blobs):
    spec = {
        "name": "t-blobs", "storage": str(storage),
        "data": {"source": {"type": "parquet", "path": str(blobs)}, "task": "clustering",
                 "id_columns": ["row_id", "true_blob"]},
        "model": {"kind": "sklearn:sklearn.cluster:KMeans", "params": {"n_clusters": 3, "n_init": 5}},
        "evaluate": {"slices": ["region"], "gate": {"min": {"silhouette": 0.5}, "max": {"davies_bouldin": 1.0}}},
    }
    result = raypipe.run(spec, progress=quiet)
    assert result.status == "ok" and result.alias == "champion"
    doc = _doc(storage, "t-blobs", result.version)
    assert doc["test"]["clusters"] == 3 and doc["test"]["silhouette"] > 0.5
    assert set(doc["metrics"]) == {"silhouette", "davies_bouldin"}
    assert {c["check"] for c in doc["gate"]["checks"]} == {"silhouette >= 0.5", "davies_bouldin <= 1"}
    assert set(doc["slices"]["region"]["values"]) == {"north", "south"}
    # Served answers are cluster ids that recover the true blobs (up to renaming).
    vs = Registry(str(storage), "t-blobs").version_store(result.version)
    rows = pd.read_parquet(blobs).head(300)
    answers = Predictor.from_version(vs).predict_records(rows.drop(columns=["true_blob"]))
    clusters = np.array([a["cluster"] for a in answers])
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(rows["true_blob"], clusters) > 0.95
    assert "plots/cluster_sizes.png" in vs.read_bytes("report", "report.html").decode()


def test_anomaly_detection_with_labels(ray_session, storage):
    spec = small_spec(storage, name="t-anomaly", data={"task": "anomaly"},
                      model={"kind": "sklearn:sklearn.ensemble:IsolationForest", "params": {"n_estimators": 100}},
                      evaluate={"gate": {"min": {"roc_auc": 0.6}}, "threshold": {"strategy": "target_recall", "target_recall": 0.5}})
    result = raypipe.run(spec, progress=quiet)
    doc = _doc(storage, "t-anomaly", result.version)
    test = doc["test"]
    assert test["roc_auc"] > 0.6 and 0 <= test["precision_at_k"] <= 1 and test["k"] == sum(doc["test"]["confusion_matrix"][1])
    assert doc["validation"]["recall"] >= 0.5  # the threshold was chosen on validation for the target recall
    predictor = Predictor.from_version(Registry(str(storage), "t-anomaly").version_store(result.version))
    assert predictor.threshold == doc["threshold"]


def test_anomaly_detection_without_labels_flags_the_expected_share(ray_session, storage):
    spec = small_spec(storage, name="t-anomaly-nolabel",
                      data={"task": "anomaly", "target": None, "id_columns": ["transaction_id", "is_fraud"]},
                      model={"kind": "sklearn:sklearn.ensemble:IsolationForest", "params": {"n_estimators": 100}},
                      evaluate={"threshold": {"anomaly_rate": 0.05}, "gate": {"max": {"anomaly_rate": 0.15}}})
    result = raypipe.run(spec, progress=quiet)
    doc = _doc(storage, "t-anomaly-nolabel", result.version)
    assert doc["metrics"] == {"anomaly_rate": doc["test"]["anomaly_rate"]}
    assert doc["validation"]["anomaly_rate"] == pytest.approx(0.05, abs=0.01)  # the top 5 % of validation scores
    assert 0.0 < doc["test"]["anomaly_rate"] < 0.15 and doc["test"]["roc_auc"] is None
    assert "top 0.05 of validation scores" in doc["threshold_strategy"]


def test_estimator_that_cannot_score_new_rows_is_a_spec_error(ray_session, storage, blobs):
    spec = {
        "name": "t-dbscan", "storage": str(storage),
        "data": {"source": {"type": "parquet", "path": str(blobs)}, "task": "clustering", "id_columns": ["row_id", "true_blob"]},
        "model": {"kind": "sklearn:sklearn.cluster:DBSCAN"},
    }
    with pytest.raises(raypipe.SpecError, match="DBSCAN.*no predict.*KMeans"):
        raypipe.run(spec, progress=quiet)
