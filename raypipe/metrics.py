"""Metrics by task, all from ``sklearn.metrics``, on labels and scores gathered by Ray.

Every function takes plain numpy arrays and returns JSON-ready dicts (floats, lists,
``None`` where a metric is undefined, e.g. ROC-AUC with one class in the split).
A foundation module (it was ``evaluate/metrics.py``): the evaluate stage and the monitor
(a labelled window) measure with the same code.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

from raypipe.tasks import TASKS

LOWER_IS_BETTER = frozenset({"rmse", "mae", "mape", "log_loss", "brier", "davies_bouldin"})


def higher_is_better_gap(metric: str, a: float, b: float) -> float:
    """How much ``a`` is better than ``b`` (positive = better), for any metric direction."""
    return b - a if metric in LOWER_IS_BETTER else a - b


def classification_metrics(y: np.ndarray, pred: np.ndarray, scores: np.ndarray,
                           class_names: list[str]) -> dict[str, Any]:
    """Every classification metric, the confusion matrix and the per-class report.

    Binary problems state precision/recall/F1 for the positive (second) class;
    multi-class ones macro-average them (``f1_macro``/``f1_weighted`` are always there).
    """
    n = len(class_names)
    labels = list(range(n))
    # One per-class report and one confusion matrix; precision/recall/F1 are read from the report, which
    # holds exactly what precision_score & co. return (each of those would compute the report's counts again).
    report = skm.classification_report(y, pred, labels=labels, target_names=class_names, output_dict=True,
                                       zero_division=0)
    cm = skm.confusion_matrix(y, pred, labels=labels)
    chosen = report[class_names[1]] if n == 2 else report["macro avg"]  # binary: the positive class
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)) if len(y) else None,
        "precision": float(chosen["precision"]),
        "recall": float(chosen["recall"]),
        "f1": float(chosen["f1-score"]),
        "f1_macro": float(report["macro avg"]["f1-score"]),
        "f1_weighted": float(report["weighted avg"]["f1-score"]),
        "confusion_matrix": cm.tolist(),
        "per_class": report,
        "rows": int(len(y)),
    }
    probs = np.clip(scores, 1e-15, 1.0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    out["log_loss"] = float(skm.log_loss(y, probs, labels=labels)) if len(y) else None
    out["brier"] = float(skm.brier_score_loss(y, probs[:, 1])) if n == 2 and len(y) else None
    out["sensitivity"], out["specificity"] = _sensitivity_specificity(cm) if n == 2 else (None, None)
    if len(np.unique(y)) < 2:
        out["roc_auc"] = out["pr_auc"] = None  # undefined with one class in the split
    elif n == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y, scores[:, 1]))
        out["pr_auc"] = float(skm.average_precision_score(y, scores[:, 1]))
    else:
        # One-vs-rest, macro over the classes present in the split (a missing class has no AUC).
        onehot = np.eye(n)[y]
        present = onehot.sum(axis=0) > 0
        out["roc_auc"] = float(skm.roc_auc_score(onehot[:, present], probs[:, present], average="macro"))
        out["pr_auc"] = float(skm.average_precision_score(onehot[:, present], scores[:, present], average="macro"))
    return out


def _sensitivity_specificity(cm: np.ndarray) -> tuple[float | None, float | None]:
    """True-positive and true-negative rates from a binary confusion matrix (``None`` without that class)."""
    (tn, fp), (fn, tp) = cm
    return (float(tp / (tp + fn)) if tp + fn else None), (float(tn / (tn + fp)) if tn + fp else None)


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE, R² and MAPE (MAPE is ``None`` when a true value is 0)."""
    if len(y) == 0:
        return {"rmse": None, "mae": None, "r2": None, "mape": None, "rows": 0}
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else None,
        "mape": None if np.any(y == 0) else float(skm.mean_absolute_percentage_error(y, pred)),
        "rows": int(len(y)),
    }


