"""The evaluate stage: batch inference on Ray over every split, metrics, baselines, slices, findings, gate, report.

Every split, and the champion on test, is scored in one pass (:mod:`raypipe.evaluate.scoring`:
one Ray Data execution, or a Ray task per core for small data); only labels, slice columns and
scores travel to the driver, where ``sklearn.metrics`` turns them into numbers. For a
supervised task the fitted features travel too (when they fit in memory), so the linear
baseline is fitted on exactly what the model saw.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from raypipe.datasets import footer_rows, is_small
from raypipe.errors import SpecError
from raypipe.evaluate.baselines import BASELINE_TASKS, LINEAR_MAX_ROWS, features_fit_in_memory, score_baselines
from raypipe.evaluate.causes import training_causes
from raypipe.evaluate.findings import baseline_findings, fit_findings, slice_findings, threshold_finding, underfits
from raypipe.evaluate.gate import verdict
from raypipe.evaluate.monitoring import prediction_reference
from raypipe.metrics import LOWER_IS_BETTER, choose_threshold
from raypipe.evaluate.scored import Scored
from raypipe.evaluate.scoring import Branch, as_scored, batch_rows, run_branches
from raypipe.evaluate.slices import slice_keys, sliced_metrics
from raypipe.model.formats import trusted_factories
from raypipe.stage import SPLITS, EvaluateOutput, StageContext, StageOutput
from raypipe.store import Store
from raypipe.tasks import TASKS


def model_key(model_uri: str) -> str:
    """A digest of a model folder's files (the cache key of loaded predictors)."""
    store = Store(model_uri)
    return "-".join(store.sha256(f)[:16] for f in store.walk_files())


