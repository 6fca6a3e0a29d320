"""A window's counts: computed per block on Ray Data, merged on the driver.

:func:`block_counts` turns one block of rows into a small document of counts over the
reference's fixed bins (numeric and text-length bins, categories + "unseen", a datetime column's
weekday and hour of day with its dates outside the training range, nulls, pixel sums, invalid rows
by reason, the version's answers and scores, the confidence sums of the performance estimate). The
answers are the window's own when it carries them (a log window's logged answers, as ``__s*`` score
columns), else the version scores the rows. :func:`merge` adds such documents; any grouping of
blocks gives the same sum, so the per-block path equals a one-shot count over all rows (a test
checks it) and windows can be merged later. Only two bounded things besides counts leave a block:
rows for the domain classifier (those whose row hash falls under a fraction, the driver keeps the
``sample_rows`` smallest hashes) and, when the window has labels, each labelled row's label and
scores (what the evaluate stage gathers too). A 100M-row window never reaches the driver.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd

from raypipe.columns import as_float, bin_of, row_uniform
from raypipe.rowchecks import INTERNAL, REASON, REASON_KEY, annotate, coerce_numeric
from raypipe.schema import label_strings
from raypipe.tasks import TASKS

CONFIDENCE_BINS = 1000  # the performance estimate's score histogram: equal-width bins over [0, 1]
MAX_EXAMPLES = 5
_PREDICTORS: dict[str, Any] = {}


def _texts(s: pd.Series) -> pd.Series:
    """Values as the profile counts them: numbers through ``label_strings`` (1.0 -> "1"), others as text."""
    present = s.dropna()
    if pd.api.types.is_numeric_dtype(present) or pd.api.types.is_bool_dtype(present):
        return label_strings(present)
    return present.astype(str)


def _categorical(s: pd.Series, col: dict[str, Any]) -> dict[str, Any]:
    texts = _texts(s)
    vc = texts.value_counts()
    values = col["values"]
    counts = [int(vc.get(v, 0)) for v in values]
    known = set(col["known"]) if col.get("known") is not None else set(values)
    unseen = vc[~vc.index.isin(list(known))]
    return {"counts": [*counts, int(vc.sum()) - sum(counts)], "unseen": int(unseen.sum()),
            "unseen_examples": {str(k): int(v) for k, v in unseen.head(MAX_EXAMPLES).items()}}


def _numeric(s: pd.Series, col: dict[str, Any]) -> dict[str, Any]:
    x = as_float(s)
    x = x[np.isfinite(x)]
    k = len(col["edges"]) + 1
    idx = bin_of(col["edges"], x)
    return {"counts": np.bincount(idx, minlength=k).tolist(), "sums": np.bincount(idx, weights=x, minlength=k).tolist()}


def _text(s: pd.Series, col: dict[str, Any]) -> dict[str, Any]:
    from raypipe.monitor.reference import text_stats

    vocab = col.get("vocabulary")
    lengths, tokens, oov = text_stats(s, set(vocab) if vocab else None)
    return {"counts": np.bincount(bin_of(col["edges"], lengths), minlength=len(col["edges"]) + 1).tolist(),
            "tokens": tokens, "oov": oov}


def _image(s: pd.Series, col: dict[str, Any]) -> dict[str, Any]:
    total = squares = 0.0
    pixels = 0
    for v in s.dropna():
        a = np.asarray(v, dtype=np.float64)
        total, squares, pixels = total + float(a.sum()), squares + float(np.square(a).sum()), pixels + a.size
    return {"px_sum": total, "px_sq": squares, "px_n": pixels}


_KINDS = {"numeric": _numeric, "categorical": _categorical, "text": _text, "image": _image}


def _date_part(s: pd.Series, col: dict[str, Any], parsed: dict[str, Any]) -> dict[str, Any]:
    """One calendar part of a datetime column (``col["date"]``: source column, part, format, training
    range): nulls (missing or not a date), counts over its categories, and the dated values outside
    the training range (``outside`` of ``dated``: reported, never decisive). ``parsed`` keeps each
    source column's parse for its other part."""
    from raypipe.monitor.reference import calendar_parts

    date = col["date"]
    if date["column"] not in parsed:
        parsed[date["column"]] = calendar_parts(s, date["format"])
    t, labels = parsed[date["column"]]
    ok = t.notna().to_numpy()
    outside = 0
    if date["range"] and ok.any():
        lo, hi = (np.datetime64(x, "us") for x in date["range"])
        v = t.to_numpy()[ok]
        outside = int(((v < lo) | (v > hi)).sum())
    return {"nulls": int((~ok).sum()), **_categorical(pd.Series(labels[date["part"]], dtype=object), col),
            "dated": int(ok.sum()), "outside": outside}


