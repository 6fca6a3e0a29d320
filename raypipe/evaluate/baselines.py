"""The two baselines every supervised model is measured against, on the same test split.

- **trivial**: a model that ignores the features — ``DummyClassifier(strategy="prior")``
  (answers the train split's majority class, scores each class by its share) or
  ``DummyRegressor()`` (answers the train mean).
- **linear**: ``LogisticRegression`` or ``Ridge`` fitted on the *same fitted features*
  the model saw, from the train split (the sample the evaluate stage scores, cut to at
  most :data:`LINEAR_MAX_ROWS` seeded rows so its cost stays bounded).

A model worse than the trivial baseline learned nothing usable; one that does not beat
the linear baseline could be replaced by it. Both are scored with the same metric code
as the model (:class:`~raypipe.evaluate.scored.Scored`), and the linear baseline's
decision threshold is chosen on validation exactly like the model's. Unsupervised
tasks (clustering, anomaly) have no baseline.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits

from raypipe.evaluate.scored import Scored

BASELINE_TASKS = frozenset({"classification", "regression"})
LINEAR_MAX_ROWS = 50_000  # the linear baseline is fitted on at most this many train rows
MAX_FEATURE_VALUES = 50_000_000  # rows × features gathered on the driver for it; wider data skips it
# The metric a model must not be worse in than the trivial baseline. Balanced accuracy, not accuracy:
# a threshold tuned for recall on rare positives may rightly lose accuracy to "always the majority".
TRIVIAL_METRIC = {"classification": "balanced_accuracy", "regression": "r2",
                  "reinforcement": "episode_return_mean"}  # reinforcement: the trivial baseline is the random policy
_DROP = ("per_class", "confusion_matrix")


def features_fit_in_memory(rows: int, n_features: int) -> bool:
    """Whether the fitted features of ``rows`` rows may be gathered on the driver for the linear baseline."""
    return rows * max(n_features, 1) <= MAX_FEATURE_VALUES


def trivial_model(task: str) -> Any:
    return DummyClassifier(strategy="prior") if task == "classification" else DummyRegressor(strategy="mean")


def linear_model(task: str, seed: int) -> Any:
    return LogisticRegression(max_iter=500, random_state=seed) if task == "classification" else Ridge(alpha=1.0)


def sample_rows(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``cap`` of ``n`` rows, drawn with ``seed``."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def scores_of(est: Any, x: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """The estimator's scores in the model's layout: (n, k) class probabilities or (n, 1) values.

    A class missing from the train sample gets probability 0 (its column is scattered back).
    """
    if task != "classification":
        return np.asarray(est.predict(x), dtype=np.float64)[:, None]
    out = np.zeros((len(x), n_classes))
    out[:, est.classes_.astype(np.int64)] = est.predict_proba(x)
    return out


def score_baselines(scored: dict[str, Scored], pick_threshold: Callable[[Scored | None], tuple[float, str]], *,
                    seed: int, skip_linear: str | None = None) -> dict[str, Any] | None:
    """Fit both baselines on the train split; score them on validation and test.

    Args:
        scored: the model's scored splits (``train`` and ``test``, ``validation`` if any);
            ``x`` holds their fitted features unless ``skip_linear`` is given.
        pick_threshold: the stage's threshold rule, applied to a baseline's validation scores.
        seed: seeds the linear baseline's row sample and solver.
        skip_linear: why the linear baseline is not fitted (then only the trivial one is).

    Returns:
        ``{"trivial": {...}, "linear": {...}}``, each with the estimator's name, what it
        was fitted on, its threshold and its ``test`` metrics (``linear`` may instead hold
        ``skipped``: the reason); None for a task without baselines.
    """
    train, test = scored["train"], scored["test"]
    task = test.task
    if task not in BASELINE_TASKS or train.y is None:
        return None
    n_classes = len(test.class_names or [0])
    keep = np.isfinite(train.y) if task == "regression" else np.ones(len(train.y), bool)
    out: dict[str, Any] = {}

    trivial = trivial_model(task).fit(np.zeros((int(keep.sum()), 1)), train.y[keep])
    out["trivial"] = _scored(trivial, task, scored, n_classes, lambda s: np.zeros((len(s.y), 1)),
                             lambda _: (0.5, "the majority class"))
    out["trivial"].update(about="predicts " + ("the train split's majority class" if task == "classification"
                                               else "the train split's mean"))

    if skip_linear is None and train.x is not None and len(np.unique(train.y[keep])) < 2:
        skip_linear = "the train split has a single label value"
    if skip_linear is not None or train.x is None:
        out["linear"] = {"model": type(linear_model(task, seed)).__name__,
                         "skipped": skip_linear or "the fitted features were not gathered"}
        return out
    rows = np.flatnonzero(keep)
    rows = rows[sample_rows(len(rows), LINEAR_MAX_ROWS, seed)]
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # One BLAS thread: the solver's matrix-vector products are too small to split (LogisticRegression on
        # 50,000 x 40 features fitted 2.8x faster than on two threads), and the fit no longer depends on the
        # machine's core count.
        warnings.simplefilter("ignore", ConvergenceWarning)  # a baseline: a few more iterations would not change the verdict
        linear = linear_model(task, seed).fit(train.x[rows], train.y[rows])
    out["linear"] = _scored(linear, task, scored, n_classes, lambda s: s.x, pick_threshold)
    out["linear"].update(train_rows=len(rows), about=f"fitted on {len(rows):,} rows of the train split's fitted features"
                         + (f" (a seeded sample of {len(train.y):,})" if len(rows) < len(train.y) else ""))
    return out


def _scored(est: Any, task: str, scored: dict[str, Scored], n_classes: int, x_of: Callable[[Scored], np.ndarray],
            pick_threshold: Callable[[Scored | None], tuple[float, str]]) -> dict[str, Any]:
    """The baseline's name, threshold and test metrics, by the same code as the model's."""
    def as_scored(s: Scored) -> Scored:
        return replace(s, scores=scores_of(est, x_of(s), task, n_classes), x=None)

    val = scored.get("validation")
    threshold, strategy = pick_threshold(as_scored(val) if val is not None else None)
    metrics = as_scored(scored["test"]).metrics(threshold)
    out: dict[str, Any] = {"model": type(est).__name__}
    if task == "classification":
        out.update(threshold=threshold, threshold_strategy=strategy)
    return {**out, "test": {k: v for k, v in metrics.items() if k not in _DROP}}
