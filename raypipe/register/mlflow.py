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

from raypipe import tracking
from raypipe.errors import SpecError
from raypipe.tracking import ID_TAG, artifact_location, experiment_of  # noqa: F401  (re-exported)

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
               artifact_location: str | None = None, id_tag: str = ID_TAG,
               run_name: str | None = None, history: list[dict[str, Any]] | None = None) -> str:
    """Log one raypipe run to an MLflow tracking store; return the MLflow run id.

    ``run_id`` is kept as the tag ``id_tag`` (``raypipe.run_id``; a monitor window uses
    ``raypipe.window_id``), which makes the export idempotent; ``run_name`` defaults to ``run_id``.
    A FINISHED run with the tag is returned as it is; a RUNNING one (the train stage opened it to log
    the training live: :func:`raypipe.tracking.open_run`) is completed and finished; else a run is made.

    Nested ``params``/``metrics`` dicts are flattened to dotted keys (``train.lr``); params
    are stringified and cut to 6000 chars; metrics that are not finite numbers (None, NaN,
    lists, bools) are skipped. ``artifacts`` maps relative names (``plots/roc.png``) to bytes.
    ``history``: per-epoch metrics (a train report's ``history``), logged with ``step`` = epoch when
    the run has no curve yet (the training could not log them live, or ran in an earlier run).
    ``artifact_location`` is used only when the experiment is created (a sqlite store
    otherwise puts artifacts under ``./mlruns`` relative to the current directory).
    """
    client = tracking.client(mlflow_uri)  # a SpecError when MLflow is missing
    from mlflow.entities import Metric, Param

    exp_id = tracking.experiment_id(client, experiment, artifact_location)
    found = tracking.find_runs(client, exp_id, run_id, id_tag)
    for run in found:
        if run.info.status == "FINISHED":
            return run.info.run_id
    running = [r for r in found if r.info.status == "RUNNING"]

    run_tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}
    run_tags[id_tag] = run_id
    if running:
        mlflow_run_id = running[-1].info.run_id
    else:
        mlflow_run_id = client.create_run(exp_id, tags=run_tags, run_name=run_name or run_id).info.run_id
    try:
        if running:
            from mlflow.entities import RunTag

            logged = running[-1].data.params
            client.log_batch(mlflow_run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
        else:
            logged = {}
        # a param once logged cannot change: an export retried into the same run skips those already there
        flat_params = [Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in _flatten(params).items() if k not in logged]
        for i in range(0, len(flat_params), BATCH):
            client.log_batch(mlflow_run_id, params=flat_params[i:i + BATCH])

        now = int(time.time() * 1000)
        flat_metrics = [Metric(k, float(v), now, 0)
                        for k, v in _flatten(metrics).items() if _is_finite_number(v)]
        for i in range(0, len(flat_metrics), BATCH):
            client.log_batch(mlflow_run_id, metrics=flat_metrics[i:i + BATCH])
        if history and not _has_curve(client, mlflow_run_id, history):
            points = [p for h in history for p in tracking.curve_points(h, int(h.get("epoch", 0)), timestamp=now)]
            tracking.log_points(client, mlflow_run_id, points)

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


def _has_curve(client: Any, mlflow_run_id: str, history: list[dict[str, Any]]) -> bool:
    """Whether the run already holds a per-epoch curve of the history's first metric."""
    names = [k for k, v in history[0].items() if k not in tracking.NOT_CURVES and tracking.finite(v)]
    return bool(names) and bool(client.get_metric_history(mlflow_run_id, names[0]))


def trigger_tags(trigger: dict[str, Any] | None) -> dict[str, str]:
    """The lineage of a run that did not start by hand (a retrain's manifest ``trigger``) as MLflow tags."""
    if not trigger:
        return {}
    keys = {"kind": "raypipe.trigger.kind", "reason": "raypipe.trigger.reason",
            "parent_champion": "raypipe.parent_champion", "attempt": "raypipe.retrain_attempt",
            "fresh_rows": "raypipe.fresh_rows"}
    return {tag: str(trigger[k]) for k, tag in keys.items() if trigger.get(k) is not None}


def export_version(spec: Any, run_id: str, version: int, trigger: dict[str, Any] | None = None,
                   extra_artifacts: dict[str, bytes] | None = None) -> str:
    """Export a registered version to ``spec.tracking.mlflow_uri``: the spec as params, every
    split's metrics, the report, metrics and lineage as artifacts, the registry reference as tags,
    the training history (per epoch, when the run has none yet), ``extra_artifacts`` (the data
    report: ``data/report.html``), and, for a run with a ``trigger`` (a retrain), :func:`trigger_tags`.
    With ``tracking.register_model`` the version also goes to MLflow's model registry
    (:func:`register_pyfunc`)."""
    from raypipe.registry import Registry

    reg = Registry.for_spec(spec)
    vs, info = reg.version_store(version), reg.info(version)
    doc = vs.read_json("metrics.json")
    lineage = info["lineage"]
    metrics = {split: {k: v for k, v in (doc.get(split) or {}).items() if k not in ("per_class", "confusion_matrix")}
               for split in ("train", "validation", "test")}
    artifacts = {n: vs.read_bytes(n) for n in ("metrics.json", "lineage.json")}
    artifacts.update({f: vs.read_bytes("report", f) for f in vs.walk_files("report")})  # report.html, plots/*.png
    artifacts.update(extra_artifacts or {})
    history = None
    if vs.exists("train_report.json"):
        history = vs.read_json("train_report.json").get("history") or None
        artifacts["train_report.json"] = vs.read_bytes("train_report.json")
    tags = {"raypipe.pipeline": spec.name, "raypipe.version": str(version), "raypipe.status": info["status"],
            "raypipe.model_uri": vs.full_uri(), "raypipe.aliases": ",".join(info["aliases"]),
            "raypipe.data_fingerprint": lineage.get("data_fingerprint", ""), "raypipe.spec_hash": lineage.get("spec_hash", ""),
            "raypipe.git_commit": lineage.get("git_commit") or "", "raypipe.gate": "passed" if doc["gate"]["passed"] else "failed",
            "raypipe.kind": "retrain" if trigger else "run", **trigger_tags(trigger)}
    shown = spec.redacted()
    params = {k: shown[k] for k in ("data", "features", "model", "train", "evaluate")}
    mlflow_run = export_run(spec.tracking.mlflow_uri, experiment=experiment_of(spec), run_id=run_id,
                            params=params, metrics={**metrics, "threshold": doc.get("threshold")}, tags=tags,
                            artifacts=artifacts, artifact_location=artifact_location(spec), history=history)
    from raypipe.tasks import TASKS

    # a policy (RLlib) answers observations, not rows: not a pyfunc model (yet)
    if spec.tracking.register_model and info["status"] == "ready" and not TASKS[spec.data.task].policy:
        register_pyfunc(spec, mlflow_run, version)
    return mlflow_run


MODEL_PATH = "raypipe_model"  # the pyfunc model's folder in the MLflow run's artifacts


def model_name(spec: Any) -> str:
    return spec.tracking.model_name or spec.name


def register_pyfunc(spec: Any, mlflow_run: str, version: int) -> str:
    """Register ``version`` in MLflow's model registry as a pyfunc model; return the MLflow model version.

    The model is "models from code" (:mod:`raypipe.register.mlflow_model`): the run's
    ``raypipe_model/`` artifact holds that file, a copy of the registry version's folder and
    ``model_config`` {version, trusted}; no model object is pickled. Idempotent: a model version
    already made from ``mlflow_run`` is reused. raypipe's aliases of the version are mirrored
    (:func:`mirror_aliases`).
    """
    import mlflow.pyfunc

    from raypipe.model.formats import trusted_factories
    from raypipe.registry import Registry

    client = tracking.client(spec.tracking.mlflow_uri)
    name = model_name(spec)
    existing = [mv for mv in client.search_model_versions(f"name = '{name}' and run_id = '{mlflow_run}'")]
    if existing:
        mv_version = existing[0].version
    else:
        if not client.search_registered_models(f"name = '{name}'"):
            with contextlib.suppress(Exception):  # made meanwhile by a concurrent run
                client.create_registered_model(name, tags={"raypipe.pipeline": spec.name})
        vs = Registry.for_spec(spec).version_store(version)
        with tempfile.TemporaryDirectory(prefix="raypipe-pyfunc-") as tmp:
            copy = Path(tmp) / "version"
            for f in vs.walk_files():
                (copy / f).parent.mkdir(parents=True, exist_ok=True)
                (copy / f).write_bytes(vs.read_bytes(f))
            from raypipe.version import __version__ as raypipe_version

            local = Path(tmp) / MODEL_PATH
            mlflow.pyfunc.save_model(str(local), python_model=str(Path(__file__).with_name("mlflow_model.py")),
                                     artifacts={"version": str(copy)},
                                     model_config={"version": version, "trusted": list(trusted_factories(spec))},
                                     pip_requirements=[f"raypipe=={raypipe_version}", "mlflow"])
            client.log_artifacts(mlflow_run, str(local), artifact_path=MODEL_PATH)
        source = f"{client.get_run(mlflow_run).info.artifact_uri.rstrip('/')}/{MODEL_PATH}"
        mv = client.create_model_version(name, source, run_id=mlflow_run,
                                         tags={"raypipe.version": str(version), "raypipe.pipeline": spec.name})
        mv_version = mv.version
    mirror_aliases(spec, {version: mv_version})
    return str(mv_version)


def mirror_aliases(spec: Any, known: dict[int, Any] | None = None) -> dict[str, str]:
    """Point the MLflow registered model's aliases where raypipe's aliases point (``champion`` ...); an alias
    whose raypipe version was not registered in MLflow is removed there. Returns {alias: MLflow version}."""
    from raypipe.registry import Registry

    client = tracking.client(spec.tracking.mlflow_uri)
    name = model_name(spec)
    by_version = {int(mv.tags.get("raypipe.version", -1)): mv.version
                  for mv in client.search_model_versions(f"name = '{name}'")}
    by_version.update(known or {})
    reg, out = Registry.for_spec(spec), {}
    for alias, version in (reg.aliases() or {}).items():
        if version in by_version:
            client.set_registered_model_alias(name, alias, by_version[version])
            out[alias] = str(by_version[version])
        else:
            with contextlib.suppress(Exception):  # not set there
                client.delete_registered_model_alias(name, alias)
    return out


def check_available(spec: Any) -> None:
    """Fail before the run, not after it, when tracking is configured but MLflow is missing."""
    import importlib.util

    if spec.tracking.mlflow_uri and importlib.util.find_spec("mlflow") is None:
        raise SpecError(f"tracking.mlflow_uri is set ({spec.tracking.mlflow_uri!r}) but MLflow is not installed; "
                        "install it with: pip install 'raypipe[mlflow]'")