def _predictor(model: dict[str, Any]) -> Any:
    """The version's predictor, loaded once per worker process (keyed by the version's manifest)."""
    from raypipe.model.predictor import Predictor
    from raypipe.store import Store

    key = model["key"]
    if key not in _PREDICTORS:
        _PREDICTORS.clear()
        _PREDICTORS[key] = Predictor.load(Store(model["uri"]), model["features"], model["schema"],
                                          trusted=tuple(model["trusted"]))
    return _PREDICTORS[key]


def _calibrated(plan: dict[str, Any], score: np.ndarray) -> np.ndarray:
    cal = plan["calibration"]
    return np.interp(score, cal["x"], cal["y"]) if cal and cal["x"] else score


def score_columns(task: str, classes: list[str] | None) -> list[str]:
    """The names of the score matrix's columns when a window carries its answers (a log window:
    :func:`raypipe.monitor.logwindow.logged_scores`): ``__s0``..``__s{k-1}``, one per class, else one.
    The ``__`` prefix keeps them out of the input columns everywhere."""
    k = len(classes or []) if TASKS[task].has_classes else 1
    return [f"__s{j}" for j in range(k)]


def _scored(batch: pd.DataFrame, model: dict[str, Any], k: int) -> np.ndarray:
    """The version's predictor's score matrix for ``batch`` (``n x k``)."""
    if not len(batch):
        return np.zeros((0, k))
    scores = np.asarray(_predictor(model).scores(batch), dtype=np.float64)
    return scores if scores.ndim == 2 else scores[:, None]


def scores_of(batch: pd.DataFrame, plan: dict[str, Any], model: dict[str, Any]) -> tuple[np.ndarray, int]:
    """The score matrix of ``batch``'s rows, and how many rows the predictor scored.

    A window that carries its answers (``score_columns``, a log window) is counted as it was
    answered: those columns are the scores. A row with a missing logged score (no answer logged,
    a class absent from the logged map) is scored again by the version, as are all rows of a
    window without answers (a batch file), so every valid row is in the answer counts.
    """
    names = score_columns(plan["task"], plan["classes"])
    if not set(names) <= set(batch.columns):
        return _scored(batch, model, len(names)), len(batch)
    scores = batch[names].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)  # Arrow-backed: read-only
    missing = np.isnan(scores).any(axis=1)
    if missing.any():
        scores[missing] = _scored(batch.loc[missing], model, len(names))
    return scores, int(missing.sum())


