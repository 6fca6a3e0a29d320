"""The reference a window is compared with: what the version that answered it was trained on.

A registered version carries it (the register stage writes it): ``profile.json`` (the
validate stage's training profile, with fixed quantile bins per numeric column and counts per
category), ``monitor/predictions.json`` (the test split's prediction distribution and the
score calibration, from the evaluate stage) and ``monitor/sample.parquet`` (at most 5,000
training rows, for the domain classifier and the text reference). :func:`load_reference`
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


def vocabulary(features: dict[str, Any], column: str) -> list[str] | None:
    """The fitted TF-IDF vocabulary of a text column (None: hashed or no text operator)."""
    found: list[list[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            vocab = node.get("vocabulary_")
            if isinstance(vocab, dict) and column in vocab:
                found.append(vocab[column])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(features)
    return found[0] if found else None


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
    Datetime columns are not compared yet.
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
    for c in feats.get("image", []):
        p = profile.get(c, {})
        cols[c] = {"kind": "image", "ref_pixel_mean": p.get("pixel_mean"), "ref_pixel_std": p.get("pixel_std"),
                   "ref_null_rate": p.get("missing_rate", 0.0)}
    preds = ref.predictions
    return {"columns": cols, "schema": ref.schema, "target": (ref.schema.get("target") or {}).get("name"),
            "task": preds["task"], "classes": preds.get("classes"),
            "threshold": ref.threshold if threshold is None else threshold,
            "answer": preds["answer"], "score": preds.get("score"), "calibration": preds.get("calibration")}
