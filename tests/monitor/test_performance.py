"""The performance estimate without labels (CBPE) and the calibration check, on scores with known truth."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from raypipe.evaluate.monitoring import expected_calibration_error
from raypipe.monitor.performance import estimated, expected_roc_auc, measured
from raypipe.monitor.window import CONFIDENCE_BINS
from raypipe.spec import GateSection


def _histogram(p: np.ndarray, threshold: float) -> dict:
    """What the blocks send for calibrated binary scores ``p`` (here the scores are calibrated already)."""
    idx = np.minimum((p * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1)
    pred = p >= threshold
    return {"expected_correct": float(np.where(pred, p, 1 - p).sum()),
            "rows": np.bincount(idx, minlength=CONFIDENCE_BINS).tolist(),
            "positive": np.bincount(idx, weights=p, minlength=CONFIDENCE_BINS).tolist()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_accuracy_and_roc_auc_of_calibrated_scores_are_within_0_03_of_the_realised(seed) -> None:
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(-1.5, 1.5, 20_000)))
    y = (rng.random(len(p)) < p).astype(int)  # the labels the scores are calibrated for
    plan = {"calibration": {"kind": "binary", "x": [0.0, 1.0], "y": [0.0, 1.0], "ece": 0.01}}
    est = estimated(plan, {"confidence": _histogram(p, 0.5)}, {"accuracy": 0.9}, GateSection(min={"roc_auc": 0.5}),
                    max_ece=0.05)
    assert est["trustworthy"] and est["kind"] == "estimated"
    assert est["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=0.03)
    assert est["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=0.03)
    assert not est["below_gate"]


def test_an_estimate_from_badly_calibrated_scores_is_marked_untrustworthy_and_never_fails_the_gate() -> None:
    p = np.linspace(0.01, 0.99, 1000)
    plan = {"calibration": {"kind": "binary", "x": [0.0, 1.0], "y": [0.0, 1.0], "ece": 0.2}}
    est = estimated(plan, {"confidence": _histogram(p, 0.5)}, {}, GateSection(min={"accuracy": 0.99}), max_ece=0.05)
    assert not est["trustworthy"] and "max_calibration_error" in est["note"] and not est["below_gate"]


def test_expected_calibration_error() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(50_000)
    y = (rng.random(len(p)) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(np.clip(p * 1.6, 0, 1), y) > 0.1  # overconfident


def test_expected_roc_auc_needs_both_classes() -> None:
    assert expected_roc_auc(np.array([5, 5]), np.array([0.0, 0.0])) is None


def test_measured_performance_uses_the_evaluate_metrics_and_checks_the_gate() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 500)
    s1 = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    labelled = pd.DataFrame({"label": y.astype(str), "s0": 1 - s1, "s1": s1})
    plan = {"task": "classification", "classes": ["0", "1"], "threshold": 0.5}
    out = measured(plan, labelled, {"roc_auc": 0.9, "confusion_matrix": [[1]]}, GateSection(min={"roc_auc": 0.95}))
    assert out["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, s1))
    assert out["below_gate"] and out["checks"][0]["limit"] == 0.95 and "confusion_matrix" not in out["version_test"]