def pick_threshold(cfg: Any, validation: Scored | None) -> tuple[float, str]:
    """The decision threshold from ``evaluate.threshold``, chosen on validation only.

    Binary classifiers and labelled anomaly detectors use ``strategy``; anomaly detectors
    without labels flag the top ``anomaly_rate`` share of validation scores.
    """
    if cfg.strategy == "fixed":
        return cfg.value, "fixed"
    if validation is not None and validation.task == "anomaly":
        score = validation.scores[:, 0]
        if validation.y is not None and len(np.unique(validation.y)) == 2:
            return choose_threshold(validation.y, score, cfg.strategy, cfg.target_recall, cfg.target_specificity), cfg.strategy
        return float(np.quantile(score, 1 - cfg.anomaly_rate)), f"top {cfg.anomaly_rate:g} of validation scores"
    if validation is None or validation.class_names is None or len(validation.class_names) != 2:
        return 0.5, "default (not a binary problem or no validation split)"
    return choose_threshold(validation.y, validation.scores[:, 1], cfg.strategy, cfg.target_recall,
                            cfg.target_specificity), cfg.strategy


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> EvaluateOutput:
    if TASKS[ctx.spec.data.task].policy:  # a policy is evaluated over episodes of its environment
        from raypipe.evaluate.rl_stage import run as run_policy

        return run_policy(ctx, inputs)
    val, feats, train = inputs["validate"], inputs["features"], inputs["train"]
    schema = val.read_json(val.outputs.schema)
    features = feats.read_json(feats.outputs.features)
    model_uri = train.store.full_uri(train.outputs.model)
    cfg, task = ctx.spec.evaluate, ctx.spec.data.task
    missing = [c for c in cfg.slices if c not in schema["columns"]]
    if missing:
        raise SpecError(f"evaluate.slices: {missing} are not columns of the data; use some of {sorted(schema['columns'])}")
    splits = val.outputs.splits
    names = [s for s in SPLITS if s in splits]
    small = is_small(val.store, [splits[s] for s in names])
    ctx.ray(small=small)
    train_rows = footer_rows(val.store, splits["train"])  # parquet footers: no Ray Data execution
    trusted = trusted_factories(ctx.spec)
    skip_linear = _linear_skip_reason(task, val.outputs.counts, min(train_rows, cfg.train_sample_rows),
                                      feats.outputs.n_features)
    with_x = task == "clustering" or (task in BASELINE_TASKS and skip_linear is None)
    target = schema.get("target") or {}
    keep = list(dict.fromkeys([*([target["name"]] if target else []), *cfg.slices]))
    model = {"model_uri": model_uri, "model_key": model_key(model_uri), "features": features, "schema": schema,
             "trusted": list(trusted), "batch_rows": batch_rows(feats.outputs.n_features)}
    branches = [Branch(s, val.store, splits[s], keep=keep, with_features=with_x,
                       sample=_sample(train_rows, cfg.train_sample_rows, ctx.spec.data.split.seed) if s == "train" else None,
                       **model) for s in names]
    champion_version = _champion_branch(ctx, val.store, splits["test"], branches) if cfg.gate.vs_champion else None
    parts = run_branches(branches, small=small)
    scored = {s: as_scored(parts[s], schema, task, with_x) for s in names}
    threshold, strategy = pick_threshold(cfg.threshold, scored.get("validation"))
    m = {s: sc.metrics(threshold) for s, sc in scored.items()}
    test = scored["test"]
    baselines = score_baselines(scored, lambda v: pick_threshold(cfg.threshold, v), seed=ctx.spec.data.split.seed,
                                skip_linear=skip_linear)
    if baselines is not None and baselines["linear"].get("train_rows") is not None:
        baselines["linear"]["train_split_rows"] = train_rows
    slice_metric = (cfg.gate.max_slice_gap.metric if cfg.gate.max_slice_gap and cfg.gate.max_slice_gap.metric
                    else TASKS[task].main_metric)
    slices = {c: sliced_metrics(slice_keys(test.frame[c]), lambda mask: test.metrics(threshold, mask), slice_metric,
                                lower_is_better=slice_metric in LOWER_IS_BETTER, min_rows=cfg.min_slice_rows)
              for c in cfg.slices}
    champion = _champion_metrics(ctx, champion_version, parts.get("champion"), branches[-1]) \
        if champion_version is not None else None
    held_name = "validation" if "validation" in m else "test"
    versus, short = baseline_findings(task, m["test"], baselines)
    causes = []
    if short or underfits(task, m["train"], m[held_name]):
        report = train.read_json(train.outputs.report)
        causes = training_causes(task, report, y_train=scored["train"].y, train_rows=train_rows,
                                 **_loop_settings(ctx.spec, train.outputs.tune, report))
    fit, gap = fit_findings(task, m["train"], m[held_name], held_name, cfg.gate.max_overfit_gap,
                            cause_named=bool(causes))
    findings = versus + fit + causes + slice_findings(slices)
    if (test.class_names is not None and len(test.class_names) == 2) or task == "anomaly":
        findings += threshold_finding(strategy, threshold, m.get("validation"))
    result = verdict(cfg.gate, task, m["test"], train=m["train"], held_out=m.get("validation"),
                     champion=champion, slices=slices, baselines=baselines)
    doc = {
        "task": task, "pipeline": ctx.spec.name, "run_id": ctx.run_id, "classes": test.class_names,
        "threshold": threshold, "threshold_strategy": strategy, "overfit_gap": gap, "train_split_rows": train_rows,
        "train": m["train"], "validation": m.get("validation"), "test": m["test"], "champion": champion,
        "baselines": baselines, "slices": slices, "findings": findings, "gate": result,
        "metrics": {k: m["test"].get(k) for k in cfg.metrics},
    }
    summary = _baseline_summary(baselines, cfg.metrics)
    ctx.artifact.write_json("metrics.json", doc)
    ctx.artifact.write_json("monitor_reference.json", prediction_reference(test, scored.get("validation"), threshold))
    _write_report(ctx.artifact, doc, test, threshold)
    ctx.log("test: " + ", ".join(f"{k}={v:.4f}" for k, v in doc["metrics"].items() if v is not None)
            + ("" if result["passed"] else "  — gate NOT passed"))
    for name, b in (summary or {}).items():
        ctx.log(f"baseline {name} ({b['model']}): " + (b["skipped"] if "skipped" in b else ", ".join(
            f"{k}={v:.4f}" for k, v in b["metrics"].items() if v is not None)))
    for f in findings:
        ctx.log(f)
    return EvaluateOutput(metrics=doc["metrics"], metrics_file="metrics.json", report="report.html", gate=result,
                          threshold=threshold, baselines=summary, monitor_reference="monitor_reference.json")


