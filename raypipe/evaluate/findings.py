"""Plain-language findings about a model: over- and underfitting, slice gaps, the threshold.

"Too low" means barely better than a model that ignores the features: ROC-AUC or
balanced accuracy near chance for classifiers and labelled anomaly detectors, R² near 0
for regressors, a silhouette near 0 (no cluster structure) for clusterers.
"""
from __future__ import annotations

from typing import Any

from raypipe.evaluate.metrics import higher_is_better_gap
from raypipe.tasks import TASKS

OVERFIT_TOLERANCE = 0.05  # when the gate sets no max_overfit_gap


def fit_findings(task: str, train: dict[str, Any], held_out: dict[str, Any], held_out_name: str,
                 max_gap: float | None) -> tuple[list[str], float | None]:
    """Findings about the train vs held-out gap, and that gap (in the main metric)."""
    m = TASKS[task].main_metric
    a, b = train.get(m), held_out.get(m)
    if a is None or b is None:
        return [], None
    gap = higher_is_better_gap(m, a, b)
    limit = OVERFIT_TOLERANCE if max_gap is None else max_gap
    out: list[str] = []
    if gap > limit:
        out.append(f"Overfitting: {m} is {a:.3f} on train but {b:.3f} on {held_out_name} (gap {gap:.3f} > {limit:g}). "
                   "Try stronger regularisation, fewer epochs or a smaller model, or more training data.")
    if _too_low(task, train) and _too_low(task, held_out):
        out.append(f"Underfitting: train and {held_out_name} scores are both close to chance ({_low_text(task, train, held_out)}). "
                   "The model learns little from these features: try a more expressive model, more epochs, "
                   "or better features.")
    if not out:
        out.append(f"Train and {held_out_name} agree: {m} {a:.3f} vs {b:.3f} (gap {gap:+.3f}, limit {limit:g}).")
    return out, float(gap)


def _too_low(task: str, m: dict[str, Any]) -> bool:
    if task == "regression":
        return m.get("r2") is not None and m["r2"] < 0.1
    if task == "clustering":
        return m.get("silhouette") is not None and m["silhouette"] < 0.1
    auc, bal, k = m.get("roc_auc"), m.get("balanced_accuracy"), len(m.get("confusion_matrix") or [[0, 0]])
    if auc is not None:
        return auc < 0.6
    return bal is not None and bal < 1.0 / k + 0.1


def _low_text(task: str, train: dict[str, Any], held: dict[str, Any]) -> str:
    key = {"regression": "r2", "clustering": "silhouette"}.get(task) or (
        "roc_auc" if train.get("roc_auc") is not None else "balanced_accuracy")
    return f"{key} {train.get(key):.3f} / {held.get(key):.3f}"


def slice_findings(slices: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for column, s in slices.items():
        if s.get("gap") is not None:
            v = s["values"]
            out.append(f"Slices of {column!r}: {s['metric']} ranges from {v[s['worst']][s['metric']]:.3f} "
                       f"({s['worst']}, {v[s['worst']]['rows']} rows) to {v[s['best']][s['metric']]:.3f} "
                       f"({s['best']}, {v[s['best']]['rows']} rows), a gap of {s['gap']:.3f}.")
    return out


def threshold_finding(strategy: str, threshold: float, validation: dict[str, Any] | None) -> list[str]:
    if validation is None or validation.get("recall") is None:
        return [f"Decision threshold {threshold:.4f} ({strategy})."]
    return [f"Decision threshold {threshold:.4f}, chosen on validation ({strategy}): "
            f"precision {validation['precision']:.3f}, recall {validation['recall']:.3f} there."]
