"""Optional export of a raypipe run to an MLflow tracking store.

MLflow is an optional dependency (``pip install 'raypipe[mlflow]'``) and is imported only
when :func:`export_run` is called. No global MLflow state is touched: everything goes
through one ``MlflowClient`` bound to the given tracking URI. The export is idempotent:
a FINISHED MLflow run tagged ``raypipe.run_id == run_id`` is reused, not logged twice.

MLflow 3.x notes: ``sqlite:///abs/path/mlflow.db`` needs ``sqlalchemy`` and ``alembic``;
the ``file://`` store is in maintenance mode and refuses to open unless the environment
sets ``MLFLOW_ALLOW_FILE_STORE=true``.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from raypipe.errors import SpecError

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
MAX_TAG_VALUE = 8000  # MLflow's limit on a tag value
BATCH = 100  # MLflow accepts at most 100 params (1000 metrics) per log_batch


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _is_finite_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _artifact_parts(name: str) -> tuple[str | None, str]:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.name:
        raise ValueError(f"artifact name {name!r} must be a relative path without '..'")
    folder = str(p.parent)
    return (None if folder == "." else folder), p.name


def export_run(mlflow_uri: str, *, experiment: str, run_id: str, params: dict, metrics: dict,
               tags: dict[str, str], artifacts: dict[str, bytes],
               artifact_location: str | None = None, id_tag: str = "raypipe.run_id",
               run_name: str | None = None) -> str:
    """Log one raypipe run to an MLflow tracking store; return the MLflow run id.

    ``run_id`` is kept as the tag ``id_tag`` (``raypipe.run_id``; a monitor window uses
    ``raypipe.window_id``), which makes the export idempotent; ``run_name`` defaults to ``run_id``.

    Nested ``params``/``metrics`` dicts are flattened to dotted keys (``train.lr``); params
    are stringified and cut to 6000 chars; metrics that are not finite numbers (None, NaN,
    lists, bools) are skipped. ``artifacts`` maps relative names (``plots/roc.png``) to bytes.
    ``artifact_location`` is used only when the experiment is created (a sqlite store
    otherwise puts artifacts under ``./mlruns`` relative to the current directory).
    """
    try:
        import mlflow  # noqa: F401
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise SpecError(
            f"tracking.mlflow_uri is set ({mlflow_uri!r}) but MLflow is not installed "
            f"({exc}); install it with: pip install 'raypipe[mlflow]'"
        ) from exc

    try:
        client = MlflowClient(tracking_uri=mlflow_uri)
    except MlflowException as exc:
        raise SpecError(
            f"tracking.mlflow_uri: cannot open the MLflow tracking store {mlflow_uri!r}: {exc}. "
            "Use e.g. 'sqlite:///abs/path/mlflow.db' (needs pip install 'raypipe[mlflow]') "
            "or an http(s):// tracking server."
        ) from exc

    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(
        experiment, artifact_location=artifact_location)

    q = '"' if "'" in run_id else "'"  # MLflow's filter grammar has no escapes
    if q in run_id:
        raise ValueError(f"run_id {run_id!r} cannot contain both quote characters")
    by_tag = f"tags.`{id_tag}` = {q}{run_id}{q}"
    for found in client.search_runs([exp_id], filter_string=by_tag):
        if found.info.status == "FINISHED" and found.data.tags.get(id_tag) == run_id:
            return found.info.run_id

    run_tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}
    run_tags[id_tag] = run_id
    run = client.create_run(exp_id, tags=run_tags, run_name=run_name or run_id)
    mlflow_run_id = run.info.run_id
    try:
        flat_params = [Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in _flatten(params).items()]
        for i in range(0, len(flat_params), BATCH):
            client.log_batch(mlflow_run_id, params=flat_params[i:i + BATCH])

        now = int(time.time() * 1000)
        flat_metrics = [Metric(k, float(v), now, 0)
                        for k, v in _flatten(metrics).items() if _is_finite_number(v)]
        for i in range(0, len(flat_metrics), BATCH):
            client.log_batch(mlflow_run_id, metrics=flat_metrics[i:i + BATCH])

        with tempfile.TemporaryDirectory(prefix="raypipe-mlflow-") as tmp:
            for i, (name, data) in enumerate(artifacts.items()):
                folder, base = _artifact_parts(name)
                local = Path(tmp) / str(i) / base
                local.parent.mkdir(parents=True)
                local.write_bytes(data)
                client.log_artifact(mlflow_run_id, str(local), artifact_path=folder)

        client.set_terminated(mlflow_run_id, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):  # the original error matters more
            client.set_terminated(mlflow_run_id, "FAILED")
        raise
    return mlflow_run_id


def experiment_of(spec: Any) -> str:
    """The MLflow experiment of a pipeline: ``tracking.experiment``, else the pipeline's name."""
    return spec.tracking.experiment or spec.name


