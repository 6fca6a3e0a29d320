"""Score every split (and the champion) in one pass: one Ray Data execution, or a task per core for small data.

Earlier the evaluate stage ran four Ray Data executions (a row count, then one per split)
and a fifth for the champion; on the 200,000-row pipeline benchmark they took 1.5-2.4 s of
the stage's 3.2 s, mostly each execution's fixed start-up cost. Now each split is a
*branch*: its parquet folder, the model that scores it and what to keep. The branches
are read, scored and summarised together:

* below :data:`raypipe.datasets.SMALL_DATA_BYTES`, the branches shared over as many Ray tasks
  as Ray Data runs at once (one per core on a local Ray; a task per branch would start more
  worker processes, seconds each on a cold Ray): each task reads its branches' files and runs :func:`score_batch` on the same batches Ray Data would form;
* above, one Ray Data execution: a union of ``read_parquet -> map_batches(score_batch)``
  per branch.

Both paths form the same batches: :func:`batch_rows` rows each, as many as keep a batch's
feature matrix near :data:`BATCH_BYTES` (4,096 to 32,768 rows). Each batch costs a few
milliseconds beside its model's work (slicing, Arrow and ``.npy`` conversion, the train
sample's hashes), so narrow data gets long batches and wide data stays at 4,096 rows.

Either way ``score_batch`` answers one row per batch: the branch's name and the batch's
kept columns, scores and (optionally) features as Arrow IPC and ``.npy`` bytes, so
branches whose models give different columns share one output schema. The driver joins
each branch's parts in order; labels, scores, kept columns and features stay row-aligned.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raypipe.evaluate.scored import Scored
from raypipe.store import Store
from raypipe.tasks import TASKS

MIN_BATCH_ROWS, MAX_BATCH_ROWS = 4096, 32768  # rows per scoring batch, both paths
BATCH_BYTES = 16 << 20  # a batch's fitted features (float64) aim at this size
_PREDICTORS: dict[str, Any] = {}  # per worker process: the candidate and the champion, loaded once each


@dataclass
class Branch:
    """One split scored by one model."""

    name: str  # "train", "validation", "test", or "champion" (the champion on test)
    store: Store  # where the split's parquet folder is
    rel: str
    model_uri: str
    model_key: str  # a digest of the model files: the predictor cache key
    features: dict[str, Any]
    schema: dict[str, Any]
    keep: list[str] = field(default_factory=list)  # columns gathered beside the scores (target, slices)
    with_features: bool = False  # gather the fitted features too
    sample: dict[str, float] | None = None  # {"fraction", "seed"}: keep rows by a hash of their content
    trusted: list[str] = field(default_factory=list)
    batch_rows: int = MIN_BATCH_ROWS  # rows per scoring batch (:func:`batch_rows`)

    def kwargs(self) -> dict[str, Any]:
        return {"branch": self.name, "model_uri": self.model_uri, "model_key": self.model_key,
                "features": self.features, "schema": self.schema, "keep": self.keep,
                "with_features": self.with_features, "sample": self.sample, "trusted": self.trusted}


def batch_rows(n_features: int) -> int:
    """Rows per scoring batch for ``n_features`` fitted features: a batch's features near :data:`BATCH_BYTES`.

    0 features (a model fed raw images, text or audio, no fitted features) keeps the shortest batches.
    """
    if n_features <= 0:
        return MIN_BATCH_ROWS
    return int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, BATCH_BYTES // (8 * n_features))))


def sample_rows(batch: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The rows whose content hash falls below ``fraction``: the same rows whatever the block layout."""
    from raypipe.columns import row_uniform

    return batch[row_uniform(batch, seed) < fraction]


def _predictor(model_uri: str, model_key: str, features: dict[str, Any], schema: dict[str, Any],
               trusted: list[str]) -> Any:
    from raypipe.model.predictor import Predictor

    if model_key not in _PREDICTORS:
        if len(_PREDICTORS) >= 2:  # a candidate and a champion at most; a new model replaces them
            _PREDICTORS.clear()
        _PREDICTORS[model_key] = Predictor.load(Store(model_uri), features, schema, trusted=tuple(trusted))
    return _PREDICTORS[model_key]


def _npy(a: np.ndarray | None) -> bytes:
    if a is None:
        return b""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _column(s: pd.Series) -> Any:
    """A column as numpy that Arrow converts: strings as str/None objects, not str/NaN."""
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return s.to_numpy()
    return s.to_numpy(dtype=object, na_value=None)


