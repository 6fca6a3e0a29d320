"""Metrics from ``sklearn.metrics``, computed from labels and scores gathered by Ray."""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y: np.ndarray, pred: np.ndarray, scores: np.ndarray, n_classes: int) -> dict[str, Any]:
    """accuracy, precision, recall, f1, roc_auc and the confusion matrix.

    Binary problems use the positive (second) class; multi-class ones macro averages.
    """
    labels = list(range(n_classes))
    avg = "binary" if n_classes == 2 else "macro"
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, average=avg, labels=labels, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, average=avg, labels=labels, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, average=avg, labels=labels, zero_division=0)),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "rows": int(len(y)),
    }
    present = np.unique(y)
    if len(present) < 2:
        out["roc_auc"] = None  # undefined with one class in the split
    elif n_classes == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y, scores[:, 1]))
    else:
        out["roc_auc"] = float(skm.roc_auc_score(y, scores, multi_class="ovr", labels=labels))
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)),
        "rows": int(len(y)),
    }


def best_f1_threshold(y: np.ndarray, p1: np.ndarray) -> float:
    """The decision threshold on the positive-class score that maximises F1."""
    if len(np.unique(y)) < 2:
        return 0.5
    precision, recall, thresholds = skm.precision_recall_curve(y, p1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])
