"""The multivariate check: can a classifier tell the window's rows from the training rows?

A domain classifier (scikit-learn's ``HistGradientBoostingClassifier``: fast, missing values
and categories handled natively) is trained to tell a sample of the reference (the version's
stored training sample) from a sample of the window. Its cross-validated ROC-AUC
(``cross_val_score``) is about 0.5 when it cannot, and rises with any shift it can exploit,
including joint shifts no single column shows (two columns whose relation changed). The columns
it relied on most are ranked by permutation importance (``sklearn.inspection``) on a held-out fold.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

FOLDS = 3
MIN_ROWS_EACH = 50  # fewer rows on either side: no verdict (the AUC would be noise)


def _frame(ref: pd.DataFrame, win: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    from raypipe.columns import as_float
    from raypipe.schema import label_strings

    x = pd.DataFrame(index=range(len(ref) + len(win)))
    for c in numeric:
        x[c] = np.concatenate([as_float(ref[c]), as_float(win[c])])
    for c in categorical:
        texts = []
        for part in (ref[c], win[c]):
            t = part.copy()
            present = t.notna()
            t = t.astype(object)
            t[present] = (label_strings(part[present]) if pd.api.types.is_numeric_dtype(part) else part[present].astype(str))
            texts.append(t)
        both = pd.concat(texts, ignore_index=True)
        top = both.value_counts().index[:250]  # HistGradientBoosting takes at most 255 categories
        x[c] = pd.Categorical(both.where(both.isin(top)), categories=list(top))
    return x


def domain_classifier(ref: pd.DataFrame, win: pd.DataFrame, numeric: list[str], categorical: list[str],
                      threshold: float, seed: int = 0) -> dict[str, Any]:
    """``{auc, auc_folds, threshold, drifted, top_features, rows}``; ``drifted`` None when too few rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from threadpoolctl import threadpool_limits

    numeric = [c for c in numeric if c in ref and c in win]
    categorical = [c for c in categorical if c in ref and c in win]
    rows = {"reference": int(len(ref)), "window": int(len(win))}
    if min(len(ref), len(win)) < MIN_ROWS_EACH or not (numeric or categorical):
        return {"method": "domain classifier", "auc": None, "threshold": threshold, "drifted": None, "rows": rows,
                "top_features": [], "note": f"needs at least {MIN_ROWS_EACH} rows on each side"}
    x = _frame(ref, win, numeric, categorical)
    y = np.r_[np.zeros(len(ref), dtype=np.int64), np.ones(len(win), dtype=np.int64)]
    clf = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=15, learning_rate=0.1, early_stopping=False,
                                         categorical_features="from_dtype", random_state=seed)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):  # 10k rows: threads buy little, and on a busy host
        aucs = cross_val_score(clf, x, y, cv=folds, scoring="roc_auc")  # OpenMP's spinning made a fit 10x slower
        auc = float(np.mean(aucs))
        train, test = next(folds.split(x, y))
        fitted = clf.fit(x.iloc[train], y[train])
        imp = permutation_importance(fitted, x.iloc[test], y[test], scoring="roc_auc", n_repeats=3,
                                     random_state=seed)
    order = np.argsort(-imp.importances_mean)
    top = [{"column": x.columns[i], "importance": float(imp.importances_mean[i])} for i in order[:5]
           if imp.importances_mean[i] > 0]
    return {"method": "domain classifier", "auc": auc, "auc_folds": [float(a) for a in aucs], "threshold": threshold,
            "drifted": auc > threshold, "rows": rows, "top_features": top}