def _answers(batch: pd.DataFrame, plan: dict[str, Any], model: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """Counts of the version's answers and scores, the estimate's confidence sums; and the scores.

    ``rescored``: the rows whose answer the version computed here (all of a batch file; the log
    window's rows without a logged answer).
    """
    task, classes = plan["task"], plan["classes"]
    scores, rescored = scores_of(batch, plan, model)
    decided = TASKS[task].decide(scores, plan["threshold"])
    answer = plan["answer"]
    if answer["kind"] == "numeric":
        out: dict[str, Any] = {"answer": _numeric(pd.Series(decided.astype(np.float64)), answer)}
    else:
        labels = np.asarray(classes, dtype=object)[decided.astype(np.int64)] if classes else decided.astype(np.int64)
        out = {"answer": _categorical(pd.Series(labels.astype(str), dtype=object), {**answer, "known": None})}
    out["rescored"] = rescored
    score = TASKS[task].drift_score(scores)
    if score is not None and plan["score"]:
        out["score"] = _numeric(pd.Series(score), plan["score"])
    if TASKS[task].has_classes and plan["calibration"]:
        p = _calibrated(plan, score)
        if plan["calibration"]["kind"] == "binary":
            correct = np.where(decided == 1, p, 1.0 - p)
        else:
            correct = p
        idx = np.minimum((np.clip(score, 0, 1) * CONFIDENCE_BINS).astype(np.int64), CONFIDENCE_BINS - 1)
        out["confidence"] = {"expected_correct": float(correct.sum()),
                             "rows": np.bincount(idx, minlength=CONFIDENCE_BINS).tolist(),
                             "positive": np.bincount(idx, weights=p, minlength=CONFIDENCE_BINS).tolist()}
    return out, scores


def block_counts(batch: pd.DataFrame, plan: dict[str, Any], model: dict[str, Any] | None = None,
                 sample: dict[str, Any] | None = None) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """One block's counts document, its sampled rows (with ``__u``) and its labelled rows (label + scores).

    Rows are checked by the validate stage's row checks (:func:`raypipe.rowchecks.annotate`); an
    invalid row is counted by reason and left out of everything else. A missing label never makes a
    row invalid here: monitoring windows are mostly unlabelled.
    """
    schema = {**plan["schema"], "target": None}
    batch = annotate(batch.copy(deep=False), schema)  # adds columns: the caller's frame stays as it was
    bad = batch[REASON].notna()
    reasons = batch.loc[bad, REASON_KEY].value_counts()
    valid = (batch if not bad.any() else batch.loc[~bad]).drop(columns=list(INTERNAL))
    valid = coerce_numeric(valid, schema).reset_index(drop=True)
    for c, col in plan["columns"].items():
        s = valid[c] if c in valid else None
        if col.get("empty_is_missing") and s is not None and (s.dtype == object or pd.api.types.is_string_dtype(s)):
            valid[c] = s.mask(s == "", None)
    doc: dict[str, Any] = {"rows": int(len(batch)), "valid": int(len(valid)), "invalid": int(bad.sum()),
                           "reasons": {str(k): int(v) for k, v in reasons.items()}, "columns": {}}
    parsed: dict[str, Any] = {}
    for c, col in plan["columns"].items():
        if col.get("date") is not None:
            if col["date"]["column"] in valid:
                doc["columns"][c] = _date_part(valid[col["date"]["column"]], col, parsed)
        elif c in valid:
            s = valid[c]
            doc["columns"][c] = {"nulls": int(s.isna().sum()), **_KINDS[col["kind"]](s, col)}
    labelled = pd.DataFrame()
    if model is not None:
        preds, scores = _answers(valid, plan, model)
        doc.update(preds)
        target = plan["target"]
        if target and target in valid:
            has = valid[target].notna().to_numpy()
            labelled = pd.DataFrame({"label": _texts(valid[target]).to_numpy(dtype=object) if TASKS[plan["task"]].has_classes
                                     else as_float(valid[target])[has]})
            for j in range(scores.shape[1]):
                labelled[f"s{j}"] = scores[has, j]
            doc["labelled"] = int(has.sum())
    picked = pd.DataFrame()
    if sample is not None and len(valid):
        cols = [c for c in sample["columns"] if c in valid]
        u = row_uniform(valid[cols], sample["seed"])
        keep = u < sample["fraction"]
        picked = valid.loc[keep, cols].assign(__u=u[keep])
    return doc, picked, labelled


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Add counts documents: numbers add, lists add element by element, dicts merge key by key."""
    def add(a: Any, b: Any) -> Any:
        if isinstance(a, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = add(out[k], v) if k in out else v
            return out
        if isinstance(a, list):
            return [add(x, y) for x, y in zip(a, b, strict=True)]
        return a + b

    total: dict[str, Any] = {}
    for d in docs:
        total = add(total, d) if total else d
    return total


def _frame_bytes(df: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    return buf.getvalue()


def _frame(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pandas() if data else pd.DataFrame()


def _block_task(batch: pd.DataFrame, plan: dict[str, Any], model: dict[str, Any] | None,
                sample: dict[str, Any] | None) -> dict[str, list[Any]]:
    doc, picked, labelled = block_counts(batch, plan, model, sample)
    return {"doc": [json.dumps(doc)], "sample": [_frame_bytes(picked) if len(picked) else b""],
            "labelled": [_frame_bytes(labelled) if len(labelled) else b""]}


def count_window(ds: Any, plan: dict[str, Any], model: dict[str, Any] | None = None,
                 sample: dict[str, Any] | None = None) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Count a Ray dataset block by block (``map_batches`` over whole blocks); merge on the driver.

    Returns the merged document, the sampled rows (the ``sample["rows"]`` smallest row hashes) and
    the labelled rows' labels and scores.
    """
    parts = ds.map_batches(_block_task, fn_kwargs={"plan": plan, "model": model, "sample": sample},
                           batch_format="pandas", batch_size=None).take_all()
    doc = merge([json.loads(p["doc"]) for p in parts])
    picked = [_frame(p["sample"]) for p in parts if p["sample"]]
    labelled = [_frame(p["labelled"]) for p in parts if p["labelled"]]
    rows = pd.concat(picked, ignore_index=True) if picked else pd.DataFrame()
    if sample is not None and len(rows):
        rows = rows.nsmallest(sample["rows"], "__u").drop(columns="__u").reset_index(drop=True)
    return doc, rows, pd.concat(labelled, ignore_index=True) if labelled else pd.DataFrame()
