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


def block_rows(ds: Any) -> list[tuple[Any, int, int | None]]:
    """A (materialised) dataset's blocks in order, as ``(block ref, first row, end row)``; the end is ``None``
    where Ray Data's metadata does not know the block's rows. Reading the refs of a materialised dataset runs
    no Ray Data execution."""
    pieces = []
    for bundle in ds.iter_internal_ref_bundles():
        for entry, part in zip(bundle.blocks, bundle.slices):
            if part is not None:
                pieces.append((entry.ref, part.start_offset, part.end_offset))
            else:
                pieces.append((entry.ref, 0, entry.metadata.num_rows))
    return pieces


def read_rows(pieces: list[tuple[Any, int, int | None]], lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` of rows ``[lo, hi)`` of ``pieces`` (:func:`block_rows`; all rows with ``hi=None``), fetched
    from the object store: only the blocks holding those rows."""
    import ray
    from ray.data.block import BlockAccessor

    xs, ys, at = [], [], 0
    for ref, first, end in pieces:
        if hi is not None and at >= hi:
            break
        n = None if end is None else end - first
        if n is not None and at + n <= lo:
            at += n
            continue
        block = BlockAccessor.for_block(ray.get(ref))
        end = block.num_rows() if end is None else end
        n = end - first
        a, b = max(lo - at, 0), n if hi is None else min(hi - at, n)
        if b > a:
            cols = BlockAccessor.for_block(block.slice(first + a, first + b, copy=False)).to_numpy(["x", "y"])
            xs.append(cols["x"])
            ys.append(cols["y"])
        at += n
    if not xs:  # an empty share (fewer rows than workers): no rows, with the columns' types
        if not pieces:
            raise ValueError("read_rows: a split without blocks")
        ref, first, _ = pieces[0]
        cols = BlockAccessor.for_block(BlockAccessor.for_block(ray.get(ref)).slice(first, first, copy=False)).to_numpy(["x", "y"])
        return cols["x"], cols["y"]
    return np.concatenate(xs), np.concatenate(ys)


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
