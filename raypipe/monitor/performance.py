"""How well the version does on a window: measured when the window has labels, estimated when not.

Measured: the evaluate stage's metric functions (:func:`raypipe.metrics.task_metrics`) on the
window's labels and the version's scores, beside the version's own test metrics and the gate's
limits. Estimated (classifiers without labels): confidence-based performance estimation, as
NannyML's CBPE does. With calibrated scores, the chance each answer is right is known, so the
expected accuracy is their mean, and the expected ROC-AUC is the AUC of the curve each row
contributes to as a positive with weight p and a negative with weight 1 - p (computed by
``roc_auc_score`` with those sample weights over the per-block score histogram). It is only as
good as the calibration: the version's test split says how good (its expected calibration error),
and above ``monitor.max_calibration_error`` the estimate is marked untrustworthy.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from raypipe.metrics import task_metrics
from raypipe.tasks import TASKS

_NON_SCALAR = ("confusion_matrix", "per_class")


def expected_roc_auc(rows: np.ndarray, positive: np.ndarray) -> float | None:
    """The ROC-AUC expected from a score histogram: per bin its rows and the sum of their calibrated p."""
    rows, positive = np.asarray(rows, dtype=np.float64), np.asarray(positive, dtype=np.float64)
    used = rows > 0
    pos, neg = positive[used], rows[used] - positive[used]
    if pos.sum() <= 0 or neg.sum() <= 0:
        return None
    bins = np.flatnonzero(used).astype(np.float64)
    return float(roc_auc_score(np.r_[np.ones(len(bins)), np.zeros(len(bins))], np.r_[bins, bins],
                               sample_weight=np.r_[pos, np.clip(neg, 0, None)]))


def _limits(gate: Any, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The gate's ``min``/``max`` checks on the window's (measured or estimated) metrics."""
    checks = []
    for m, lo in gate.min.items():
        if metrics.get(m) is not None:
            checks.append({"check": f"{m} >= {lo:g}", "value": metrics[m], "limit": lo, "passed": metrics[m] >= lo})
    for m, hi in gate.max.items():
        if metrics.get(m) is not None:
            checks.append({"check": f"{m} <= {hi:g}", "value": metrics[m], "limit": hi, "passed": metrics[m] <= hi})
    return checks


def measured(plan: dict[str, Any], labelled: pd.DataFrame, version_test: dict[str, Any], gate: Any) -> dict[str, Any]:
    """The window's metrics from its labels (the evaluate stage's functions), the version's test metrics, the gate."""
    task, classes = plan["task"], plan["classes"]
    scores = labelled[[c for c in labelled.columns if c.startswith("s")]].to_numpy(dtype=np.float64)
    y = TASKS[task].encode_labels(labelled["label"], classes)
    known = y >= 0 if classes else np.isfinite(y)
    metrics = task_metrics(task, y[known], scores[known], plan["threshold"], classes)
    scalar = {k: v for k, v in metrics.items() if k not in _NON_SCALAR}
    checks = _limits(gate, scalar)
    return {"kind": "measured", "rows": int(known.sum()), "metrics": scalar,
            "version_test": {k: v for k, v in (version_test or {}).items() if k not in _NON_SCALAR},
            "checks": checks, "below_gate": any(not c["passed"] for c in checks)}


def estimated(plan: dict[str, Any], doc: dict[str, Any], version_test: dict[str, Any], gate: Any,
              max_ece: float) -> dict[str, Any] | None:
    """Expected accuracy and (binary) ROC-AUC from the calibrated scores; None for tasks without classes."""
    conf, cal = doc.get("confidence"), plan.get("calibration")
    if conf is None or cal is None:
        return None
    rows = int(np.sum(conf["rows"]))
    metrics = {"accuracy": conf["expected_correct"] / rows if rows else None,
               "roc_auc": expected_roc_auc(conf["rows"], conf["positive"]) if cal["kind"] == "binary" else None}
    ece = cal.get("ece")
    trusted = ece is not None and ece <= max_ece
    checks = _limits(gate, metrics) if trusted else []
    return {"kind": "estimated", "method": "confidence-based (CBPE)", "rows": rows, "metrics": metrics,
            "version_test": {k: (version_test or {}).get(k) for k in metrics},
            "calibration": {"ece": ece, "ece_raw": cal.get("ece_raw"), "limit": max_ece,
                            "fitted_on": cal.get("fitted_on")},
            "trustworthy": trusted,
            "note": None if trusted else (f"the scores' calibration error on the version's test split ({ece:.3f}) is "
                                          f"above monitor.max_calibration_error={max_ece:g}: an estimate, not to be "
                                          "trusted" if ece is not None else "no calibration check: not trusted"),
            "checks": checks, "below_gate": any(not c["passed"] for c in checks)}
