"""The evaluate stage: batch inference on Ray over the test split, metrics, gate verdict."""
from __future__ import annotations

from typing import Any

import numpy as np

from raypipe.datasets import read_parquet
from raypipe.evaluate.gate import verdict
from raypipe.evaluate.metrics import best_f1_threshold, classification_metrics, regression_metrics
from raypipe.predictor import predict_batch
from raypipe.store import Store
from raypipe.train.data import encode_labels


def model_key(model_uri: str) -> str:
    """A digest of a model folder's files (the cache key of loaded predictors)."""
    store = Store(model_uri)
    return "-".join(store.sha256(f)[:16] for f in store.walk_files())


def predict_split(ds: Any, model_uri: str, features: dict[str, Any], schema: dict[str, Any],
                  threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, decisions, scores) of a split, predicted by Ray Data tasks.

    Only the label, the decision and the scores travel to the driver.
    """
    target = schema["target"]
    out = ds.map_batches(
        predict_batch,
        fn_kwargs={"model_uri": model_uri, "model_key": model_key(model_uri), "features": features,
                   "schema": schema, "threshold": threshold, "keep": [target["name"]]},
        batch_format="pandas", batch_size=4096,
    ).to_pandas()
    y = encode_labels(out[target["name"]], target.get("classes"))
    return y, out["__pred"].to_numpy(), np.stack(out["__scores"].to_numpy())


def score_split(ds: Any, model_uri: str, features: dict[str, Any], schema: dict[str, Any],
                threshold: float = 0.5) -> dict[str, Any]:
    """The metrics of a split."""
    classes = schema["target"].get("classes")
    y, pred, scores = predict_split(ds, model_uri, features, schema, threshold)
    if classes is None:
        return regression_metrics(y, pred.astype(np.float64))
    return classification_metrics(y, pred.astype(np.int64), scores, len(classes))


def choose_threshold(ds: Any | None, model_uri: str, features: dict[str, Any], schema: dict[str, Any]) -> float:
    """For binary problems, the max-F1 threshold on the validation split ``ds`` (0.5 otherwise).

    Chosen on validation, never on test, so the test metrics stay honest.
    """
    classes = schema["target"].get("classes")
    if ds is None or not classes or len(classes) != 2:
        return 0.5
    y, _, scores = predict_split(ds, model_uri, features, schema)
    return best_f1_threshold(y, scores[:, 1])


def run(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    ctx.ray()
    val, feats, train = inputs["validate"], inputs["features"], inputs["train"]
    schema = val.store.read_json(val.outputs["schema"])
    features = feats.store.read_json(feats.outputs["features"])
    model_uri = train.store.full_uri(train.outputs["model"])
    split = lambda s: read_parquet(val.store, val.outputs["splits"][s])  # noqa: E731
    validation = split("validation") if "validation" in val.outputs["splits"] else None
    threshold = choose_threshold(validation, model_uri, features, schema)
    test = score_split(split("test"), model_uri, features, schema, threshold)
    cfg = ctx.spec.evaluate
    train_metrics = (score_split(split("train"), model_uri, features, schema, threshold)
                     if cfg.gate.max_overfit_gap is not None else None)
    champion = _champion_metrics(ctx, split("test"), schema) if cfg.gate.vs_champion is not None else None
    result = verdict(cfg.gate, test, train_metrics, champion)
    metrics = {m: test.get(m) for m in cfg.metrics}
    doc = {"test": test, "train": train_metrics, "champion": champion, "gate": result, "metrics": metrics,
           "threshold": threshold}
    ctx.artifact.write_json("metrics.json", doc)
    ctx.log("test: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None)
            + ("" if result["passed"] else "  — gate NOT passed"))
    return {"metrics": metrics, "metrics_file": "metrics.json", "gate": result, "threshold": threshold}


def _champion_metrics(ctx: Any, test_ds: Any, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The current champion scored on this run's test split (None when there is none)."""
    from raypipe.registry import Registry

    reg = Registry(ctx.root, ctx.spec.name)
    version = reg.alias("champion")
    if version is None:
        return None
    vs = reg.version_store(version)
    threshold = reg.info(version).get("threshold", 0.5)
    return {"version": version, **score_split(test_ds, vs.full_uri("model"), vs.read_json("features.json"),
                                              vs.read_json("schema.json"), threshold)}
