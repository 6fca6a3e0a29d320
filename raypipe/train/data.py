"""From validated rows to (features, label) arrays, with the one fitted pipeline."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.tasks import TASKS


def xy_batch(batch: pd.DataFrame, features: dict[str, Any], target: str | None, classes: list[str] | None,
             task: str = "classification") -> dict[str, np.ndarray]:
    """Ray Data batch function: {"x": float32 (n, d), "y": labels} (y is 0 without a target)."""
    pipeline = _pipeline(features)
    y = TASKS[task].encode_labels(batch[target], classes) if target else np.zeros(len(batch), dtype=np.float32)
    return {"x": pipeline.transform(batch), "y": y}


_CACHE: dict[str, FeaturePipeline] = {}


def _pipeline(features: dict[str, Any]) -> FeaturePipeline:
    # Batch functions run many times per worker: build the fitted pipeline once.
    key = json.dumps(features, sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = FeaturePipeline.from_dict(features)
    return _CACHE[key]


def xy_dataset(ds: Any, features: dict[str, Any], schema: dict[str, Any]) -> Any:
    target = schema.get("target") or {}
    return ds.map_batches(
        xy_batch, fn_kwargs={"features": features, "target": target.get("name"), "classes": target.get("classes"),
                             "task": target.get("task", "classification")},
        batch_format="pandas",
    )


def xy_table(store: Any, rel: str, features: dict[str, Any], schema: dict[str, Any], context: Any) -> dict[str, np.ndarray]:
    """The small-data twin of :func:`xy_dataset`, in this process: the split's parquet files under ``rel`` read
    whole and transformed by the same :func:`xy_batch`, with pandas batches as Ray Data would give them under
    the driver's ``DataContext`` ``context``. No Ray Data execution."""
    from ray.data import DataContext

    from raypipe.datasets import as_batch, read_table

    DataContext._set_current(context)
    target = schema.get("target") or {}
    return xy_batch(as_batch(read_table(store, rel), "pandas"), features, target.get("name"), target.get("classes"),
                    target.get("task", "classification"))


def estimated_mb(rows: int, n_features: int) -> float:
    """What ``rows`` transformed rows take in Ray's object store: float32 features and an 8-byte label."""
    return rows * (4 * n_features + 8) / 2**20


def materialize_small(datasets: dict[str, Any], rows: dict[str, int], n_features: int,
                      limit_mb: float) -> tuple[dict[str, Any], float | None]:
    """The transformed splits, materialised when together they are under ``limit_mb``; and their size, if so.

    Ray Train feeds each worker through a streaming split whose coordinator actor starts
    on the worker's first read, after the worker group has started: on the built-in demo
    (35,000 training rows, 2 workers, 2 cores) that lazy first read of read -> transform
    kept the first epoch waiting, and materialising the splits before ``fit`` made the
    train stage ~2 s faster (seven runs each: 24.0-26.1 s without, 22.2-23.7 s with; two
    more runs with it took 16 s). A Tune search transforms the splits once instead of
    once per trial, which matters little where a trial's start-up dominates (16 trials of
    2 epochs on digits: 192.5-192.8 s against 195.2-199.4 s streamed, two runs each).
    """
    mb = estimated_mb(sum(rows[s] for s in datasets), n_features)
    if mb >= limit_mb:
        return datasets, None
    return {s: ds.materialize() for s, ds in datasets.items()}, mb
