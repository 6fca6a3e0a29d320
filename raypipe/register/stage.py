"""The register stage: publish the candidate (ready once it loads back, or rejected), move the alias, export
to MLflow. A version an interrupted run of this stage already wrote is finished, not written twice."""
from __future__ import annotations

import json
from typing import Any

from raypipe.errors import ArtifactError
from raypipe.lineage import lineage_record
from raypipe.model.formats import trusted_factories
from raypipe.registry import Registry
from raypipe.stage import RegisterOutput, StageContext, StageOutput
from raypipe.store import Store
from raypipe.tasks import TASKS


def load_check(version_store: Store, version: int, trusted: tuple[str, ...] = ()) -> None:
    """The registry's verify step: the version must load into a predictor (with the deployer's ``trusted``)."""
    from raypipe.model.predictor import Predictor

    Predictor.from_version(version_store, version, trusted)


SAMPLE_ROWS = 5000  # the reference sample the monitor's domain classifier compares windows with


def monitor_files(val: StageOutput, ev: StageOutput, seed: int) -> dict[str, bytes]:
    """The version's drift reference: the training profile (validate), the test split's prediction
    distribution and score calibration (evaluate), and a seeded sample of at most ``SAMPLE_ROWS``
    valid training rows (features and target; images left out).

    The sample is taken by row number from the parquet files of the valid train split, which
    validate names by content, so the same data gives the same sample. pyarrow reads only the
    columns kept, on the driver (a scan of the split: a few seconds for millions of rows).
    """
    import io

    import numpy as np
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from raypipe.schema import is_tensor_type

    files = {"profile.json": val.read_bytes(val.outputs.profile)}
    if ev.outputs.monitor_reference:
        files["monitor/predictions.json"] = ev.read_bytes(ev.outputs.monitor_reference)
    schema = val.read_json(val.outputs.schema)
    ids = set(schema.get("id_columns", []))
    data = pads.dataset(val.store.path(val.outputs.splits["train"]), filesystem=val.store.fs, format="parquet")
    keep = [f.name for f in data.schema if f.name in schema["columns"] and f.name not in ids
            and not is_tensor_type(f.type)]
    n = data.count_rows()
    take = np.sort(np.random.default_rng(seed).choice(n, size=min(n, SAMPLE_ROWS), replace=False))
    buf = io.BytesIO()
    pq.write_table(data.take(take, columns=keep), buf)
    files["monitor/sample.parquet"] = buf.getvalue()
    return files


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> RegisterOutput:
    val, feats, train, ev = inputs["validate"], inputs["features"], inputs["train"], inputs["evaluate"]
    trusted = trusted_factories(ctx.spec)
    reg = Registry.for_spec(ctx.spec, ctx.root, verify=lambda vs, v: load_check(vs, v, trusted))
    for v, what in reg.recover():
        ctx.log(f"recovered version {v} left by a killed run: {what}")
    gate, target = ev.outputs.gate, ctx.spec.registry.promote_to
    version = reg.find(register_fingerprint=ctx.fingerprint)
    if version is not None and reg.status(version) != "failed":
        ctx.log(f"version {version} was written by an interrupted run of this stage: finishing it")
        reg.finalize(version)
    else:
        metrics_doc = ev.read_json(ev.outputs.metrics_file)
        parent = (metrics_doc.get("champion") or {}).get("version", reg.alias("champion"))
        lineage = lineage_record(ctx, inputs, parent)
        files = {
            "metrics.json": ev.read_bytes(ev.outputs.metrics_file),
            "train_report.json": train.read_bytes(train.outputs.report),
        }
        if TASKS[ctx.spec.data.task].policy:  # a policy: no features, schema or rows to monitor
            lineage.update(_policy_lineage(ctx))
        else:
            files.update({"features.json": feats.read_bytes(feats.outputs.features),
                          "schema.json": val.read_bytes(val.outputs.schema)})
            files.update(monitor_files(val, ev, ctx.spec.data.split.seed))
        files["lineage.json"] = json.dumps(lineage, indent=2, sort_keys=True).encode()
        for f in train.store.walk_files(train.outputs.model):
            files[f"model/{f}"] = train.store.read_bytes(train.outputs.model, f)
        for f in ev.store.walk_files():  # report.html and plots/*.png
            if f.endswith((".html", ".png")):
                files[f"report/{f}"] = ev.read_bytes(f)
        # evaluate_base + champion_seen: what the evaluation that made this version compared with, so that
        # the champion's digest (raypipe.evaluate.champion) does not count this very version as a change
        meta = {"threshold": ev.outputs.threshold, "run_id": ctx.run_id, "kind": ctx.spec.model.kind,
                "task": ctx.spec.data.task, "register_fingerprint": ctx.fingerprint,
                "evaluate_base": ev.base_fingerprint, "champion_seen": ev.external}
        version = reg.publish(files, passed=gate["passed"], promote_to=target, meta=meta,
                              reason=f"gate passed in run {ctx.run_id}")
    status = reg.status(version)
    if status == "failed":
        raise ArtifactError(f"version {version} was written but failed verification: {reg.state(version)['history'][-2:]}")
    alias = target if status == "ready" and target and reg.alias(target) == version else None
    ctx.log(f"registered {ctx.spec.name} version {version} ({status})" + (f" → {alias}" if alias else ""))
    return RegisterOutput(version=version, status=status, alias=alias, gate_failures=gate["failures"],
                          tracking=_export(ctx, version, val) if ctx.spec.tracking.mlflow_uri else None)


def _policy_lineage(ctx: StageContext) -> dict[str, Any]:
    """What a policy's lineage adds: the environment (id, registered version, entry point), RLlib's and
    gymnasium's versions, the training and evaluation seeds, and the offline data's fingerprint."""
    from importlib.metadata import version as pkg_version

    from raypipe.envs.make import env_version

    spec = ctx.spec
    return {"env": env_version(spec.data.env.model_dump()), "algorithm": spec.model.kind,
            "rllib": pkg_version("ray"),
            "seeds": {"train": spec.train.seed, "evaluate_first": spec.evaluate.seed,
                      "evaluate_episodes": spec.evaluate.episodes},
            "offline_data": ctx.data_fingerprint if spec.data.source is not None else None}


def _export(ctx: StageContext, version: int, val: StageOutput) -> dict[str, Any]:
    """Log the new version to MLflow (with validate's data report as ``data/report.html`` and ``data/report.json``);
    a tracking failure is reported, the model stays registered."""
    from raypipe.register.mlflow import export_version

    uri = ctx.spec.tracking.mlflow_uri
    data = {f"data/{name}": val.read_bytes(name) for name in (val.outputs.report_html, val.outputs.report)
            if name and val.store.exists(name)}
    try:
        mlflow_run = export_version(ctx.spec, ctx.tracking_id, version, ctx.trigger, extra_artifacts=data)
    except Exception as exc:
        ctx.log(f"MLflow export to {uri!r} failed: {type(exc).__name__}: {exc}")
        return {"mlflow_uri": uri, "error": f"{type(exc).__name__}: {exc}"}
    ctx.log(f"logged to MLflow {uri} as run {mlflow_run}")
    return {"mlflow_uri": uri, "mlflow_run_id": mlflow_run}
