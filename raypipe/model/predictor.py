"""Fitted features + model + schema: the one object that predicts, offline and online.

Evaluation, batch inference (``raypipe predict``) and the Serve replica all go
through :class:`Predictor`, so the same rows give the same predictions everywhere.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.store import Store
from raypipe.model.formats import Model, load_model
from raypipe.tasks import TASKS


class Predictor:
    """Predicts from raw rows (a DataFrame or a list of dicts).

    Args:
        features: the fitted feature pipeline.
        model: the trained model.
        schema: the data schema (target classes included).
        threshold: decision threshold on the positive class for binary problems.
        version: the registry version, reported with predictions.
    """

    def __init__(self, features: FeaturePipeline, model: Model, schema: dict[str, Any], *,
                 threshold: float = 0.5, version: int | None = None) -> None:
        self.features, self.model, self.schema = features, model, schema
        self.threshold, self.version = threshold, version
        target = schema.get("target") or {}
        self.classes: list[str] | None = target.get("classes")
        self.target_type = target.get("type", "number")
        self.task: str = getattr(model, "task", None) or target.get("task", "classification")

    @classmethod
    def load(cls, model_store: Store, features: dict[str, Any], schema: dict[str, Any], *, device: str = "cpu",
             trusted: tuple[str, ...] = (), **kw: Any) -> "Predictor":
        return cls(FeaturePipeline.from_dict(features), load_model(model_store, device, trusted), schema, **kw)

    @classmethod
    def from_version(cls, version_store: Store, version: int | None = None, trusted: tuple[str, ...] = (), *,
                     manifest_sha256: str | None = None) -> "Predictor":
        """Load a registry version after checking every file against its sha256 manifest.

        ``trusted``: the user factories the loading process allows (``formats.trusted_factories``).
        ``manifest_sha256``: the manifest as the deployer checked it (``Registry.check_version``,
        its signature included): a manifest that changed since is refused.
        """
        marker = version_store.verify_artifact("", manifest_sha256=manifest_sha256)
        meta = marker.get("meta", {})
        if TASKS.get(meta.get("task", ""), TASKS["classification"]).policy:  # an RLlib policy: observations in
            from raypipe.model.policy import load_policy

            policy = load_policy(version_store.sub("model"))
            policy.version = version if version is not None else meta.get("version")
            return policy  # type: ignore[return-value]
        return cls.load(
            version_store.sub("model"), version_store.read_json("features.json"), version_store.read_json("schema.json"),
            threshold=meta.get("threshold", 0.5), version=version if version is not None else meta.get("version"),
            trusted=trusted,
        )

    # -- arrays ------------------------------------------------------------------------
    def scores(self, rows: pd.DataFrame | list[dict[str, Any]]) -> np.ndarray:
        return self.model.predict_scores(self.features.transform(rows))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Class index per row (classification) or the values (regression)."""
        return TASKS[self.task].decide(scores, self.threshold)

    # -- JSON ---------------------------------------------------------------------------
    def predict_records(self, rows: pd.DataFrame | list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One JSON-ready answer per row."""
        scores = self.scores(rows)  # a list of records goes to the features as it is (their fast path)
        return TASKS[self.task].records(self.decide(scores), scores, self.classes, self.target_type)


_PREDICTORS: dict[str, Predictor] = {}


def predict_batch(batch: pd.DataFrame, model_uri: str, model_key: str, features: dict[str, Any],
                  schema: dict[str, Any], threshold: float = 0.5, keep: list[str] | None = None,
                  with_features: bool = False, trusted: tuple[str, ...] = ()) -> dict[str, Any]:
    """Ray Data task function: like :class:`BatchPredict` without an actor's start-up cost.

    The predictor is cached per worker process under ``model_key`` (a digest of the
    model files), so a re-trained model at the same path is never served stale.
    """
    if model_key not in _PREDICTORS:
        _PREDICTORS.clear()
        _PREDICTORS[model_key] = Predictor.load(Store(model_uri), features, schema, trusted=tuple(trusted))
    predictor = _PREDICTORS[model_key]
    predictor.threshold = threshold
    return _predict_columns(predictor, batch, keep or [], with_features)


def _predict_columns(predictor: Predictor, batch: pd.DataFrame, keep: list[str], with_features: bool = False) -> dict[str, Any]:
    x = predictor.features.transform(batch)
    scores = predictor.model.predict_scores(x)
    out: dict[str, Any] = {c: _column(batch[c]) for c in keep if c in batch}
    if with_features:
        out["__x"] = x
    out["__pred"] = predictor.decide(scores)
    out["__scores"] = scores if scores.ndim == 2 else scores[:, None]
    return out


def _column(s: pd.Series) -> np.ndarray:
    """A column as numpy that Arrow converts: strings as str/None objects, not str/NaN."""
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return s.to_numpy()
    return s.to_numpy(dtype=object, na_value=None)


class BatchPredict:
    """Ray Data callable class: loads the predictor once per actor (on its GPU with ``use_gpu``), predicts batches."""

    def __init__(self, model_uri: str, features: dict[str, Any], schema: dict[str, Any], threshold: float = 0.5,
                 keep: list[str] | None = None, use_gpu: bool = False, trusted: tuple[str, ...] = ()) -> None:
        # With use_gpu the actor holds a GPU (num_gpus=1): a torch model scores there.
        self.predictor = Predictor.load(Store(model_uri), features, schema, threshold=threshold,
                                        device="cuda" if use_gpu else "cpu", trusted=tuple(trusted))
        self.keep = keep or []

    def __call__(self, batch: pd.DataFrame) -> dict[str, Any]:
        return _predict_columns(self.predictor, batch, self.keep)
