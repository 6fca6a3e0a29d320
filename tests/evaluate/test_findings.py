"""Plain-language findings: over-/underfitting, slice gaps, the decision threshold."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raypipe.evaluate.findings import (OVERFIT_TOLERANCE, baseline_findings, fit_findings, slice_findings,
                                      threshold_finding)
from raypipe.evaluate.slices import sliced_metrics


def test_overfitting_states_both_numbers():
    train = {"f1": 0.99, "roc_auc": 0.999}
    held = {"f1": 0.71, "roc_auc": 0.8}
    out, gap = fit_findings("classification", train, held, "validation", None)
    assert gap == pytest.approx(0.28)
    assert len(out) == 1
    (f,) = out
    assert f.startswith("Overfitting")
    assert "0.990" in f and "0.710" in f and "validation" in f and "0.280" in f
    assert "Underfitting" not in " ".join(out)


def test_overfitting_uses_the_gate_limit():
    train, held = {"f1": 0.9, "roc_auc": 0.95}, {"f1": 0.82, "roc_auc": 0.9}
    out, gap = fit_findings("classification", train, held, "test", None)  # default tolerance
    assert gap == pytest.approx(0.08) and gap > OVERFIT_TOLERANCE
    assert out[0].startswith("Overfitting")
    out, gap = fit_findings("classification", train, held, "test", 0.1)
    assert gap == pytest.approx(0.08)
    assert len(out) == 1 and "agree" in out[0] and "Overfitting" not in out[0]
    assert "test" in out[0]


def test_underfitting_near_chance():
    train = {"f1": 0.51, "roc_auc": 0.52}
    held = {"f1": 0.50, "roc_auc": 0.52}
    out, gap = fit_findings("classification", train, held, "validation", 0.1)
    assert gap == pytest.approx(0.01)
    assert len(out) == 1 and out[0].startswith("Underfitting")
    assert "roc_auc 0.520 / 0.520" in out[0]
    assert not any(f.startswith("Overfitting") or "agree" in f for f in out)


def test_underfitting_needs_both_low():
    train = {"f1": 0.9, "roc_auc": 0.95}
    held = {"f1": 0.5, "roc_auc": 0.52}
    out, _ = fit_findings("classification", train, held, "validation", 0.1)
    assert any(f.startswith("Overfitting") for f in out)
    assert not any(f.startswith("Underfitting") for f in out)


def test_underfitting_from_balanced_accuracy_without_auc():
    cm = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]  # 3 classes: chance is 1/3
    train = {"f1": 0.36, "roc_auc": None, "balanced_accuracy": 0.36, "confusion_matrix": cm}
    held = {"f1": 0.35, "roc_auc": None, "balanced_accuracy": 0.35, "confusion_matrix": cm}
    out, _ = fit_findings("classification", train, held, "validation", 0.1)
    assert any(f.startswith("Underfitting") and "balanced_accuracy 0.360 / 0.350" in f for f in out)


def test_agree_sentence():
    train = {"f1": 0.86, "roc_auc": 0.93}
    held = {"f1": 0.84, "roc_auc": 0.92}
    out, gap = fit_findings("classification", train, held, "validation", 0.05)
    assert gap == pytest.approx(0.02)
    (f,) = out
    assert f.startswith("Train and validation agree")
    assert "0.860" in f and "0.840" in f and "+0.020" in f


def test_missing_metric_gives_nothing():
    assert fit_findings("classification", {"roc_auc": 0.9}, {"f1": 0.8}, "validation", None) == ([], None)


def test_regression_underfitting():
    train = {"rmse": 5.0, "r2": 0.05}
    held = {"rmse": 5.1, "r2": 0.02}
    out, gap = fit_findings("regression", train, held, "validation", 0.5)
    assert gap == pytest.approx(0.1)  # rmse: lower is better, train 0.1 better
    assert len(out) == 1 and out[0].startswith("Underfitting")
    assert "r2 0.050 / 0.020" in out[0]


def test_regression_overfitting_lower_is_better():
    out, gap = fit_findings("regression", {"rmse": 1.0, "r2": 0.95}, {"rmse": 3.0, "r2": 0.6}, "validation", 0.5)
    assert gap == pytest.approx(2.0)
    assert out[0].startswith("Overfitting") and "rmse" in out[0] and "1.000" in out[0] and "3.000" in out[0]
    # validation better than train is not overfitting
    out, gap = fit_findings("regression", {"rmse": 3.0, "r2": 0.6}, {"rmse": 1.0, "r2": 0.95}, "validation", 0.5)
    assert gap == pytest.approx(-2.0)
    assert "agree" in out[0]


def test_slice_findings_name_worst_and_best():
    keys = pd.Series(["north"] * 40 + ["south"] * 60 + ["tiny"] * 2)
    acc = np.r_[np.full(40, 0.9), np.full(60, 0.6), np.full(2, 0.0)]

    def score(mask):
        return {"f1": float(acc[mask].mean())}

    s = sliced_metrics(keys, score, "f1", lower_is_better=False, min_rows=10)
    no_gap = sliced_metrics(pd.Series(["x"] * 5), lambda m: {"f1": 0.5}, "f1", lower_is_better=False, min_rows=1)
    out = slice_findings({"region": s, "other": no_gap})
    assert len(out) == 1
    (f,) = out
    assert "'region'" in f
    assert "0.600 (south, 60 rows)" in f
    assert "0.900 (north, 40 rows)" in f
    assert f.index("south") < f.index("north")  # worst first
    assert "gap of 0.300" in f
    assert "tiny" not in f


def test_slice_findings_empty():
    assert slice_findings({}) == []


def test_threshold_finding():
    (f,) = threshold_finding("target_recall", 0.3712, {"precision": 0.61, "recall": 0.905})
    assert "0.3712" in f and "target_recall" in f and "validation" in f
    assert "0.610" in f and "0.905" in f
    (f,) = threshold_finding("fixed", 0.5, None)
    assert "0.5000" in f and "fixed" in f
    (f,) = threshold_finding("max_f1", 0.42, {"precision": None, "recall": None})
    assert "0.4200" in f and "max_f1" in f


# --- baselines ------------------------------------------------------------------------

def _b(trivial, linear, kind="classification"):
    t, lin = {"classification": ("DummyClassifier", "LogisticRegression"), "regression": ("DummyRegressor", "Ridge")}[kind]
    return {"trivial": {"model": t, "about": "predicts the majority class", "test": trivial},
            "linear": {"model": lin, "about": "fitted on 1,000 rows", "test": linear}}


def test_a_network_worse_than_a_linear_model_is_told_so():
    """The issue's digits case: a CNN at 0.60 while LogisticRegression reaches 0.97."""
    test = {"f1": 0.60, "balanced_accuracy": 0.60}
    out, short = baseline_findings("classification", test, _b({"f1": 0.02, "balanced_accuracy": 0.1},
                                                              {"f1": 0.97, "balanced_accuracy": 0.97}))
    assert short is True
    (f,) = out
    assert f.startswith("No better than a linear model: f1 0.600 on test vs 0.970 for LogisticRegression")


