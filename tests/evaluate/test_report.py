"""The evaluation report: PNG plots and a self-contained, escaped report.html."""
from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn import metrics as skm

from raypipe.evaluate.report import MAX_POINTS, write_report
from raypipe.store import Store


def _clf_doc(y, pred, names, passed=True):
    labels = list(range(len(names)))
    avg = "binary" if len(names) == 2 else "macro"
    test = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "f1": float(skm.f1_score(y, pred, average=avg, labels=labels, zero_division=0)),
        "roc_auc": None,
        "rows": len(y),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": skm.classification_report(y, pred, labels=labels, target_names=names,
                                               output_dict=True, zero_division=0),
    }
    checks = [{"check": "f1 >= 0.99", "value": test["f1"], "limit": 0.99, "passed": passed},
              {"check": "accuracy >= 0.1", "value": test["accuracy"], "limit": 0.1, "passed": True}]
    failures = [] if passed else [f"f1 >= 0.99: got {test['f1']!r}"]
    return {"task": "classification", "test": test, "train": dict(test, f1=0.987654), "validation": None,
            "threshold": 0.42, "gate": {"passed": passed, "checks": checks, "failures": failures},
            "slices": {"region": {"metric": "f1", "gap": 0.25,
                                  "values": {"north": {"rows": 30, "f1": 0.8},
                                             "<script>alert(1)</script>": {"rows": 5, "f1": None}}}},
            "findings": ["Recall on class <b> is low & worth a look."],
            "champion": {"f1": 0.5, "accuracy": 0.6, "version": 3}, "version": 4, "run_id": "run-xyz"}


def _check_outputs(tmp_path, paths):
    assert "report.html" in paths
    for p in paths:
        assert (tmp_path / p).is_file(), p
    pngs = [p for p in paths if p.endswith(".png")]
    for p in pngs:
        data = (tmp_path / p).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000, p
    page = (tmp_path / "report.html").read_text()
    for p in pngs:
        assert f'<img src="{p}"' in page
    assert set(re.findall(r'src="([^"]+)"', page)) == set(pngs)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    return {p.split("/")[-1] for p in pngs}, page


