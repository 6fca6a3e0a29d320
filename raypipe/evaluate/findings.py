"""Plain-language findings about a model: the baselines, over- and underfitting, slice gaps, the threshold.

"Too low" means barely better than a model that ignores the features: ROC-AUC or
balanced accuracy near chance for classifiers and labelled anomaly detectors, R² near 0
for regressors, a silhouette near 0 (no cluster structure) for clusterers.
"""
from __future__ import annotations

from typing import Any

from raypipe.evaluate.baselines import TRIVIAL_METRIC
from raypipe.metrics import higher_is_better_gap
from raypipe.tasks import TASKS

OVERFIT_TOLERANCE = 0.05  # when the gate sets no max_overfit_gap


def fit_findings(task: str, train: dict[str, Any], held_out: dict[str, Any], held_out_name: str,
                 max_gap: float | None, *, cause_named: bool = False) -> tuple[list[str], float | None]:
    """Findings about the train vs held-out gap, and that gap (in the main metric).

    ``cause_named``: a likely cause of poor training was found (:mod:`raypipe.evaluate.causes`);
    an underfitting finding then points at it instead of generic advice.
    """
    m = TASKS[task].main_metric
    a, b = train.get(m), held_out.get(m)
    if a is None or b is None:
        return [], None
    gap = higher_is_better_gap(m, a, b)
    limit = OVERFIT_TOLERANCE if max_gap is None else max_gap
    if max_gap is None and not TASKS[task].has_classes:
        limit = OVERFIT_TOLERANCE * abs(a)  # an error in the target's units (rmse): 5 % of the train error
    out: list[str] = []
    if gap > limit:
        out.append(f"Overfitting: {m} is {a:.3f} on train but {b:.3f} on {held_out_name} (gap {gap:.3f} > {limit:g}). "
                   "Try stronger regularisation, fewer epochs or a smaller model, or more training data.")
    if underfits(task, train, held_out):
        advice = ("The likely cause is named below." if cause_named else
                  "The model learns little from these features: try a more expressive model, more epochs, "
                  "or better features.")
        out.append(f"Underfitting: train and {held_out_name} scores are both close to chance "
                   f"({_low_text(task, train, held_out)}). {advice}")
    if not out:
        out.append(f"Train and {held_out_name} agree: {m} {a:.3f} vs {b:.3f} (gap {gap:+.3f}, limit {limit:g}).")
    return out, float(gap)


def underfits(task: str, train: dict[str, Any], held_out: dict[str, Any]) -> bool:
    """Whether train and held-out scores are both close to chance (what the underfitting finding says)."""
    return _too_low(task, train) and _too_low(task, held_out)


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
            f"precision {validation['precision']:.3f}, recall {validation['recall']:.3f}"
            + (f", specificity {validation['specificity']:.3f}" if validation.get("specificity") is not None else "")
            + " there."]


def baseline_findings(task: str, test: dict[str, Any], baselines: dict[str, Any] | None) -> tuple[list[str], bool]:
    """Findings comparing the model with the baselines on test, and whether it falls short of either.

    Falling short: worse than the trivial baseline in its metric (balanced accuracy, R²), or
    not better than the linear baseline in the task's main metric.
    """
    if not baselines:
        return [], False
    out: list[str] = []
    short = False
    trivial, linear = baselines["trivial"], baselines.get("linear") or {}
    tm = TRIVIAL_METRIC[task]
    mine, theirs = test.get(tm), trivial["test"].get(tm)
    floor = max(theirs or 0.0, 0.0) if tm == "r2" else theirs
    if mine is not None and floor is not None and mine < floor:
        short = True
        out.append(f"Worse than the trivial baseline: {tm} {mine:.3f} on test, while {trivial['model']}, which "
                   f"{trivial['about']} and ignores every feature, scores {_num(theirs)}. This model is not fit for use.")
    m = TASKS[task].main_metric
    base = (linear.get("test") or {}).get(m)
    if linear.get("skipped"):
        out.append(f"No linear baseline: {linear['skipped']}.")
    elif test.get(m) is not None and base is not None:
        lift = higher_is_better_gap(m, test[m], base)
        if lift <= 0:
            short = True
            out.append(f"No better than a linear model: {m} {test[m]:.3f} on test vs {base:.3f} for {linear['model']} "
                       f"{linear['about']}. That simpler model would do as well or better.")
        elif not short:
            out.append(f"Beats the baselines on test: {m} {test[m]:.3f} vs {base:.3f} ({linear['model']}) and "
                       f"{_num(trivial['test'].get(m))} ({trivial['model']}, {trivial['about']}).")
    return out, short


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
