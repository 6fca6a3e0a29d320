"""Metrics by task: every number equals sklearn's computed directly, undefined ones are None."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import make_blobs

from raypipe.metrics import (
    LOWER_IS_BETTER,
    anomaly_metrics,
    choose_threshold,
    classification_metrics,
    clustering_metrics,
    higher_is_better_gap,
    regression_metrics,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _binary(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logit = 1.5 * (2 * y - 1) + rng.normal(0, 1.5, n)
    p1 = 1.0 / (1.0 + np.exp(-logit))
    scores = np.column_stack([1.0 - p1, p1])
    pred = (p1 >= 0.5).astype(int)
    return y, pred, scores


def _multiclass(n: int = 300, k: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1.0, (n, k))
    logits[np.arange(n), y] += 1.5
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, scores.argmax(axis=1), scores


# --- classification -----------------------------------------------------------------
def test_binary_metrics_equal_sklearn():
    y, pred, scores = _binary()
    # sanity: the synthetic problem is neither trivial nor hopeless
    assert 0.6 < skm.accuracy_score(y, pred) < 0.95
    m = classification_metrics(y, pred, scores, ["neg", "pos"])
    p1 = scores[:, 1]
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, pos_label=1),
        "recall": skm.recall_score(y, pred, pos_label=1),
        "f1": skm.f1_score(y, pred, pos_label=1),
        "f1_macro": skm.f1_score(y, pred, average="macro"),
        "f1_weighted": skm.f1_score(y, pred, average="weighted"),
        "roc_auc": skm.roc_auc_score(y, p1),
        "pr_auc": skm.average_precision_score(y, p1),
        "log_loss": skm.log_loss(y, scores),
        "brier": skm.brier_score_loss(y, p1),
    }
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
        assert isinstance(m[name], float), name
    # precision/recall of the positive class, not of the negative one
    assert m["precision"] != pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert m["rows"] == len(y)


def test_binary_confusion_matrix_and_per_class():
    y, pred, scores = _binary(seed=3)
    m = classification_metrics(y, pred, scores, ["neg", "pos"])
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert sum(map(sum, m["confusion_matrix"])) == len(y)
    # rows are true classes: row 1 sums to the number of positives
    assert sum(m["confusion_matrix"][1]) == int(y.sum())
    report = skm.classification_report(y, pred, target_names=["neg", "pos"], output_dict=True)
    assert set(m["per_class"]) >= {"neg", "pos", "macro avg", "weighted avg"}
    for cls in ("neg", "pos"):
        for k in ("precision", "recall", "f1-score", "support"):
            assert m["per_class"][cls][k] == pytest.approx(report[cls][k]), (cls, k)
    assert m["per_class"]["pos"]["support"] == int(y.sum())
    assert m["per_class"]["pos"]["f1-score"] == pytest.approx(m["f1"])


def test_confusion_matrix_keeps_absent_class():
    y = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 1, 0])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(y, pred, scores, ["neg", "pos"])
    assert m["confusion_matrix"] == [[3, 1], [0, 0]]


def test_multiclass_macro_metrics():
    y, pred, scores = _multiclass()
    names = ["a", "b", "c"]
    m = classification_metrics(y, pred, scores, names)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(m["f1_macro"])
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores, multi_class="ovr"))
    onehot = np.eye(3)[y]
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(onehot, scores, average="macro"))
    assert 0.0 < m["pr_auc"] <= 1.0
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, scores))
    assert m["brier"] is None
    assert len(m["confusion_matrix"]) == 3 and all(len(r) == 3 for r in m["confusion_matrix"])
    assert set(names) <= set(m["per_class"])


def test_one_class_split_has_no_auc():
    y = np.array([1, 1, 1, 1, 1])
    scores = np.array([[0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.45, 0.55]])
    pred = scores.argmax(axis=1)
    m = classification_metrics(y, pred, scores, ["neg", "pos"])
    assert m["roc_auc"] is None
    assert m["pr_auc"] is None
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["recall"] == pytest.approx(0.8)
    assert math.isfinite(m["log_loss"])


def test_multiclass_split_missing_a_class_gives_no_nan():
    """3 classes, but the split only holds 2 of them: every metric is a number or None, never NaN
    (the results are stored as JSON, and NaN would silently pass/fail gate rules)."""
    y, _, scores = _multiclass(n=90)
    y = np.where(y == 2, 0, y)  # class "c" absent from this split
    pred = scores.argmax(axis=1)
    m = classification_metrics(y, pred, scores, ["a", "b", "c"])
    for name in ("roc_auc", "pr_auc", "log_loss", "f1", "precision", "recall"):
        v = m[name]
        assert v is None or math.isfinite(v), f"{name} = {v!r}"


# --- regression ---------------------------------------------------------------------
def test_regression_metrics_equal_sklearn():
    rng = np.random.default_rng(2)
    y = rng.uniform(1.0, 10.0, 200)
    pred = y + rng.normal(0, 0.7, 200)
    m = regression_metrics(y, pred)
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)))
    assert m["rmse"] == pytest.approx(float(np.sqrt(np.mean((y - pred) ** 2))))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert m["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert m["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred))
    assert m["rows"] == 200


def test_regression_mape_none_when_a_true_value_is_zero():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    pred = np.array([0.5, 1.0, 2.5, 2.0])
    m = regression_metrics(y, pred)
    assert m["mape"] is None
    assert m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 0.25 + 1.0) / 4))


def test_regression_empty_input():
    m = regression_metrics(np.array([]), np.array([]))
    assert m == {"rmse": None, "mae": None, "r2": None, "mape": None, "rows": 0}


def test_regression_single_row_has_no_r2():
    m = regression_metrics(np.array([2.0]), np.array([3.0]))
    assert m["r2"] is None
    assert m["rmse"] == pytest.approx(1.0)


# --- clustering ---------------------------------------------------------------------
def test_clustering_on_separated_blobs():
    x, labels = make_blobs(n_samples=300, centers=3, cluster_std=0.5, random_state=0)
    good = clustering_metrics(x, labels)
    assert good["silhouette"] > 0.5
    assert good["silhouette"] == pytest.approx(skm.silhouette_score(x, labels))
    assert good["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(x, labels))
    assert good["clusters"] == 3 and good["rows"] == 300
    random_labels = np.random.default_rng(0).integers(0, 3, len(labels))
    bad = clustering_metrics(x, random_labels)
    assert bad["davies_bouldin"] > good["davies_bouldin"]
    assert bad["silhouette"] < good["silhouette"]


def test_clustering_samples_large_inputs():
    x, labels = make_blobs(n_samples=600, centers=3, cluster_std=0.5, random_state=1)
    m = clustering_metrics(x, labels, sample_size=200, seed=0)
    assert m["silhouette"] > 0.5
    assert m["rows"] == 600
    # seeded: the same call gives the same sample
    assert clustering_metrics(x, labels, sample_size=200, seed=0)["silhouette"] == m["silhouette"]


def test_clustering_one_cluster_is_undefined():
    x, _ = make_blobs(n_samples=50, centers=1, random_state=0)
    m = clustering_metrics(x, np.zeros(50, dtype=int))
    assert m["silhouette"] is None and m["davies_bouldin"] is None
    assert m["clusters"] == 1


# --- anomaly ------------------------------------------------------------------------
def test_anomaly_precision_at_k_by_hand():
    # sorted by score: idx 3 (0.95, y=1), 0 (0.9, y=1), 5 (0.7, y=0), 1 (0.6, y=0), 4 (0.3, y=1), 2 (0.1, y=0)
    score = np.array([0.9, 0.6, 0.1, 0.95, 0.3, 0.7])
    y = np.array([1, 0, 0, 1, 1, 0])
    m = anomaly_metrics(score, y)
    assert m["k"] == 3  # default k = number of true anomalies
    assert m["precision_at_k"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert anomaly_metrics(score, y, k=2)["precision_at_k"] == pytest.approx(1.0)
    assert anomaly_metrics(score, y, k=4)["precision_at_k"] == pytest.approx(0.5)
    assert anomaly_metrics(score, y, k=6)["precision_at_k"] == pytest.approx(0.5)
    assert m["score_mean"] == pytest.approx(score.mean())
    assert m["rows"] == 6


def test_anomaly_without_labels():
    score = np.array([0.2, 0.5, 0.9])
    m = anomaly_metrics(score, None)
    assert m["roc_auc"] is None and m["precision_at_k"] is None
    assert m["rows"] == 3 and m["score_mean"] == pytest.approx(score.mean())
    one = anomaly_metrics(score, np.array([0, 0, 0]))
    assert one["roc_auc"] is None and one["precision_at_k"] is None


# --- thresholds ---------------------------------------------------------------------
def _f1_at(y, p1, t):
    """F1 of the positive class when predicting positive at ``p1 >= t`` (plain numpy, for speed)."""
    hit = p1 >= t
    tp = float(np.sum(hit & (y == 1)))
    fp = float(np.sum(hit & (y == 0)))
    fn = float(np.sum(~hit & (y == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _recall_at(y, p1, t):
    return float(np.sum((p1 >= t) & (y == 1)) / np.sum(y == 1))


def test_brute_force_helpers_agree_with_sklearn():
    y, _, scores = _binary(n=60, seed=9)
    for t in (0.2, 0.5, 0.8):
        pred = (scores[:, 1] >= t).astype(int)
        assert _f1_at(y, scores[:, 1], t) == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        assert _recall_at(y, scores[:, 1], t) == pytest.approx(skm.recall_score(y, pred))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_f1_threshold_matches_brute_force(seed):
    y, _, scores = _binary(n=150, seed=seed)
    p1 = np.round(scores[:, 1], 2)  # ties among scores
    t = choose_threshold(y, p1, "max_f1")
    best = max(_f1_at(y, p1, c) for c in np.unique(p1))
    assert _f1_at(y, p1, t) == pytest.approx(best)
    assert t in set(np.unique(p1).tolist())


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_target_recall_threshold_is_highest_meeting_target(target):
    y, _, scores = _binary(n=200, seed=5)
    p1 = scores[:, 1]
    t = choose_threshold(y, p1, "target_recall", target_recall=target)
    assert _recall_at(y, p1, t) >= target
    ok = [c for c in np.unique(p1) if _recall_at(y, p1, c) >= target]
    assert t == pytest.approx(max(ok))
    # any higher candidate threshold loses recall below the target
    higher = np.unique(p1)[np.unique(p1) > t]
    if len(higher):
        assert _recall_at(y, p1, higher.min()) < target
    assert _recall_at(y, p1, t + 1e-9) < target or t == p1.max()


def test_target_recall_by_hand():
    y = np.array([0, 1, 0, 1, 1, 0])
    p1 = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 0.9])
    # recall at p >= 0.8: 1/3, at 0.6: 2/3, at 0.2: 1
    assert choose_threshold(y, p1, "target_recall", target_recall=0.6) == pytest.approx(0.6)
    assert choose_threshold(y, p1, "target_recall", target_recall=0.3) == pytest.approx(0.8)
    assert choose_threshold(y, p1, "target_recall", target_recall=1.0) == pytest.approx(0.2)


def test_threshold_with_one_class_is_half():
    p1 = np.array([0.1, 0.7, 0.9])
    assert choose_threshold(np.array([1, 1, 1]), p1) == 0.5
    assert choose_threshold(np.array([0, 0, 0]), p1, "target_recall", target_recall=0.9) == 0.5


# --- directions ---------------------------------------------------------------------
@pytest.mark.parametrize("metric", sorted(LOWER_IS_BETTER))
def test_gap_lower_is_better(metric):
    assert higher_is_better_gap(metric, 1.0, 3.0) == pytest.approx(2.0)
    assert higher_is_better_gap(metric, 3.0, 1.0) == pytest.approx(-2.0)


@pytest.mark.parametrize("metric", ["f1", "accuracy", "roc_auc", "r2", "silhouette", "pr_auc"])
def test_gap_higher_is_better(metric):
    assert higher_is_better_gap(metric, 0.9, 0.7) == pytest.approx(0.2)
    assert higher_is_better_gap(metric, 0.7, 0.9) == pytest.approx(-0.2)


def test_lower_is_better_set():
    assert {"rmse", "mae", "mape", "log_loss", "brier", "davies_bouldin"} <= LOWER_IS_BETTER
    assert not {"f1", "accuracy", "roc_auc", "r2", "silhouette"} & LOWER_IS_BETTER


def test_target_specificity_by_hand():
    y = np.array([0, 1, 0, 1, 1, 0])
    p1 = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 0.9])
    # negatives score 0.1, 0.4, 0.9: specificity at p >= 0.6 (or 0.8, 0.9): 2/3, at 0.4 or 0.2: 1/3, at 0.1: 0
    assert choose_threshold(y, p1, "target_specificity", target_specificity=0.6) == pytest.approx(0.6)
    assert choose_threshold(y, p1, "target_specificity", target_specificity=0.3) == pytest.approx(0.2)
    # the top score is a negative: no threshold reaches 0.9, the most specific one (the highest score) is taken
    assert choose_threshold(y, p1, "target_specificity", target_specificity=0.9) == pytest.approx(0.9)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
def test_target_specificity_is_the_most_sensitive_threshold_meeting_it(target):
    y, _, scores = _binary(n=300, seed=7)
    p1 = scores[:, 1]

    def spec_sens(t):
        pred = p1 >= t
        return (~pred[y == 0]).mean(), pred[y == 1].mean()

    t = choose_threshold(y, p1, "target_specificity", target_specificity=target)
    spec, sens = spec_sens(t)
    assert spec >= target
    ok = [c for c in np.unique(p1) if spec_sens(c)[0] >= target]
    assert t == pytest.approx(min(ok))
    assert sens == pytest.approx(max(spec_sens(c)[1] for c in ok))
    lower = np.unique(p1)[np.unique(p1) < t]
    assert len(lower) == 0 or spec_sens(lower.max())[0] < target


def test_sensitivity_and_specificity_by_hand():
    y = np.array([0, 1, 0, 1, 1, 0])
    p1 = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 0.9])
    pred = (p1 >= 0.8).astype(np.int64)  # [0, 0, 0, 0, 1, 1]: TP 1, FN 2, TN 2, FP 1
    m = classification_metrics(y, pred, np.c_[1 - p1, p1], ["neg", "pos"])
    assert m["sensitivity"] == pytest.approx(1 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["sensitivity"] == pytest.approx(m["recall"])
    only_pos = classification_metrics(np.array([1, 1]), np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]]),
                                      ["neg", "pos"])
    assert only_pos["sensitivity"] == 0.5 and only_pos["specificity"] is None  # no negatives: undefined
    three = classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), np.eye(3), ["a", "b", "c"])
    assert three["sensitivity"] is None and three["specificity"] is None
