"""A split's labels and a model's scores on it, and the metrics they give.

Shared by the evaluate stage (the candidate and the champion) and the baselines, so
every model is measured by the same code on the same rows.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raypipe.evaluate.metrics import (
    anomaly_metrics,
    classification_metrics,
    clustering_metrics,
    regression_metrics,
)
from raypipe.tasks import TASKS


@dataclass
class Scored:
    """A split's labels, scores and kept columns, as gathered from Ray."""

    task: str
    y: np.ndarray | None  # None: no label column (clustering / anomaly without labels); anomaly: 0/1
    scores: np.ndarray  # (n, k) class probabilities, or (n, 1) values / cluster ids / anomaly scores
    frame: pd.DataFrame  # the kept columns (target and slice columns)
    class_names: list[str] | None
    x: np.ndarray | None = None  # the fitted features (clustering: silhouette; supervised: the linear baseline)

    def pred(self, threshold: float) -> np.ndarray:
        return TASKS[self.task].decide(self.scores, threshold)

    def metrics(self, threshold: float, mask: np.ndarray | None = None) -> dict[str, Any]:
        sel = (lambda a: a) if mask is None else (lambda a: None if a is None else a[mask])
        y, scores = sel(self.y), sel(self.scores)
        pred = TASKS[self.task].decide(scores, threshold)
        with warnings.catch_warnings():  # slices may lack a class: sklearn warns, the metric is still defined
            warnings.simplefilter("ignore")
            if self.task == "classification":
                return classification_metrics(y, pred.astype(np.int64), scores, self.class_names)
            if self.task == "regression":
                return regression_metrics(y, pred.astype(np.float64))
            if self.task == "clustering":
                return clustering_metrics(sel(self.x), pred)
            return anomaly_metrics(scores[:, 0], y, pred=pred)