def _ipc(frame: pd.DataFrame) -> bytes:
    import pyarrow as pa

    table = pa.table({c: _column(frame[c]) for c in frame.columns}) if len(frame.columns) else \
        pa.table({"__n": np.zeros(len(frame), dtype=np.int8)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def score_batch(batch: pd.DataFrame, *, branch: str, model_uri: str, model_key: str, features: dict[str, Any],
                schema: dict[str, Any], keep: list[str], with_features: bool, sample: dict[str, float] | None,
                trusted: list[str]) -> pd.DataFrame:
    """Ray Data batch function (pandas): one row holding the batch's kept columns, scores and features."""
    if sample is not None:
        batch = sample_rows(batch, sample["fraction"], int(sample["seed"]))
    predictor = _predictor(model_uri, model_key, features, schema, trusted)
    x = predictor.features.transform(batch)
    scores = predictor.model.predict_scores(x)
    scores = scores if scores.ndim == 2 else scores[:, None]
    kept = batch[[c for c in keep if c in batch.columns]]
    return pd.DataFrame({"branch": [branch], "rows": [len(batch)], "keep": [_ipc(kept)], "scores": [_npy(scores)],
                         "x": [_npy(x if with_features else None)]})


def _score_tables(branches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The small-data path, inside one Ray task: each branch's blocks (files), in batches of
    its ``batch_rows`` rows, through ``score_batch``: the batches Ray Data would form.

    Not the whole table at once: a batch's pandas dtypes depend on its rows (a boolean column
    with a missing value arrives as objects), and the train sample hashes the values, so the
    same batches give the same sample as the distributed path.
    """
    from raypipe.datasets import as_batch, read_blocks

    out = []
    for b in branches:
        rows = b.pop("batch_rows")
        for table in read_blocks(b.pop("store"), b.pop("rel")):
            for start in range(0, table.num_rows, rows):
                out += score_batch(as_batch(table.slice(start, rows), "pandas"), **b).to_dict("records")
    return out


def run_branches(branches: list[Branch], small: bool) -> dict[str, dict[str, Any]]:
    """Score the branches (one Ray task if ``small``, else one Ray Data execution); per branch its joined parts."""
    import ray

    from raypipe.datasets import data_width, read_parquet, small_task

    from raypipe.runtime import small_data_in_driver

    if small and small_data_in_driver():  # ray.small_data: in this process, which may have the models loaded
        rows = _score_tables([_table_args(b) for b in branches])
    elif small:  # the branches shared over as many tasks as Ray Data would run at once, side by side
        groups = [branches[i::data_width()] for i in range(min(data_width(), len(branches)))]
        refs = [small_task(_score_tables, [_table_args(b) for b in g]) for g in groups]
        rows = [r for part in ray.get(refs) for r in part]
    else:
        parts = [read_parquet(b.store, b.rel).map_batches(score_batch, fn_kwargs=b.kwargs(), batch_format="pandas",
                                                           batch_size=b.batch_rows) for b in branches]
        rows = (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]).take_all()
    return {b.name: _join([r for r in rows if r["branch"] == b.name]) for b in branches}


def _table_args(b: Branch) -> dict[str, Any]:
    return {"store": b.store, "rel": b.rel, "batch_rows": b.batch_rows, **b.kwargs()}


def _join(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import pyarrow as pa

    def npy(data: bytes) -> np.ndarray:
        return np.load(io.BytesIO(data), allow_pickle=False)

    rows = [r for r in rows if r["rows"]]
    frames = [pa.ipc.open_stream(r["keep"]).read_all() for r in rows]
    frame = pa.concat_tables(frames, promote_options="default").to_pandas() if frames else pd.DataFrame()
    frame = frame.drop(columns=["__n"], errors="ignore")
    scores = np.concatenate([npy(r["scores"]) for r in rows]) if rows else None
    has_x = rows and all(r["x"] for r in rows)
    x = np.concatenate([npy(r["x"]) for r in rows]) if has_x else None
    return {"frame": frame, "scores": scores, "x": x}


def as_scored(part: dict[str, Any], schema: dict[str, Any], task: str, with_features: bool) -> Scored:
    """A branch's joined parts as :class:`Scored` (labels encoded by ``schema``'s target)."""
    target = schema.get("target") or {}
    classes = target.get("classes")
    out = part["frame"]
    scores = part["scores"] if part["scores"] is not None else np.zeros((0, len(classes or [0])))
    x = part["x"] if with_features else None
    if with_features and x is None:
        x = np.zeros((0, 0))
    if target and target["name"] not in out:  # no rows at all
        out = out.assign(**{target["name"]: pd.Series(dtype=object)})
    y = TASKS[task].encode_labels(out[target["name"]], classes) if target else None
    return Scored(task, y, scores, out.reset_index(drop=True), classes, x)
