"""The train stage: scikit-learn in a Ray task, or a torch zoo model on Ray Train; a Tune search on top."""
from __future__ import annotations

from typing import Any

from raypipe.datasets import is_small, read_parquet
from raypipe.model.formats import MODEL_JSON, SKOPS_FILE, save_model
from raypipe.stage import StageContext, StageOutput, TrainOutput
from raypipe.tasks import TASKS
from raypipe.train.balance import class_counts, class_weights, resample
from raypipe.train.data import materialize_small, xy_dataset
from raypipe.train.fit import fit
from raypipe.train.local import SINGLE, choose_path


RESAMPLE = ("oversample", "undersample")


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> TrainOutput:
    if TASKS[ctx.spec.data.task].policy:  # an RLlib algorithm: no features, no rows to fit
        from raypipe.train.rl_stage import run as run_policy

        return run_policy(ctx, inputs)
    feats, val = inputs["features"], inputs["validate"]
    spec = ctx.spec
    schema = val.read_json(val.outputs.schema)
    features = feats.read_json(feats.outputs.features)
    target = schema.get("target") or {}
    classes = target.get("classes")
    # A lone scikit-learn fit on small data reads the split itself (sklearn_trainer): no Ray Data datasets
    train_small = not spec.model.is_torch and is_small(val.store, [val.outputs.splits["train"]])
    sklearn_small = train_small and spec.tune is None and spec.features.balance not in RESAMPLE
    ctx.ray(small=sklearn_small and set(spec.train.resources) <= {"CPU"})  # the fit may run here (train_sklearn)
    raw = {} if sklearn_small else {s: read_parquet(val.store, rel) for s, rel in val.outputs.splits.items()}
    balance = weights = None
    if spec.features.balance == "class_weight" and classes:
        counts = val.read_json(val.outputs.report)["splits"]["train"].get("classes")  # validate counted them
        if counts is None:
            ctx.ray()
            train = raw["train"] if "train" in raw else read_parquet(val.store, val.outputs.splits["train"])
            counts = class_counts(train, target["name"])
        weights = class_weights(counts, classes)
    elif spec.features.balance in RESAMPLE and classes:
        raw["train"], balance = resample(raw["train"], target["name"], spec.features.balance, spec.features.balance_seed)
        ctx.log(f"{spec.features.balance}: factors " + ", ".join(f"{c}={f:.3g}" for c, f in balance["factors"].items()))
    splits = {s: xy_dataset(ds, features, schema) for s, ds in raw.items()}
    dims: dict[str, Any] = {"input_dim": feats.outputs.n_features, "n_outputs": len(classes) if classes else 1,
                            "class_weights": weights, "layout": None}
    materialized_mb = None
    if spec.model.is_torch:
        from raypipe.model.features.pipeline import FeaturePipeline

        dims["layout"] = FeaturePipeline.from_dict(features).layout()
        rows = {s: c["valid"] for s, c in val.outputs.counts.items()}
        if balance:
            rows["train"] = round(sum(n * balance["factors"].get(c, 1.0) for c, n in balance["before"].items()))
        dims["train_rows"] = rows["train"]
        if spec.data.task == "regression" and spec.train.scale_target and target.get("name"):
            dims["target_scale"] = target_scale(val.read_json(val.outputs.profile), raw["train"], target["name"])
            ctx.log("regression target standardised for training: mean {mean:.4g}, std {std:.4g} "
                    "(train split); the model un-scales its predictions".format(**dims["target_scale"]))
        torch_splits = {s: splits[s] for s in ("train", "validation") if s in splits}
        dims["path"] = choose_path(spec.train, sum(rows.get(s, 0) for s in torch_splits), dims["input_dim"])
        rels = {s: val.outputs.splits[s] for s in torch_splits}
        if (dims["path"][0] == SINGLE and balance is None and spec.tune is None
                and is_small(val.store, list(rels.values()))):  # the train task reads and transforms the splits itself
            dims["source"] = {"store": val.store, "rels": rels, "features": features, "schema": schema}
        else:
            torch_splits, materialized_mb = materialize_small(torch_splits, rows, dims["input_dim"],
                                                              spec.train.materialize_mb)
            splits.update(torch_splits)
    if spec.tracking.mlflow_uri and (spec.model.is_torch or spec.tune is not None):
        _track(ctx, dims)
    if spec.tune is not None:
        from raypipe.train.tune.search import run_search

        fitted = run_search(spec, ctx, splits, dims)
        t = fitted.report["tune"]
        ctx.log(f"tune: {t['trials']} trials ({t['failed_trials']} failed), {t['trial_epochs']} trial-epochs; best "
                f"{t['metric']}={t['best_score']:.4g} with " + ", ".join(f"{k}={v}" for k, v in t["best_config"].items()))
    else:
        if not spec.model.is_torch and balance is None:  # small data: the fit task reads the split itself
            dims["source"] = {"store": val.store, "rel": val.outputs.splits["train"], "features": features,
                              "schema": schema, "small": train_small}
        fitted = fit(spec, ctx, splits, dims)
        if spec.model.is_torch:
            _log_torch(ctx, fitted.report)
    model_store = ctx.artifact.sub("model")
    if spec.model.is_torch:  # safetensors weights
        save_model(model_store, fitted.meta, torch_state=fitted.model)
    else:  # skops bytes, written as the trial or task produced them
        model_store.write_bytes(SKOPS_FILE, fitted.model)
        model_store.write_json(MODEL_JSON, fitted.meta)
    report = fitted.report
    if balance:
        report["balance"] = balance
    if spec.model.is_torch:
        report["materialized_mb"] = None if materialized_mb is None else round(materialized_mb, 1)
        report["rows_per_epoch"] = rows_seen(report.get("history", []), rows)
        left = report["rows_per_epoch"].get("train", {}).get("left_out")
        if left:
            ctx.log(f"Ray Train's equal split leaves {left} of {rows['train']:,} training rows out of each epoch "
                    f"(at most workers - 1, so that every worker takes as many steps)")
    ctx.artifact.write_json("train_report.json", report)
    tune = {k: report["tune"][k] for k in ("best_config", "best_score", "metric", "trials", "trial_epochs")} \
        if "tune" in report else None
    return TrainOutput(model="model", report="train_report.json", kind=spec.model.kind, ddp=report.get("ddp"), tune=tune)


