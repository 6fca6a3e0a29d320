"""The train stage: scikit-learn in a Ray task, or a torch zoo model on Ray Train."""
from __future__ import annotations

from typing import Any

from raypipe.datasets import read_parquet
from raypipe.features.balance import resample
from raypipe.train.data import materialize_small, xy_dataset
from raypipe.train.models import MODEL_JSON, SKOPS_FILE, save_model


def run(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    ctx.ray()
    feats, val = inputs["features"], inputs["validate"]
    spec = ctx.spec
    vstore, val_out = val.store, val.outputs
    schema = vstore.read_json(val_out["schema"])
    features = feats.store.read_json(feats.outputs["features"])
    classes = (schema.get("target") or {}).get("classes")
    n_outputs = len(classes) if classes else 1
    raw = {s: read_parquet(vstore, rel) for s, rel in val_out["splits"].items()}
    balance = None
    if spec.features.balance in ("oversample", "undersample") and classes:
        raw["train"], balance = resample(raw["train"], schema["target"]["name"], spec.features.balance,
                                         spec.features.balance_seed)
        ctx.log(f"{spec.features.balance}: factors " + ", ".join(f"{c}={f:.3g}" for c, f in balance["factors"].items()))
    splits = {s: xy_dataset(ds, features, schema) for s, ds in raw.items()}
    materialized_mb = None
    if spec.model.is_torch:
        rows = {s: c["valid"] for s, c in val_out["counts"].items()}
        if balance:
            rows["train"] = round(sum(n * balance["factors"].get(c, 1.0) for c, n in balance["before"].items()))
        torch_splits = {s: splits[s] for s in ("train", "validation") if s in splits}
        torch_splits, materialized_mb = materialize_small(torch_splits, rows, feats.outputs["n_features"],
                                                          spec.train.materialize_mb)
        splits.update(torch_splits)
    model_store = ctx.artifact.sub("model")
    report: dict[str, Any] = {}
    layout = None
    if spec.model.is_torch:
        from raypipe.features.pipeline import FeaturePipeline

        layout = FeaturePipeline.from_dict(features).layout()
    if spec.tune is not None:
        from raypipe.tune.search import run_search

        dims = {"input_dim": feats.outputs["n_features"], "n_outputs": n_outputs,
                "class_weights": feats.outputs["class_weights"], "layout": layout}
        meta, model, report = run_search(spec, ctx, splits, dims)
        t = report["tune"]
        ctx.log(f"tune: {t['trials']} trials ({t['failed_trials']} failed), {t['trial_epochs']} trial-epochs; best "
                f"{t['metric']}={t['best_score']:.4g} with " + ", ".join(f"{k}={v}" for k, v in t["best_config"].items()))
    elif spec.model.is_torch:
        datasets = {"train": splits["train"]}
        if "validation" in splits:
            datasets["validation"] = splits["validation"]
        from raypipe.train.torch_trainer import train_torch

        meta, model, report = train_torch(spec, ctx, datasets, feats.outputs["n_features"], n_outputs,
                                          feats.outputs["class_weights"], layout)
        last = report["history"][-1]
        ctx.log("epochs: " + str(len(report["history"])) + ", last: "
                + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("epoch", "stopped")))
        if report.get("early_stopping", {}).get("stopped"):
            es = report["early_stopping"]
            ctx.log(f"early stopping: {es['metric']} best {es['best']:.4g} at epoch {es['best_epoch']}; "
                    f"kept the {es['weights']} weights")
    else:
        from raypipe.train.sklearn_trainer import train_sklearn

        meta, model = train_sklearn(spec, splits["train"], n_outputs, feats.outputs["class_weights"])
    if spec.model.is_torch:  # safetensors weights
        save_model(model_store, meta, torch_state=model)
    else:  # skops bytes, written as the trial or task produced them
        model_store.write_bytes(SKOPS_FILE, model)
        model_store.write_json(MODEL_JSON, meta)
    if balance:
        report["balance"] = balance
    if spec.model.is_torch:
        report["materialized_mb"] = None if materialized_mb is None else round(materialized_mb, 1)
    ctx.artifact.write_json("train_report.json", report)
    out = {"model": "model", "report": "train_report.json", "kind": spec.model.kind, "ddp": report.get("ddp")}
    if "tune" in report:
        out["tune"] = {k: report["tune"][k] for k in ("best_config", "best_score", "metric", "trials", "trial_epochs")}
    return out