def test_binary_classification_failed_gate(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p1 = np.clip(y * 0.6 + rng.normal(0.2, 0.25, 400), 0, 1)
    scores = np.column_stack([1 - p1, p1])
    pred = (p1 >= 0.42).astype(int)
    doc = _clf_doc(y, pred, ["neg", "pos"], passed=False)
    paths = write_report(Store(str(tmp_path)), doc, y=y, pred=pred, scores=scores, class_names=["neg", "pos"])
    names, page = _check_outputs(tmp_path, paths)
    assert names == {"confusion_matrix.png", "roc.png", "precision_recall.png", "calibration.png", "slice_region.png"}
    assert "FAILED" in page and "PASSED" not in page
    assert "f1 &gt;= 0.99" in page and "accuracy &gt;= 0.1" in page
    assert f"{doc['test']['f1']:.4g}" in page and "0.9877" in page  # test and train f1
    assert "run-xyz" in page and "champion (v3)" in page and "0.42" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Recall on class &lt;b&gt; is low &amp; worth a look." in page
    assert "neg" in page and "pos" in page and "0.25" in page


def test_multiclass_passed_gate(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    logits = np.eye(3)[y] * 2 + rng.normal(0, 1, (300, 3))
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = scores.argmax(1)
    names3 = ["setosa", "versicolor", "virginica"]
    doc = _clf_doc(y, pred, names3)
    paths = write_report(Store(str(tmp_path)), doc, y=y, pred=pred, scores=scores, class_names=names3)
    names, page = _check_outputs(tmp_path, paths)
    assert names == {"confusion_matrix.png", "roc.png", "precision_recall.png", "slice_region.png"}
    assert "PASSED" in page and "FAILED" not in page
    for n in names3:
        assert n in page


def test_single_class_skips_curves(tmp_path):
    y = np.zeros(50, dtype=int)
    pred = np.r_[np.zeros(45, dtype=int), np.ones(5, dtype=int)]
    scores = np.column_stack([np.full(50, 0.7), np.full(50, 0.3)])
    doc = _clf_doc(y, pred, ["a", "b"])
    del doc["slices"], doc["champion"], doc["findings"], doc["train"]
    paths = write_report(Store(str(tmp_path)), doc, y=y, pred=pred, scores=scores, class_names=["a", "b"])
    names, page = _check_outputs(tmp_path, paths)
    assert names == {"confusion_matrix.png"}
    assert "—" in page  # roc_auc is None


def test_regression_subsamples_and_handles_missing(tmp_path):
    rng = np.random.default_rng(3)
    n = MAX_POINTS + 1000
    y = rng.normal(10, 3, n)
    pred = y + rng.normal(0, 1, n)
    test = {"rmse": float(np.sqrt(skm.mean_squared_error(y, pred))), "mae": float(skm.mean_absolute_error(y, pred)),
            "r2": float(skm.r2_score(y, pred)), "rows": n}
    doc = {"task": "regression", "test": test, "threshold": 0.5,
           "gate": {"passed": True, "checks": [{"check": "rmse <= 2", "value": test["rmse"], "limit": 2.0,
                                                "passed": True}], "failures": []},
           "slices": {"size $ bucket": {"metric": "rmse", "gap": None,
                                        "values": {"small": {"rows": 10, "rmse": 1.1}, "big": {"rows": 7}}}}}
    paths = write_report(Store(str(tmp_path)), doc, y=y, pred=pred)
    names, page = _check_outputs(tmp_path, paths)
    assert names == {"predicted_vs_actual.png", "residuals.png", "residual_histogram.png", "slice_size_bucket.png"}
    assert f"{test['rmse']:.4g}" in page and "rmse &lt;= 2" in page and "PASSED" in page
    assert "size $ bucket" in page


@pytest.mark.parametrize("gate", [None, {}])
def test_missing_gate_renders(tmp_path, gate):
    y = np.array([0.0, 1.0, 2.0])
    doc = {"task": "regression", "test": {"rmse": None}, "threshold": None, "gate": gate}
    paths = write_report(Store(str(tmp_path)), doc, y=y, pred=y)
    _, page = _check_outputs(tmp_path, paths)
    assert "FAILED" in page and "—" in page


def _plain_doc(task, test, threshold=None):
    return {"task": task, "test": test, "threshold": threshold, "train": dict(test),
            "gate": {"passed": True, "checks": [], "failures": []},
            "slices": {"segment": {"metric": "rows", "gap": None,
                                   "values": {"a": {"rows": 120}, "b": {"rows": 80}}}}}


@pytest.mark.parametrize("with_y", [True, False])
def test_clustering(tmp_path, with_y):
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    x, y = make_blobs(n_samples=200, centers=3, n_features=4, random_state=0)
    pred = KMeans(n_clusters=3, n_init=3, random_state=0).fit_predict(x)
    test = {"silhouette": float(skm.silhouette_score(x, pred)), "davies_bouldin": None, "clusters": 3, "rows": 200}
    doc = _plain_doc("clustering", test)
    paths = write_report(Store(str(tmp_path)), doc, y=y if with_y else None, pred=pred, x=x)
    names, page = _check_outputs(tmp_path, paths)
    assert names == {"cluster_sizes.png", "clusters_pca.png", "slice_segment.png"}
    assert f"{test['silhouette']:.4g}" in page and "davies_bouldin" in page and "clustering" in page


@pytest.mark.parametrize("x", [None, np.arange(10.0).reshape(10, 1)])
def test_clustering_without_projection(tmp_path, x):
    pred = np.array([-1, 0, 0, 1, 1, 1, 2, 2, 2, 2])  # -1: noise
    doc = {"task": "clustering", "test": {"silhouette": None, "clusters": 3, "rows": 10}, "gate": None}
    paths = write_report(Store(str(tmp_path)), doc, y=None, pred=pred, x=x)
    names, _ = _check_outputs(tmp_path, paths)
    assert names == {"cluster_sizes.png"}


def _anomaly_data(n=400):
    rng = np.random.default_rng(4)
    y = (rng.random(n) < 0.1).astype(int)
    scores = rng.normal(0, 1, n) + 2.5 * y
    return y, scores, (scores >= 1.5).astype(int)


def test_anomaly_with_labels(tmp_path):
    y, scores, pred = _anomaly_data()
    test = {"roc_auc": float(skm.roc_auc_score(y, scores)), "pr_auc": None, "precision_at_k": 0.7,
            "anomaly_rate": float(pred.mean()), "precision": float(skm.precision_score(y, pred)),
            "recall": float(skm.recall_score(y, pred)), "f1": float(skm.f1_score(y, pred)), "rows": len(y)}
    doc = _plain_doc("anomaly", test, threshold=1.5)
    paths = write_report(Store(str(tmp_path)), doc, y=y, pred=pred, scores=scores)
    names, page = _check_outputs(tmp_path, paths)
    assert names == {"score_histogram.png", "roc.png", "precision_recall.png", "confusion_matrix.png",
                     "slice_segment.png"}
    assert f"{test['roc_auc']:.4g}" in page and "precision_at_k" in page and "1.5" in page


def test_anomaly_without_labels(tmp_path):
    _, scores, pred = _anomaly_data()
    scores[3] = np.nan  # a non-finite score must not break the histogram
    doc = _plain_doc("anomaly", {"anomaly_rate": float(pred.mean()), "rows": len(pred)}, threshold=1.5)
    paths = write_report(Store(str(tmp_path)), doc, y=None, pred=pred, scores=scores)
    names, page = _check_outputs(tmp_path, paths)
    assert names == {"score_histogram.png", "slice_segment.png"}
    assert "anomaly_rate" in page and "roc_auc" not in page


def test_anomaly_single_class_labels_skip_curves(tmp_path):
    _, scores, pred = _anomaly_data(100)
    doc = {"task": "anomaly", "test": {"roc_auc": None}, "threshold": None, "gate": {}}
    paths = write_report(Store(str(tmp_path)), doc, y=np.zeros(100, dtype=int), pred=pred, scores=scores)
    names, _ = _check_outputs(tmp_path, paths)
    assert names == {"score_histogram.png"}


def _multiclass(k, n=600, seed=5, present=None):
    rng = np.random.default_rng(seed)
    y = rng.choice(present if present is not None else np.arange(k), n)
    logits = np.eye(k)[y] * 2 + rng.normal(0, 1, (n, k))
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, scores, scores.argmax(1)


def test_many_classes_and_absent_classes(tmp_path):
    from raypipe.evaluate.report import MAX_CURVE_CLASSES
    k = MAX_CURVE_CLASSES + 5
    # classes 1 and 3 never occur in y; curves are capped at MAX_CURVE_CLASSES classes
    y, scores, pred = _multiclass(k, present=[c for c in range(k) if c not in (1, 3)])
    cls = [f"c{i}" for i in range(k)]
    paths = write_report(Store(str(tmp_path)), _clf_doc(y, pred, cls), y=y, pred=pred, scores=scores, class_names=cls)
    names, _ = _check_outputs(tmp_path, paths)
    assert names == {"confusion_matrix.png", "roc.png", "precision_recall.png", "slice_region.png"}


def test_classification_without_scores_or_names(tmp_path):
    y, _, pred = _multiclass(3, n=90)
    doc = _clf_doc(y, pred, ["0", "1", "2"])
    del doc["test"]["confusion_matrix"]  # recomputed from y and pred
    paths = write_report(Store(str(tmp_path)), doc, y=y, pred=pred, scores=None)
    names, _ = _check_outputs(tmp_path, paths)
    assert names == {"confusion_matrix.png", "slice_region.png"}


def test_dollar_labels_and_no_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    y, scores, pred = _multiclass(2, n=200)
    cls = ["$cheap", "x $^$ y"]  # "$^$" is a mathtext parse error unless the "$" are escaped
    paths = write_report(Store(str(tmp_path)), _clf_doc(y, pred, cls), y=y, pred=pred, scores=scores, class_names=cls)
    names, _ = _check_outputs(tmp_path, paths)
    assert "calibration.png" in names and "roc.png" in names
    assert plt.get_fignums() == before  # drawn on Figure objects, no pyplot figures left behind


def test_baselines_are_columns_beside_the_model_and_say_how_they_were_fitted(tmp_path):
    y = np.array([0.0, 1.0, 2.0, 3.0] * 10)
    pred = y + 0.5
    doc = {"task": "regression", "test": {"rmse": 0.5, "r2": 0.8, "rows": 40}, "threshold": 0.5,
           "gate": {"passed": False, "checks": [{"check": "r2 >= trivial baseline (DummyRegressor)", "value": -3.48,
                                                 "limit": 0.0, "passed": False}], "failures": []},
           "baselines": {"trivial": {"model": "DummyRegressor", "about": "predicts the train split's mean",
                                     "test": {"rmse": 1.118, "r2": -0.0123, "rows": 40}},
                         "linear": {"model": "Ridge", "about": "fitted on 50,000 rows (a seeded sample of 80,000)",
                                    "train_rows": 50000, "test": {"rmse": 0.25, "r2": 0.95, "rows": 40}}}}
    write_report(Store(str(tmp_path)), doc, y=y, pred=pred)
    page = (tmp_path / "report.html").read_text()
    header = re.search(r"<h2>Metrics</h2>.*?</tr>", page, re.DOTALL).group(0)
    assert header.index("test") < header.index("trivial baseline: DummyRegressor (test)") \
        < header.index("linear baseline: Ridge (test)")
    assert "-0.0123" in page and "0.95" in page
    assert "fitted on 50,000 rows (a seeded sample of 80,000)" in page and "predicts the train split&#39;s mean" in page