def target_scale(profile: dict[str, Any], train: Any, target: str) -> dict[str, float]:
    """The train split's target mean and (population) std: from validate's profile of the train split,
    which holds them exactly; from one Ray Data aggregate if it does not. A constant target gets std 1."""
    col = profile.get("columns", {}).get(target, {})
    mean, std = col.get("mean"), col.get("std")
    if mean is None or std is None:
        from ray.data.aggregate import Mean, Std

        stats = train.aggregate(Mean(target, alias_name="mean"), Std(target, ddof=0, alias_name="std"))
        mean, std = stats["mean"], stats["std"]
    return {"mean": float(mean), "std": float(std) if std and std > 0 else 1.0}


def rows_seen(history: list[dict[str, Any]], rows: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per split: its rows, the rows the last epoch saw, and the difference (none for validation)."""
    if not history:
        return {}
    last, out = history[-1], {}
    for split, key in (("train", "train_rows"), ("validation", "val_rows")):
        if key in last and split in rows:
            out[split] = {"rows": rows[split], "seen": last[key], "left_out": rows[split] - last[key]}
    return out


def _log_torch(ctx: StageContext, report: dict[str, Any]) -> None:
    if report.get("path"):
        ctx.log(f"trained on the {report['path'].replace('_', ' ')} path ({report['path_reason']})")
    p = report.get("plan")
    if p:
        ctx.log(f"plan: {p['epochs']} epochs ({p['epochs_reason']}) x {p['steps_per_epoch']} steps of "
                f"{p['batch_size']} rows per worker ({p['batch_size_reason']})")
    last = report["history"][-1]
    ctx.log("epochs: " + str(len(report["history"])) + ", last: "
            + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("epoch", "stopped")))
    if report.get("early_stopping", {}).get("stopped"):
        es = report["early_stopping"]
        ctx.log(f"early stopping: {es['metric']} best {es['best']:.4g} at epoch {es['best_epoch']}; "
                f"kept the {es['weights']} weights")


def _track(ctx: StageContext, dims: dict[str, Any]) -> None:
    """Open the run's MLflow run before training (:func:`raypipe.tracking.open_run`): a torch run logs each
    epoch into it as the epoch ends, a search hangs a nested run per trial under it."""
    from raypipe.tracking import EpochLogger, open_run

    mlflow_run = open_run(ctx.spec, ctx.tracking_id)
    if mlflow_run is None:
        return
    ctx.log(f"MLflow: logging the training live to run {mlflow_run} in {ctx.spec.tracking.mlflow_uri}")
    if ctx.spec.tune is not None:
        dims["mlflow_parent"] = mlflow_run
    else:
        dims["tracking"] = EpochLogger.of(ctx.spec, mlflow_run)
