"""Validation metrics a trial reports, named as the torch loop names them.

classification: ``val_accuracy``, ``val_f1`` (binary: F1 of class index 1 at argmax;
more classes: macro F1) and ``val_loss`` (log loss); regression: ``val_rmse`` and
``val_loss`` (mean squared error).
"""
from __future__ import annotations

import numpy as np

from raypipe.tasks import TASKS


def validation_metrics(task: str, y: np.ndarray, scores: np.ndarray, n_outputs: int) -> dict[str, float]:
    from sklearn import metrics as skm

    if TASKS[task].has_classes:
        labels = list(range(n_outputs))
        pred = scores.argmax(axis=1)
        f1 = (skm.f1_score(y, pred, pos_label=1, average="binary", zero_division=0) if n_outputs == 2
              else skm.f1_score(y, pred, average="macro", zero_division=0))
        return {"val_accuracy": float(skm.accuracy_score(y, pred)), "val_f1": float(f1),
                "val_loss": float(skm.log_loss(y, np.clip(scores, 1e-15, 1), labels=labels))}
    mse = float(skm.mean_squared_error(y, scores))
    return {"val_loss": mse, "val_rmse": float(np.sqrt(mse))}


def f1_from_counts(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> float:
    """F1 from per-class counts (summed over workers): class 1's when binary, else the macro mean
    over classes that occur in the labels or the predictions (as scikit-learn's macro F1)."""
    tp, predicted, actual = (np.asarray(a, dtype=np.float64) for a in (tp, predicted, actual))
    denom = predicted + actual
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if len(tp) == 2:
        return float(f1[1])
    present = denom > 0
    return float(f1[present].mean()) if present.any() else 0.0