def artifact_location(spec: Any) -> str:
    """Where a newly created experiment keeps its artifacts: ``<storage>/mlflow-artifacts``."""
    from raypipe.store import Store

    root = Store(spec.storage)
    location = root.full_uri("mlflow-artifacts")
    return Path(location).as_uri() if root.is_local else location


def trigger_tags(trigger: dict[str, Any] | None) -> dict[str, str]:
    """The lineage of a run that did not start by hand (a retrain's manifest ``trigger``) as MLflow tags."""
    if not trigger:
        return {}
    keys = {"kind": "raypipe.trigger.kind", "reason": "raypipe.trigger.reason",
            "parent_champion": "raypipe.parent_champion", "attempt": "raypipe.retrain_attempt",
            "fresh_rows": "raypipe.fresh_rows"}
    return {tag: str(trigger[k]) for k, tag in keys.items() if trigger.get(k) is not None}


def export_version(spec: Any, run_id: str, version: int, trigger: dict[str, Any] | None = None) -> str:
    """Export a registered version to ``spec.tracking.mlflow_uri``: the spec as params, every
    split's metrics, the report, metrics and lineage as artifacts, the registry reference as tags,
    and, for a run with a ``trigger`` (a retrain), :func:`trigger_tags`."""
    from raypipe.registry import Registry

    reg = Registry.for_spec(spec)
    vs, info = reg.version_store(version), reg.info(version)
    doc = vs.read_json("metrics.json")
    lineage = info["lineage"]
    metrics = {split: {k: v for k, v in (doc.get(split) or {}).items() if k not in ("per_class", "confusion_matrix")}
               for split in ("train", "validation", "test")}
    artifacts = {n: vs.read_bytes(n) for n in ("metrics.json", "lineage.json")}
    artifacts.update({f: vs.read_bytes("report", f) for f in vs.walk_files("report")})  # report.html, plots/*.png
    tags = {"raypipe.pipeline": spec.name, "raypipe.version": str(version), "raypipe.status": info["status"],
            "raypipe.model_uri": vs.full_uri(), "raypipe.aliases": ",".join(info["aliases"]),
            "raypipe.data_fingerprint": lineage.get("data_fingerprint", ""), "raypipe.spec_hash": lineage.get("spec_hash", ""),
            "raypipe.git_commit": lineage.get("git_commit") or "", "raypipe.gate": "passed" if doc["gate"]["passed"] else "failed",
            "raypipe.kind": "retrain" if trigger else "run", **trigger_tags(trigger)}
    shown = spec.redacted()
    params = {k: shown[k] for k in ("data", "features", "model", "train", "evaluate")}
    return export_run(spec.tracking.mlflow_uri, experiment=experiment_of(spec), run_id=run_id,
                      params=params, metrics={**metrics, "threshold": doc.get("threshold")}, tags=tags,
                      artifacts=artifacts, artifact_location=artifact_location(spec))


def check_available(spec: Any) -> None:
    """Fail before the run, not after it, when tracking is configured but MLflow is missing."""
    import importlib.util

    if spec.tracking.mlflow_uri and importlib.util.find_spec("mlflow") is None:
        raise SpecError(f"tracking.mlflow_uri is set ({spec.tracking.mlflow_uri!r}) but MLflow is not installed; "
                        "install it with: pip install 'raypipe[mlflow]'")