def clustering_metrics(x: np.ndarray, labels: np.ndarray, *, sample_size: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Silhouette (on a seeded sample above ``sample_size`` rows) and Davies-Bouldin."""
    k = len(np.unique(labels))
    if k < 2 or k >= len(labels):
        return {"silhouette": None, "davies_bouldin": None, "clusters": int(k), "rows": int(len(labels))}
    size = sample_size if len(labels) > sample_size else None
    return {
        "silhouette": float(skm.silhouette_score(x, labels, sample_size=size, random_state=seed)),
        "davies_bouldin": float(skm.davies_bouldin_score(x, labels)),
        "clusters": int(k),
        "rows": int(len(labels)),
    }


def anomaly_metrics(score: np.ndarray, y: np.ndarray | None = None, *, k: int | None = None,
                    pred: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of an anomaly score (higher = more anomalous) and, given ``pred``, of the 0/1 decisions.

    Without labels: the anomaly rate of ``pred``. With labels of both kinds: ROC-AUC,
    PR-AUC, precision@k (``k`` defaults to the number of true anomalies) and, given
    ``pred``, precision/recall/F1 and the confusion matrix at the threshold.
    """
    out: dict[str, Any] = {"rows": int(len(score)), "score_mean": float(np.mean(score)) if len(score) else None}
    if pred is not None:
        out["anomaly_rate"] = float(pred.mean()) if len(pred) else None
    if y is None or len(np.unique(y)) < 2:
        return {**out, "roc_auc": None, "precision_at_k": None}
    k = int(k or y.sum())
    top = np.argsort(-score, kind="stable")[:k]
    out.update(roc_auc=float(skm.roc_auc_score(y, score)), pr_auc=float(skm.average_precision_score(y, score)),
               precision_at_k=float(y[top].mean()), k=k)
    if pred is not None:
        prf = {"zero_division": 0}
        out.update(precision=float(skm.precision_score(y, pred, **prf)), recall=float(skm.recall_score(y, pred, **prf)),
                   f1=float(skm.f1_score(y, pred, **prf)),
                   confusion_matrix=skm.confusion_matrix(y, pred, labels=[0, 1]).tolist())
    return out


def choose_threshold(y: np.ndarray, p1: np.ndarray, strategy: str = "max_f1", target_recall: float | None = None,
                     target_specificity: float | None = None) -> float:
    """The decision threshold on the positive-class score (a row is positive when its score is ``>=`` it).

    ``max_f1``: maximises F1. ``target_recall``: the highest threshold whose recall is
    still at least ``target_recall`` (the most precise model that catches enough).
    ``target_specificity``: the lowest threshold whose specificity is still at least
    ``target_specificity`` (the most sensitive model that raises few enough false alarms;
    the screening test's operating point). Where no threshold reaches it, the highest score.
    """
    if len(np.unique(y)) < 2:
        return 0.5
    if strategy == "target_specificity":
        # roc_curve: thresholds fall, FPR rises; every distinct score is a point (drop_intermediate=False)
        fpr, _, thresholds = skm.roc_curve(y, p1, drop_intermediate=False)
        ok = np.flatnonzero(fpr[1:] <= 1.0 - float(target_specificity or 0.0) + 1e-12) + 1  # [0] is +inf
        return float(thresholds[ok[-1]]) if len(ok) else float(thresholds[1])
    precision, recall, thresholds = skm.precision_recall_curve(y, p1)
    if strategy == "target_recall":
        ok = np.flatnonzero(recall[:-1] >= float(target_recall or 0.0))
        return float(thresholds[ok[-1]]) if len(ok) else float(thresholds[0])
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])



def task_metrics(task: str, y: np.ndarray | None, scores: np.ndarray, threshold: float,
                 class_names: list[str] | None, x: np.ndarray | None = None) -> dict[str, Any]:
    """Every metric of ``task`` from labels and a model's scores, decided at ``threshold``."""
    pred = TASKS[task].decide(scores, threshold)
    with warnings.catch_warnings():  # slices may lack a class: sklearn warns, the metric is still defined
        warnings.simplefilter("ignore")
        if task == "classification":
            return classification_metrics(y, pred.astype(np.int64), scores, class_names)
        if task == "regression":
            return regression_metrics(y, pred.astype(np.float64))
        if task == "clustering":
            return clustering_metrics(x, pred)
        return anomaly_metrics(scores[:, 0], y, pred=pred)
