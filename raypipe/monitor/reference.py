"""The reference a window is compared with: what the version that answered it was trained on.

A registered version carries it (the register stage writes it): ``profile.json`` (the
validate stage's training profile, with fixed quantile bins per numeric column and counts per
category), ``monitor/predictions.json`` (the test split's prediction distribution and the
score calibration, from the evaluate stage) and ``monitor/sample.parquet`` (at most 5,000
training rows, for the domain classifier, the text reference and the datetime columns' weekday and
hour mix). :func:`load_reference`
reads them and :func:`build_plan` turns them into the small JSON plan every Ray task gets.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raypipe.columns import quantile_bins
from raypipe.errors import RegistryError
from raypipe.registry import Registry

REQUIRED = ("profile.json", "monitor/predictions.json", "monitor/sample.parquet")
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern, as the TF-IDF features use


@dataclass
class Reference:
    """One version's reference, as read from the registry."""

    pipeline: str
    version: int
    schema: dict[str, Any]
    profile: dict[str, Any]
    predictions: dict[str, Any]
    sample: pd.DataFrame
    metrics: dict[str, Any]  # the version's metrics.json
    features: dict[str, Any]
    model_uri: str
    threshold: float
    manifest_sha256: str = ""  # the manifest as checked here: the key under which Ray workers cache the predictor


def load_reference(reg: Registry, version: int) -> Reference:
    """The reference of ``version``, its files checked against the version's manifest first.

    Raises:
        RegistryError: the version was registered before raypipe kept a drift reference.
    """
    manifest = reg.check_version(version)
    vs = reg.version_store(version)
    missing = [f for f in REQUIRED if not vs.exists(f)]
    if missing:
        raise RegistryError(
            f"{reg.pipeline} version {version} has no drift reference ({', '.join(missing)} missing): it was "
            "registered by a raypipe that did not keep one. Re-run the pipeline (`raypipe run SPEC`) to register a "
            "version that has it, then monitor that version")
    import pyarrow.parquet as pq

    return Reference(
        pipeline=reg.pipeline, version=version, schema=vs.read_json("schema.json"), profile=vs.read_json("profile.json"),
        predictions=vs.read_json("monitor/predictions.json"),
        sample=pq.read_table(io.BytesIO(vs.read_bytes("monitor/sample.parquet"))).to_pandas(),
        metrics=vs.read_json("metrics.json"), features=vs.read_json("features.json"), model_uri=vs.full_uri("model"),
        threshold=float(reg.meta(version).get("threshold", 0.5)), manifest_sha256=manifest)


def fitted_state(features: dict[str, Any], key: str, column: str) -> Any:
    """A fitted operator's state ``key`` for ``column`` in ``features.json`` (None: no such operator)."""
    found: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            state = node.get(key)
            if isinstance(state, dict) and column in state:
                found.append(state[column])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(features)
    return found[0] if found else None


def vocabulary(features: dict[str, Any], column: str) -> list[str] | None:
    """The fitted TF-IDF vocabulary of a text column (None: hashed or no text operator)."""
    return fitted_state(features, "vocabulary_", column)


# --- datetime columns: the calendar parts whose distribution does not move with time --------------
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HOURS = tuple(f"{h:02d}" for h in range(24))
DATE_PARTS = {"weekday": WEEKDAYS, "hour": HOURS}


def calendar_parts(values: pd.Series, fmt: str) -> tuple[pd.Series, dict[str, np.ndarray]]:
    """Values read as the datetime encoder reads them (:func:`raypipe.dates.parse` with the column's
    format: naive UTC, NaT where missing or not a date) and, per part of :data:`DATE_PARTS`, each
    value's label (``Mon``..``Sun``, ``00``..``23``; None where NaT)."""
    from raypipe.dates import parse

    t = parse(values, fmt)[0]
    ok = t.notna().to_numpy()
    out = {}
    for part, labels in DATE_PARTS.items():
        idx = getattr(t.dt, part).to_numpy(dtype=np.float64, na_value=0.0).astype(np.int64)
        out[part] = np.where(ok, np.asarray(labels, dtype=object)[idx], None)
    return t, out


def _carries_time(t: pd.Series) -> bool:
    """The encoder's rule (``has_time_``): some value is not at midnight."""
    ok = t.dropna()
    return bool(((ok.dt.hour * 3600 + ok.dt.minute * 60 + ok.dt.second) != 0).any())


