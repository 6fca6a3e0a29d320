"""What differs per task: labels, the decision from scores, the answer's shape, default metrics.

Adding a task is one new :class:`Task` entry in :data:`TASKS`; code elsewhere asks the
entry (``TASKS[name].supervised``, ``.decide``, ``.records``) instead of comparing names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raypipe.schema import label_strings, label_value


@dataclass(frozen=True)
class Task:
    """One kind of problem.

    Attributes:
        name: as written in ``data.task``.
        supervised: trains on a label column (unsupervised tasks may still evaluate with one).
        main_metric: the metric findings and the overfitting gap are stated in.
        default_metrics: ``evaluate.metrics`` when the spec leaves the default.
        metrics: every metric the evaluate stage computes for it.
        scores: what a model outputs per row: ``probabilities`` (one per class), ``value``,
            ``cluster`` (the id) or ``anomaly_score`` (higher = more anomalous).
        tune_metrics: what a Tune trial reports (the first is the default, ``tune_mode`` its
            direction); empty when the task cannot be tuned.
        serving_methods: an unsupervised estimator must have one of these to score new rows.
        policy: the model is a policy that acts in an environment (trained by RLlib, evaluated over
            episodes, served at ``/act``): it has no label, no fitted features and no rows to score.
    """

    name: str
    supervised: bool
    main_metric: str
    default_metrics: tuple[str, ...]
    metrics: tuple[str, ...]
    scores: str
    tune_metrics: tuple[str, ...] = ()
    tune_mode: str = "max"
    serving_methods: tuple[str, ...] = ()
    policy: bool = False

    @property
    def has_classes(self) -> bool:
        """Labels are classes and scores are class probabilities."""
        return self.scores == "probabilities"

    def encode_labels(self, values: Any, classes: list[str] | None) -> np.ndarray:
        """Labels as the model and the metrics use them: class index, float value, or 0/1 anomaly flag."""
        if classes is not None:
            return pd.Categorical(label_strings(values), categories=classes).codes.astype(np.int64)
        y = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float32)
        return (y > 0.5).astype(np.int64) if self.name == "anomaly" else y

    def decide(self, scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """The answer per row from the model's scores.

        classification: class index (binary: positive-class score >= threshold, else argmax);
        regression: the value; clustering: the cluster id; anomaly: 1 where score >= threshold.
        """
        if self.has_classes:
            if scores.shape[1] == 2:
                return (scores[:, 1] >= threshold).astype(np.int64)
            return scores.argmax(axis=1)
        flat = scores[:, 0] if scores.ndim == 2 else scores
        if self.name == "clustering":
            return flat.astype(np.int64)
        if self.name == "anomaly":
            return (flat >= threshold).astype(np.int64)
        return flat

    def drift_score(self, scores: np.ndarray) -> np.ndarray | None:
        """The one score per row whose distribution monitoring follows: the positive class's probability
        (binary), the top probability (multi-class), the anomaly score; None for values and clusters."""
        if self.has_classes:
            return scores[:, 1] if scores.shape[1] == 2 else scores.max(axis=1)
        if self.name == "anomaly":
            return scores[:, 0] if scores.ndim == 2 else scores
        return None

    def columns(self, decided: np.ndarray, scores: np.ndarray, classes: list[str] | None) -> dict[str, Any]:
        """The answer as columns (batch inference): one per answer field, ``score_<class>`` per class."""
        if classes:
            return {"prediction": [classes[int(i)] for i in decided],
                    **{f"score_{c}": scores[:, j] for j, c in enumerate(classes)}}
        if self.name == "anomaly":
            return {"is_anomaly": decided.astype(bool), "anomaly_score": scores[:, 0]}
        if self.name == "clustering":
            return {"cluster": decided}
        return {"prediction": decided}

    def records(self, decided: np.ndarray, scores: np.ndarray, classes: list[str] | None,
                target_type: str = "string") -> list[dict[str, Any]]:
        """The answer as one JSON-ready record per row (the endpoint, ``Predictor.predict_records``)."""
        if self.name == "clustering":
            return [{"cluster": int(v)} for v in decided]
        if self.name == "anomaly":
            flat = scores[:, 0] if scores.ndim == 2 else scores
            return [{"is_anomaly": bool(d), "anomaly_score": float(v)} for d, v in zip(decided, flat)]
        if classes is None:
            return [{"prediction": float(v)} for v in decided]
        labels = [label_value(c, target_type) for c in classes]
        return [{"prediction": labels[int(k)], "scores": dict(zip(classes, map(float, s)))}
                for k, s in zip(decided, scores)]


_CLASSIFICATION_ALL = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "f1_macro", "f1_weighted",
                       "roc_auc", "pr_auc", "log_loss", "brier",
                       "sensitivity", "specificity")  # binary only: true-positive and true-negative rates
RL_METRICS = ("episode_return_mean", "episode_return_median", "episode_return_min", "episode_return_max",
              "episode_return_std", "episode_len_mean")
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("classification", True, "f1", ("accuracy", "precision", "recall", "f1", "roc_auc"), _CLASSIFICATION_ALL,
         "probabilities", ("val_f1", "val_accuracy", "val_loss", "train_loss")),
    Task("regression", True, "rmse", ("rmse", "mae", "r2"), ("rmse", "mae", "r2", "mape"), "value",
         ("val_rmse", "val_loss", "train_loss"), "min"),
    Task("clustering", False, "silhouette", ("silhouette", "davies_bouldin"), ("silhouette", "davies_bouldin"),
         "cluster", serving_methods=("predict",)),
    # anomaly: roc_auc/pr_auc/precision_at_k/precision/recall/f1 need a label column (data.target)
    Task("anomaly", False, "roc_auc", ("roc_auc", "precision_at_k", "anomaly_rate"),
         ("roc_auc", "pr_auc", "precision_at_k", "precision", "recall", "f1", "anomaly_rate"), "anomaly_score",
         serving_methods=("score_samples", "decision_function")),
    # reinforcement: the metrics are over evaluate.episodes seeded episodes of the environment
    Task("reinforcement", False, "episode_return_mean",
         ("episode_return_mean", "episode_return_median", "episode_return_min", "episode_len_mean"),
         RL_METRICS, "action", ("episode_return_mean",), policy=True),
)}
