"""The trivial and linear baselines, scored on the same test rows as the model (no Ray)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from raypipe.evaluate.baselines import (
    LINEAR_MAX_ROWS,
    features_fit_in_memory,
    sample_rows,
    score_baselines,
)
from raypipe.evaluate.scored import Scored


def _split(task, x, y, classes=None, scores=None):
    n = len(x if y is None else y)
    if scores is None:
        scores = np.zeros((n, len(classes))) if classes else np.zeros((n, 1))
    return Scored(task, y, scores, pd.DataFrame(index=range(n)), classes, x)


def _fixed(_validation):
    return 0.5, "fixed"


def test_classification_baselines_on_digits():
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    classes = [str(c) for c in range(10)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    tr, te = order[:1200], order[1200:]
    scored = {"train": _split("classification", x[tr], y[tr], classes),
              "test": _split("classification", x[te], y[te], classes)}
    out = score_baselines(scored, _fixed, seed=0)
    trivial, linear = out["trivial"], out["linear"]
    assert trivial["model"] == "DummyClassifier" and linear["model"] == "LogisticRegression"
    # The majority class: balanced accuracy is exactly 1/k; accuracy is that class's share of the test rows.
    majority = np.bincount(y[tr]).argmax()
    assert trivial["test"]["balanced_accuracy"] == pytest.approx(0.1)
    assert trivial["test"]["accuracy"] == pytest.approx(np.mean(y[te] == majority))
    # A linear model on these pixels reaches ~0.97 (the digits case).
    assert linear["test"]["accuracy"] > 0.9 and linear["train_rows"] == 1200
    assert "per_class" not in linear["test"] and "confusion_matrix" not in linear["test"]


def test_linear_threshold_is_chosen_on_validation_like_the_models():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 3))
    y = (x[:, 0] + 0.3 * rng.normal(size=3000) > 1.2).astype(np.int64)  # ~12 % positives
    classes = ["0", "1"]
    scored = {s: _split("classification", x[sl], y[sl], classes)
              for s, sl in (("train", slice(0, 2000)), ("validation", slice(2000, 2500)), ("test", slice(2500, 3000)))}
    seen = []

    def pick(validation):
        seen.append(validation)
        return 0.3, "max_f1"

    out = score_baselines(scored, pick, seed=0)
    (val,) = seen  # called once, for the linear baseline, with its own validation scores
    assert val.y is scored["validation"].y and val.scores.shape == (500, 2)
    assert np.allclose(val.scores.sum(axis=1), 1.0) and val.scores[:, 1].std() > 0.1
    assert out["linear"]["threshold"] == 0.3 and out["linear"]["threshold_strategy"] == "max_f1"
    # The trivial baseline answers the majority class (negative): its recall is 0, not an "all positive" f1.
    assert out["trivial"]["test"]["recall"] == 0.0 and out["trivial"]["threshold"] == 0.5


def test_regression_baselines_mean_and_ridge():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(600, 4))
    y = 150 + 60 * x[:, 0] - 20 * x[:, 1] + rng.normal(scale=10, size=600)
    scored = {"train": _split("regression", x[:400], y[:400]), "test": _split("regression", x[400:], y[400:])}
    out = score_baselines(scored, _fixed, seed=0)
    assert out["trivial"]["model"] == "DummyRegressor" and out["linear"]["model"] == "Ridge"
    assert out["trivial"]["test"]["r2"] <= 0.0  # a constant never beats the test mean
    assert out["linear"]["test"]["r2"] > 0.9
    assert "threshold" not in out["linear"] and "threshold" not in out["trivial"]


def test_missing_class_in_train_keeps_the_score_columns_in_place():
    x = np.arange(40, dtype=float)[:, None]
    y_train = np.array([0] * 10 + [2] * 10)  # class 1 never seen in train
    scored = {"train": _split("classification", x[:20], y_train, ["a", "b", "c"]),
              "test": _split("classification", x[20:], np.array([0, 1, 2, 2] * 5), ["a", "b", "c"])}
    out = score_baselines(scored, _fixed, seed=0)
    assert out["linear"]["test"]["rows"] == 20
    assert out["linear"]["test"]["accuracy"] <= 0.75  # class "b" (5 rows) can never be answered


def test_skipped_linear_baseline_says_why_and_keeps_the_trivial_one():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    scored = {"train": _split("regression", None, y), "test": _split("regression", None, y)}
    out = score_baselines(scored, _fixed, seed=0, skip_linear="too wide")
    assert out["linear"] == {"model": "Ridge", "skipped": "too wide"}
    assert out["trivial"]["test"]["rmse"] == pytest.approx(np.std(y))


def test_single_label_train_split_skips_the_linear_baseline():
    x = np.zeros((10, 2))
    scored = {"train": _split("classification", x, np.zeros(10, np.int64), ["a", "b"]),
              "test": _split("classification", x, np.array([0, 1] * 5), ["a", "b"])}
    out = score_baselines(scored, _fixed, seed=0)
    assert "single label" in out["linear"]["skipped"]


@pytest.mark.parametrize("task", ["clustering", "anomaly"])
def test_unsupervised_tasks_have_no_baseline(task):
    x = np.zeros((5, 2))
    scored = {"train": _split(task, x, None), "test": _split(task, x, None)}
    assert score_baselines(scored, _fixed, seed=0) is None


def test_linear_fit_is_bounded_to_a_seeded_sample(monkeypatch):
    import raypipe.evaluate.baselines as b

    monkeypatch.setattr(b, "LINEAR_MAX_ROWS", 300)
    fitted_rows = []
    real_fit = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, x, y: fitted_rows.append(len(x)) or real_fit(self, x, y))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 2))
    y = (x[:, 0] > 0).astype(np.int64)
    scored = {"train": _split("classification", x, y, ["0", "1"]), "test": _split("classification", x[:50], y[:50], ["0", "1"])}
    out = b.score_baselines(scored, _fixed, seed=0)
    assert fitted_rows == [300] and out["linear"]["train_rows"] == 300
    assert "a seeded sample of 1,000" in out["linear"]["about"]
    assert np.array_equal(sample_rows(1000, 300, 5), sample_rows(1000, 300, 5))
    assert not np.array_equal(sample_rows(1000, 300, 5), sample_rows(1000, 300, 6))
    assert LINEAR_MAX_ROWS == 50_000  # the documented bound


def test_feature_memory_bound():
    assert features_fit_in_memory(100_000, 64)
    assert not features_fit_in_memory(100_000, 3 * 224 * 224)