def date_plan(ref: Reference, column: str) -> dict[str, Any]:
    """The plan entries of one datetime column: ``<column>:weekday`` and, when training values carry a
    time of day (the fitted encoder's ``has_time_``, else the sample), ``<column>:hour``.

    Absolute dates move forward with time, so comparing them would alarm forever; the weekday and
    hour mix is stationary. Each part is a categorical column (its reference counts from the
    reference sample, read as the encoder reads them); its ``date`` entry names the source column
    and the training range (the sample's first and last date), which the window's out-of-range share
    is reported against.
    """
    fmt = ref.schema["columns"].get(column, {}).get("format", "iso")
    values = ref.sample[column] if column in ref.sample else pd.Series([], dtype=object)
    t, labels = calendar_parts(values, fmt)
    has_time = fitted_state(ref.features, "has_time_", column)
    has_time = _carries_time(t) if has_time is None else bool(has_time)
    present = t.dropna()
    span = [present.min().isoformat(), present.max().isoformat()] if len(present) else None
    null_rate = ref.profile.get("columns", {}).get(column, {}).get("missing_rate",
                                                                   float(t.isna().mean()) if len(t) else 0.0)
    out = {}
    for part in ("weekday", "hour") if has_time else ("weekday",):
        vc = pd.Series(labels[part]).value_counts()
        names = list(DATE_PARTS[part])
        out[f"{column}:{part}"] = {"kind": "categorical", "values": names,
                                   "ref_counts": [*(int(vc.get(v, 0)) for v in names), 0], "known": names,
                                   "ref_null_rate": null_rate,
                                   "date": {"column": column, "part": part, "format": fmt, "range": span}}
    return out


def text_stats(values: pd.Series, vocab: set[str] | None, lowercase: bool = True) -> tuple[np.ndarray, int, int]:
    """Per present text its length, and (tokens, tokens outside ``vocab``) over all of them."""
    texts = values.dropna().astype(str)
    lengths = texts.str.len().to_numpy(dtype=np.float64)
    if vocab is None:
        return lengths, 0, 0
    tokens = oov = 0
    for t in texts:
        words = TOKEN.findall(t.lower() if lowercase else t)
        tokens += len(words)
        oov += sum(w not in vocab for w in words)
    return lengths, tokens, oov


def build_plan(ref: Reference, *, threshold: float | None = None) -> dict[str, Any]:
    """What each block needs, as plain JSON: per column its kind and fixed bins, the model, the calibration.

    Text columns get their length bins and out-of-vocabulary rate from the reference sample (the
    profile keeps only length extremes); image columns compare pixel statistics with the profile's.
    Datetime columns are compared by their weekday and hour-of-day mix (:func:`date_plan`).
    """
    feats = ref.schema.get("features", {})
    cols: dict[str, Any] = {}
    profile = ref.profile.get("columns", {})
    for c in feats.get("numeric", []):
        p = profile.get(c, {})
        bins = p.get("bins") or {}
        cols[c] = {"kind": "numeric", "edges": bins.get("edges", []), "ref_counts": bins.get("counts", []),
                   "ref_means": bins.get("means", []), "ref_std": p.get("std"),
                   "ref_null_rate": p.get("missing_rate", 0.0)}
    for c in feats.get("categorical", []):
        p = profile.get(c, {})
        bins = p.get("bins") or {}
        known = p.get("values")
        cols[c] = {"kind": "categorical", "values": bins.get("values", []),
                   "ref_counts": [*bins.get("counts", []), bins.get("rest", 0)],
                   "known": known, "ref_null_rate": p.get("missing_rate", 0.0),
                   # a CSV window reads a missing text as "" (pyarrow's default): missing, unless training had ""
                   "empty_is_missing": "" not in (known if known is not None else bins.get("values", []))}
    for c in feats.get("text", []):
        vocab = vocabulary(ref.features, c)
        lengths, tokens, oov = text_stats(ref.sample[c], set(vocab) if vocab else None) if c in ref.sample \
            else (np.zeros(0), 0, 0)
        bins = quantile_bins(np.sort(lengths), np.ones(len(lengths)), len(lengths))
        cols[c] = {"kind": "text", "edges": bins["edges"], "ref_counts": bins["counts"], "vocabulary": vocab,
                   "ref_oov_rate": oov / tokens if tokens else None,
                   "ref_null_rate": profile.get(c, {}).get("missing_rate", 0.0)}
    for c in feats.get("datetime", []):
        cols.update(date_plan(ref, c))
    for c in feats.get("image", []):
        p = profile.get(c, {})
        cols[c] = {"kind": "image", "ref_pixel_mean": p.get("pixel_mean"), "ref_pixel_std": p.get("pixel_std"),
                   "ref_null_rate": p.get("missing_rate", 0.0)}
    preds = ref.predictions
    return {"columns": cols, "schema": ref.schema, "target": (ref.schema.get("target") or {}).get("name"),
            "task": preds["task"], "classes": preds.get("classes"),
            "threshold": ref.threshold if threshold is None else threshold,
            "answer": preds["answer"], "score": preds.get("score"), "calibration": preds.get("calibration")}
