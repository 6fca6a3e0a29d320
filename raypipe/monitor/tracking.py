"""Each checked window as an MLflow run, when ``tracking.mlflow_uri`` is set.

The run goes into the pipeline's experiment (``tracking.experiment``, else the pipeline's name),
where the register stage logs the versions, named ``monitor <window id>`` and tagged
``raypipe.kind=monitor`` (the window id as ``raypipe.window_id``, which makes it idempotent).
Its metrics: ``rows``, ``valid_rows``, ``invalid_rows``, ``rescored_rows``, ``drifted_columns``,
``drift.<column>`` (the deciding statistic's value), ``prediction_drift.<answer|score>``,
``multivariate_auc`` and ``perf.<measured|estimated>.<metric>``; the window's ``monitor.drift``
settings are its params; the window's folder (``drift.html``, ``report.json``, ``plots/``) its
artifacts. Through :func:`raypipe.register.mlflow.export_run`, like a version's export.

Tracking never fails a check: a store that cannot be reached (or MLflow not installed) is a
warning on the ``raypipe`` logger and ``{"mlflow_uri", "error"}`` in the report's ``tracking``.
An HTTP tracking server that does not answer is retried by MLflow's client
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT`` bound the wait).
"""
from __future__ import annotations

import logging
import re
from typing import Any

from raypipe.store import MARKER, Store

log = logging.getLogger("raypipe")


def metric_name(name: str) -> str:
    """A name MLflow accepts: alphanumerics and ``_ - . / space``; anything else becomes ``_``."""
    clean = re.sub(r"[^A-Za-z0-9_\-. /]", "_", name).replace("..", "__")
    return clean.lstrip("/") or "_"


def window_metrics(report: Any) -> dict[str, float]:
    """The numbers of a :class:`raypipe.monitor.check.MonitorReport` under MLflow metric names
    (values that are not finite numbers are left out by the export)."""
    out: dict[str, Any] = {"rows": report.rows, "valid_rows": report.valid_rows,
                           "invalid_rows": report.invalid_rows, "rescored_rows": report.rescored_rows,
                           "drifted_columns": len(report.drifted)}

    def put(name: str, value: Any) -> None:
        key, n = metric_name(name), 2
        while key in out:  # two columns that read the same once cleaned
            key, n = f"{metric_name(name)}_{n}", n + 1
        out[key] = value

    for column, entry in report.columns.items():
        put(f"drift.{column}", entry.value)
    for part, entry in ((report.prediction_drift or {}).get("parts") or {}).items():
        put(f"prediction_drift.{part}", entry.get("value"))
    put("multivariate_auc", report.multivariate.get("auc"))
    kind = report.performance.get("kind", "none")
    for metric, value in (report.performance.get("metrics") or {}).items():
        put(f"perf.{kind}.{metric}", value)
    return out


def log_window(spec: Any, report: Any, folder: Store) -> dict[str, Any]:
    """Log one checked window (its files in ``folder``) to ``spec.tracking.mlflow_uri``.

    Returns ``{"mlflow_uri", "mlflow_run_id"}``, or ``{"mlflow_uri", "error"}`` when it could not be logged.
    """
    from raypipe.register.mlflow import artifact_location, experiment_of, export_run

    uri = spec.tracking.mlflow_uri
    tags = {"raypipe.kind": "monitor", "raypipe.pipeline": report.pipeline, "raypipe.version": str(report.version),
            "raypipe.status": report.status, "raypipe.input": report.input, "raypipe.drifted": ",".join(report.drifted),
            "raypipe.performance_below_gate": str(report.performance_below_gate).lower(),
            "raypipe.performance_kind": str(report.performance.get("kind", "none")),
            "raypipe.report_dir": report.report_dir}
    try:
        artifacts = {f: folder.read_bytes(f) for f in folder.walk_files() if f != MARKER}
        mlflow_run = export_run(uri, experiment=experiment_of(spec), run_id=report.window_id, id_tag="raypipe.window_id",
                                run_name=f"monitor {report.window_id}",
                                params={"drift": spec.redacted()["monitor"]["drift"]},
                                metrics=window_metrics(report), tags=tags, artifacts=artifacts,
                                artifact_location=artifact_location(spec))
    except Exception as exc:  # noqa: BLE001 - tracking never fails the check
        log.warning("monitor window %s: MLflow logging to %r failed: %s: %s", report.window_id, uri,
                    type(exc).__name__, exc)
        return {"mlflow_uri": uri, "error": f"{type(exc).__name__}: {exc}"}
    return {"mlflow_uri": uri, "mlflow_run_id": mlflow_run}