def test_worse_than_trivial_and_linear():
    test = {"rmse": 177.6, "r2": -4.04}
    out, short = baseline_findings("regression", test, _b({"rmse": 79.3, "r2": -0.006}, {"rmse": 58.7, "r2": 0.45},
                                                          "regression"))
    assert short is True and len(out) == 2
    assert out[0].startswith("Worse than the trivial baseline: r2 -4.040 on test") and "-0.006" in out[0]
    assert out[1].startswith("No better than a linear model: rmse 177.600")


def test_a_model_that_beats_both_gets_one_line_with_the_numbers():
    out, short = baseline_findings("classification", {"f1": 0.51, "balanced_accuracy": 0.76},
                                   _b({"f1": 0.0, "balanced_accuracy": 0.5}, {"f1": 0.45, "balanced_accuracy": 0.7}))
    assert short is False
    assert out == [("Beats the baselines on test: f1 0.510 vs 0.450 (LogisticRegression) and 0.000 "
                    "(DummyClassifier, predicts the majority class).")]


def test_skipped_linear_baseline_and_no_baselines():
    b = _b({"f1": 0.0, "balanced_accuracy": 0.5}, None)
    b["linear"] = {"model": "LogisticRegression", "skipped": "150,528 features × 9,000 rows are too many"}
    out, short = baseline_findings("classification", {"f1": 0.8, "balanced_accuracy": 0.8}, b)
    assert out == ["No linear baseline: 150,528 features × 9,000 rows are too many."] and short is False
    assert baseline_findings("clustering", {"silhouette": 0.3}, None) == ([], False)


def test_underfitting_points_at_a_named_cause_instead_of_more_epochs():
    train, held = {"rmse": 170.0, "r2": -3.9}, {"rmse": 168.0, "r2": -3.8}
    generic, _ = fit_findings("regression", train, held, "validation", 1000.0)
    named, _ = fit_findings("regression", train, held, "validation", 1000.0, cause_named=True)
    assert "more epochs" in generic[0]
    assert named[0].startswith("Underfitting") and "more epochs" not in named[0] and "likely cause" in named[0]


def test_a_regression_error_gap_is_judged_against_the_size_of_the_error():
    """Without a gate limit, rmse 52.9 vs 54.2 (diabetes, Ridge: 2.5 %) is agreement, not overfitting;
    the same 1.3 gap on an error of 2.0 is."""
    out, _ = fit_findings("regression", {"rmse": 52.9, "r2": 0.5}, {"rmse": 54.2, "r2": 0.45}, "validation", None)
    assert "agree" in out[0]
    out, _ = fit_findings("regression", {"rmse": 2.0, "r2": 0.9}, {"rmse": 3.3, "r2": 0.7}, "validation", None)
    assert out[0].startswith("Overfitting")