def _linear_skip_reason(task: str, counts: dict[str, dict[str, int]], train_sample: int, n_features: int) -> str | None:
    """Why the linear baseline cannot be fitted here (None: it can): its features must fit in memory."""
    if task not in BASELINE_TASKS:
        return None
    rows = train_sample + sum(c.get("valid", 0) for s, c in counts.items() if s != "train")
    if features_fit_in_memory(rows, n_features):
        return None
    return (f"{n_features:,} features × {rows:,} rows are too many to gather for it; lower "
            f"evaluate.train_sample_rows (its train rows, at most {LINEAR_MAX_ROWS:,}) or use fewer features")


def _loop_settings(spec: Any, tune: dict[str, Any] | None, report: dict[str, Any]) -> dict[str, Any]:
    """The batch size and learning rate the model was trained with (a Tune search may have chosen them;
    an unset ``train.batch_size`` is resolved in the train report)."""
    best = (tune or {}).get("best_config") or {}
    batch = best.get("train.batch_size", report.get("batch_size") or spec.train.batch_size or 1024)
    return {"batch_size": int(batch),
            "lr": float(best.get("train.lr", spec.train.lr))}


def _baseline_summary(baselines: dict[str, Any] | None, metrics: list[str]) -> dict[str, Any] | None:
    """The baselines' ``evaluate.metrics`` on test, beside the model's in the run summary."""
    if baselines is None:
        return None
    out = {}
    for name, b in baselines.items():
        entry: dict[str, Any] = {"model": b["model"]}
        if "skipped" in b:
            entry["skipped"] = b["skipped"]
        else:
            entry["metrics"] = {k: b["test"].get(k) for k in metrics}
            if "train_rows" in b:
                entry["train_rows"] = b["train_rows"]
        out[name] = entry
    return out


def _sample(n: int, cap: int, seed: int) -> dict[str, float] | None:
    """How the train split is sampled down to about ``cap`` of its ``n`` rows (None: every row).

    Its metrics only feed the overfitting check. Rows are kept by a hash of their content
    (as in the split, :func:`raypipe.evaluate.scoring.sample_rows`), so the sample is the same
    whatever the block layout: the same data gives the same train metrics.
    """
    return None if n <= cap else {"fraction": cap / n, "seed": seed ^ 0x5EED}


def _write_report(store: Store, doc: dict[str, Any], test: Scored, threshold: float) -> None:
    from raypipe.evaluate.report import write_report

    scores = {"classification": test.scores, "anomaly": test.scores[:, 0]}.get(test.task)
    write_report(store, doc, y=test.y, pred=test.pred(threshold), scores=scores, class_names=test.class_names, x=test.x)


def _champion_branch(ctx: StageContext, store: Store, test_rel: str, branches: list[Branch]) -> int | None:
    """Add the current champion, scoring this run's test split, to ``branches``; its version (None: no champion)."""
    from raypipe.registry import Registry

    reg = Registry.for_spec(ctx.spec, ctx.root)
    version = reg.alias("champion")
    if version is None:
        return None
    vs = reg.version_store(version)
    reg.check_version(version)  # the champion's files as registered (manifest, signature) before any is loaded
    schema = vs.read_json("schema.json")
    target = schema.get("target") or {}
    uri = vs.full_uri("model")
    branches.append(Branch("champion", store, test_rel, uri, model_key(uri), vs.read_json("features.json"), schema,
                           keep=[target["name"]] if target else [], trusted=list(trusted_factories(ctx.spec)),
                           with_features=ctx.spec.data.task == "clustering"))
    return version


def _champion_metrics(ctx: StageContext, version: int, part: dict[str, Any], branch: Branch) -> dict[str, Any]:
    """The current champion's metrics on this run's test split."""
    from raypipe.registry import Registry

    reg = Registry.for_spec(ctx.spec, ctx.root)
    scored = as_scored(part, branch.schema, ctx.spec.data.task, branch.with_features)
    metrics = scored.metrics(reg.info(version).get("threshold", 0.5))
    return {"version": version, **{k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}}
