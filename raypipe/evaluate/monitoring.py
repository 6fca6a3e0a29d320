"""What the monitor needs of the evaluation: the test split's prediction distribution and a score calibration.

Written as ``monitor_reference.json`` and kept in the registered version
(``monitor/predictions.json``): monitoring compares a window's answers with the answers
this version gave on its own test split, and estimates a classifier's performance on
unlabelled windows from its scores (confidence-based performance estimation, as NannyML's
CBPE does). That estimate is only as good as the scores' calibration, so a calibrator is
fitted on the validation split (the test split when there is none) and its expected
calibration error is measured on the test split: the monitor marks the estimate
untrustworthy above ``monitor.max_calibration_error``. The calibrator is isotonic when both
outcomes have at least ``ISOTONIC_MIN`` rows, else Platt's sigmoid on the score's logit
(scikit-learn's advice: isotonic overfits small sets; with 52 positives it put whole score
ranges at probability 0, and the expected ROC-AUC came out 0.03 above the realised one, the
sigmoid 0.009). Either is stored as points of a piecewise-linear map (``x`` → ``y``), which is
all the monitor applies (``np.interp``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from raypipe.columns import quantile_bins
from raypipe.evaluate.scored import Scored
from raypipe.tasks import TASKS

FORMAT = "raypipe.monitor-reference/1"
ECE_BINS = 15
ISOTONIC_MIN = 1000


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE: the row-weighted mean gap between the mean score and the observed rate in equal-width score bins."""
    if not len(confidence):
        return None
    idx = np.minimum((np.asarray(confidence) * bins).astype(np.int64), bins - 1)
    n = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=confidence, minlength=bins) - np.bincount(idx, weights=outcome, minlength=bins))
    return float(gap.sum() / n.sum())


def calibration_target(task: str, scores: np.ndarray, y: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(score, outcome) pairs the calibrator learns: binary — the positive class's score and the label;
    multi-class — the top score and whether the top class was right."""
    if scores.shape[1] == 2:
        return scores[:, 1], (y == 1).astype(np.float64)
    return scores.max(axis=1), (TASKS[task].decide(scores, threshold) == y).astype(np.float64)


def _exact_bins(v: np.ndarray) -> dict[str, Any]:
    v = np.sort(np.asarray(v, dtype=np.float64))
    return {**quantile_bins(v, np.ones(len(v)), len(v)), "std": float(v.std()) if len(v) else None}


def _answer_bins(task: str, answers: np.ndarray, classes: list[str] | None) -> dict[str, Any]:
    """The decided answers: class / cluster / flag counts as categories, regression values as quantile bins."""
    if task == "regression":
        return {"kind": "numeric", **_exact_bins(answers)}
    labels = np.asarray(classes, dtype=object)[answers.astype(np.int64)] if classes else answers.astype(np.int64).astype(str)
    values, counts = np.unique(labels.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {"kind": "categorical", "values": values[order].tolist(), "counts": counts[order].tolist(), "rest": 0}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_calibrator(score: np.ndarray, outcome: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """(method, x, y): the calibration map as points, isotonic or Platt's sigmoid (see the module docstring)."""
    if min(outcome.sum(), len(outcome) - outcome.sum()) >= ISOTONIC_MIN:
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, outcome)
        return "isotonic", iso.X_thresholds_, iso.y_thresholds_
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(outcome)) < 2:  # one outcome only: nothing to learn, the scores stand as they are
        return "identity", np.array([0.0, 1.0]), np.array([0.0, 1.0])
    platt = LogisticRegression(C=1e6).fit(_logit(score)[:, None], outcome)
    grid = np.unique(np.r_[np.linspace(0.0, 1.0, 201), np.quantile(score, np.linspace(0.0, 1.0, 201))])
    return "sigmoid", grid, platt.predict_proba(_logit(grid)[:, None])[:, 1]


def _calibration(test: Scored, validation: Scored | None, threshold: float) -> dict[str, Any] | None:
    if not TASKS[test.task].has_classes or test.y is None or not len(test.y):
        return None
    fit_on = validation if validation is not None and validation.y is not None and len(validation.y) else test
    x, outcome = calibration_target(test.task, fit_on.scores, fit_on.y, threshold)
    method, grid_x, grid_y = fit_calibrator(x, outcome)
    tx, t_outcome = calibration_target(test.task, test.scores, test.y, threshold)
    calibrated = np.interp(tx, grid_x, grid_y)
    return {"kind": "binary" if test.scores.shape[1] == 2 else "top_class", "method": method,
            "fitted_on": "validation" if fit_on is validation else "test",
            "x": grid_x.tolist(), "y": grid_y.tolist(),
            "ece_raw": expected_calibration_error(tx, t_outcome),
            "ece": expected_calibration_error(calibrated, t_outcome), "test_rows": int(len(test.y))}


def prediction_reference(test: Scored, validation: Scored | None, threshold: float) -> dict[str, Any]:
    """The document the register stage keeps in the version as ``monitor/predictions.json``."""
    answers = test.pred(threshold)
    score = TASKS[test.task].drift_score(test.scores)
    return {"format": FORMAT, "task": test.task, "classes": test.class_names, "threshold": threshold,
            "rows": int(len(answers)), "answer": _answer_bins(test.task, answers, test.class_names),
            "score": None if score is None else {"kind": "numeric", **_exact_bins(score)},
            "calibration": _calibration(test, validation, threshold)}
