"""MLflow tracking shared by the stages (foundation: imports no stage package).

A run with ``tracking.mlflow_uri`` is one MLflow *parent run* in the pipeline's experiment,
tagged ``raypipe.run_id``. The train stage opens it (:func:`open_run`) so that training can
log its per-epoch metrics into it while it trains (:class:`EpochLogger`, ``step`` = epoch) and a
Tune search can hang one nested run per trial under it; the register stage's export
(:func:`raypipe.register.mlflow.export_run`) finds it by the tag, adds the spec, the final
metrics, the evaluation's and the data's reports, and marks it FINISHED.

MLflow stays optional and is imported only here, lazily. No global MLflow state: every call
goes through an ``MlflowClient`` bound to the URI (the spec's URI refuses credentials; MLflow
reads ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` from the environment by itself).

Tracking never fails training: :func:`open_run` returns ``None`` and :class:`EpochLogger` turns
itself off after a warning when the store cannot be reached. The register stage's export logs
the training history from the train report when the run has none (the workers could not log,
or the train stage was a cache hit of an earlier run).
"""
from __future__ import annotations

import logging
import math
import numbers
import time
import warnings
from pathlib import Path
from typing import Any

from raypipe.errors import SpecError

log = logging.getLogger("raypipe")

ID_TAG = "raypipe.run_id"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's UI nests a run under the run this tag names
BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch
# per-epoch entries of a train report that are bookkeeping, not metrics worth a curve
NOT_CURVES = frozenset({"epoch", "pid", "stopped", "report_s", "ckpt_s", "train_rows", "val_rows"})


def client(uri: str) -> Any:
    """An ``MlflowClient`` bound to ``uri``; a :class:`SpecError` when MLflow is missing or the store won't open."""
    try:
        import mlflow  # noqa: F401
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise SpecError(
            f"tracking.mlflow_uri is set ({uri!r}) but MLflow is not installed "
            f"({exc}); install it with: pip install 'raypipe[mlflow]'"
        ) from exc
    try:
        return MlflowClient(tracking_uri=uri)
    except MlflowException as exc:
        raise SpecError(
            f"tracking.mlflow_uri: cannot open the MLflow tracking store {uri!r}: {exc}. "
            "Use e.g. 'sqlite:///abs/path/mlflow.db' (needs pip install 'raypipe[mlflow]') "
            "or an http(s):// tracking server."
        ) from exc


def experiment_id(mlflow: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) when missing."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created meanwhile by a concurrent run
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_runs(mlflow: Any, exp_id: str, run_id: str, id_tag: str = ID_TAG) -> list[Any]:
    """The MLflow runs of experiment ``exp_id`` tagged ``id_tag == run_id`` (oldest first)."""
    q = '"' if "'" in run_id else "'"  # MLflow's filter grammar has no escapes
    if q in run_id:
        raise ValueError(f"run_id {run_id!r} cannot contain both quote characters")
    found = mlflow.search_runs([exp_id], filter_string=f"tags.`{id_tag}` = {q}{run_id}{q}",
                               order_by=["attributes.start_time ASC"])
    return [r for r in found if r.data.tags.get(id_tag) == run_id]


def experiment_of(spec: Any) -> str:
    """The MLflow experiment of a pipeline: ``tracking.experiment``, else the pipeline's name."""
    return spec.tracking.experiment or spec.name


def artifact_location(spec: Any) -> str:
    """Where a newly created experiment keeps its artifacts: ``<storage>/mlflow-artifacts``."""
    from raypipe.store import Store

    root = Store(spec.storage)
    location = root.full_uri("mlflow-artifacts")
    return Path(location).as_uri() if root.is_local else location


def open_run(spec: Any, run_id: str, tags: dict[str, str] | None = None) -> str | None:
    """The MLflow parent run of raypipe run ``run_id``: the RUNNING one tagged with it, else a new one.

    ``None`` (after a warning) when tracking is off or the store cannot be reached: training goes on
    untracked, and the register stage's export makes the run afterwards.
    """
    uri = spec.tracking.mlflow_uri
    if not uri:
        return None
    try:
        mlflow = client(uri)
        exp_id = experiment_id(mlflow, experiment_of(spec), artifact_location(spec))
        for found in find_runs(mlflow, exp_id, run_id):
            if found.info.status == "RUNNING":
                return found.info.run_id
        run_tags = {"raypipe.pipeline": spec.name, **(tags or {}), ID_TAG: run_id}
        return mlflow.create_run(exp_id, tags=run_tags, run_name=run_id).info.run_id
    except Exception as exc:
        log.warning("MLflow: cannot open the run of %s in %r (training goes on untracked): %s: %s",
                    run_id, uri, type(exc).__name__, exc)
        return None


def close_run(spec: Any, run_id: str, status: str) -> None:
    """End the RUNNING MLflow run of ``run_id`` (left open by a run that failed, or stopped before register).
    Best effort: a tracking error is a warning."""
    try:
        mlflow = client(spec.tracking.mlflow_uri)
        exp = mlflow.get_experiment_by_name(experiment_of(spec))
        for found in find_runs(mlflow, exp.experiment_id, run_id) if exp is not None else []:
            if found.info.status == "RUNNING":
                mlflow.set_terminated(found.info.run_id, status)
    except Exception as exc:
        log.warning("MLflow: cannot end the run of %s in %r: %s: %s", run_id, spec.tracking.mlflow_uri,
                    type(exc).__name__, exc)


def finite(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def curve_points(metrics: dict[str, Any], step: int, prefix: str = "", timestamp: int | None = None) -> list[Any]:
    """``metrics``' finite numbers (bookkeeping entries left out) as MLflow ``Metric`` entries at ``step``."""
    from mlflow.entities import Metric

    now = timestamp if timestamp is not None else int(time.time() * 1000)
    return [Metric(f"{prefix}{k}", float(v), now, int(step)) for k, v in metrics.items()
            if k not in NOT_CURVES and finite(v)]


def log_points(mlflow: Any, mlflow_run_id: str, points: list[Any]) -> None:
    for i in range(0, len(points), BATCH):
        mlflow.log_batch(mlflow_run_id, metrics=points[i:i + BATCH])


class EpochLogger:
    """Logs one epoch's metrics into an MLflow run (``step`` = the epoch), from wherever training runs.

    Small and picklable (the URI and the run id): it travels in the loop config to the Ray Train
    worker of rank 0 or to the one-process training task, which call it after every epoch. The
    client is made on first use. A failure (MLflow missing on a worker, the store unreachable from
    it) is one warning, then the logger is off for the rest of the run; the export afterwards
    logs the history from the train report instead.
    """

    def __init__(self, uri: str, mlflow_run_id: str) -> None:
        self.uri, self.mlflow_run_id = uri, mlflow_run_id
        self._client: Any = None
        self.off = False

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "mlflow_run_id": self.mlflow_run_id, "_client": None, "off": self.off}

    def __call__(self, metrics: dict[str, Any], epoch: int) -> None:
        if self.off:
            return
        try:
            if self._client is None:
                self._client = client(self.uri)
            log_points(self._client, self.mlflow_run_id, curve_points(metrics, epoch))
        except Exception as exc:
            self.off = True
            warnings.warn(f"MLflow: per-epoch logging to {self.uri!r} stopped (training goes on; the export logs "
                          f"the history afterwards): {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)

    @classmethod
    def of(cls, spec: Any, mlflow_run_id: str | None) -> EpochLogger | None:
        return cls(spec.tracking.mlflow_uri, mlflow_run_id) if mlflow_run_id else None
