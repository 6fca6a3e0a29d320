"""One window checked against one version: validation, drift, prediction drift, multivariate, performance.

:func:`check_window` takes a Ray dataset (a batch file read by raypipe's file reading, or, later,
a window of the prediction log: the log's rows hold the request's input columns, and ``__``
columns are ignored here; the caller keeps the rows one version answered, by ``__version``) and
returns a :class:`MonitorReport`. The version's answers are the window's own when it carries them
(a log window's logged answers, as ``__s*`` score columns: what was served); a batch file has none,
so the version scores its rows (``rescored_rows`` says how many rows were scored here). The report
and its pictures are kept under ``<storage>/monitor/<pipeline>/<window-id>/``, and, with
``tracking.mlflow_uri`` set, logged as an MLflow run (:mod:`raypipe.monitor.tracking`).
"""
from __future__ import annotations

import hashlib
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from raypipe.errors import DataValidationError
from raypipe.monitor.domain import domain_classifier
from raypipe.monitor.drift import decide_column
from raypipe.monitor.performance import estimated, measured
from raypipe.monitor.reference import Reference, build_plan
from raypipe.monitor.window import count_window
from raypipe.rowchecks import null_findings
from raypipe.schema import feature_columns
from raypipe.spec import Spec
from raypipe.store import Store

SAMPLE_ROWS = 5000  # window rows the domain classifier sees (the reference sample holds as many)


class ColumnDrift(BaseModel):
    """One column's drift: the deciding statistic against its threshold, and the other statistics."""

    model_config = {"extra": "allow"}
    column: str
    kind: str
    statistic: str
    value: float
    threshold: float
    drifted: bool | None  # None: not enough data to decide
    reasons: list[str] = Field(default_factory=list)
    null_rate: float
    null_rate_change: float


class MonitorReport(BaseModel):
    """The answer of ``raypipe monitor`` / :func:`raypipe.monitor`."""

    pipeline: str
    version: int
    window_id: str
    input: str
    status: Literal["ok", "drift", "not_enough_data"]
    rows: int
    valid_rows: int
    invalid_rows: int
    min_rows: int
    method: str
    drifted: list[str]
    columns: dict[str, ColumnDrift]
    prediction_drift: dict[str, Any] | None
    multivariate: dict[str, Any]
    performance: dict[str, Any]
    performance_below_gate: bool
    rescored_rows: int = 0  # valid rows the version scored here: no logged answer (all rows of a batch file)
    report_dir: str
    copied_to: str | None = None
    seconds: float
    # tracking.mlflow_uri set: {"mlflow_uri", "mlflow_run_id"} of the window's MLflow run, or {"mlflow_uri", "error"}
    # when it could not be logged (the check itself stands; see raypipe.monitor.tracking)
    tracking: dict[str, Any] | None = None

    @property
    def alarm(self) -> bool:
        """Drift, or performance under the gate's limits: what makes ``raypipe monitor`` exit 5."""
        return self.status == "drift" or self.performance_below_gate

    def summary(self) -> dict[str, Any]:
        """The ``--json`` line: rows, drifted columns, per column ``{statistic, value, threshold, drifted}``, ..."""
        return {
            "pipeline": self.pipeline, "version": self.version, "window_id": self.window_id, "status": self.status,
            "rows": self.rows, "valid_rows": self.valid_rows, "drifted": self.drifted,
            "columns": {c: {"statistic": e.statistic, "value": e.value, "threshold": e.threshold, "drifted": e.drifted}
                        for c, e in self.columns.items()},
            "prediction_drift": None if self.prediction_drift is None else {
                "drifted": self.prediction_drift["drifted"],
                **{k: {"statistic": p["statistic"], "value": p["value"], "threshold": p["threshold"]}
                   for k, p in self.prediction_drift["parts"].items()}},
            "multivariate": {k: self.multivariate.get(k) for k in ("auc", "threshold", "drifted", "top_features")},
            "performance": {k: self.performance.get(k) for k in ("kind", "metrics", "trustworthy", "below_gate")
                            if k in self.performance},
            "report": self.report_dir,
            **({"tracking": self.tracking} if self.tracking is not None else {}),
        }


def prediction_drift_of(plan: dict[str, Any], doc: dict[str, Any], cfg: Any, enough: bool) -> dict[str, Any] | None:
    """The version's answers (classes, clusters, flags or values) and its score against the test split's.

    Classes, clusters and flags by ``method`` against ``threshold`` like any categorical column; the
    score (and a regressor's value) by the Wasserstein distance in the test split's standard deviations
    against ``prediction_threshold``. PSI over the score's deciles barely moves when a classifier's
    rare positive class grows: on the transactions model, ``drift: 0.5`` took the predicted fraud rate
    from 5.7 % to 9.2 % and the mean score up by half, yet PSI only to 0.03 (undrifted 1,000-row
    windows reach 0.03 too); the mean shift is 0.23 standard deviations (undrifted: at most 0.08).
    Each part keeps the reference's and the window's counts (``ref_counts``, ``counts``).
    """
    parts = {}
    numeric_cfg = cfg.model_copy(update={"method": "wasserstein", "threshold": cfg.prediction_threshold,
                                         "per_column": {}})
    for key in ("answer", "score"):
        ref = plan.get(key)
        if not ref or key not in doc:
            continue
        if ref["kind"] == "numeric":
            col = {"kind": "numeric", "edges": ref["edges"], "ref_counts": ref["counts"], "ref_means": ref["means"],
                   "ref_std": ref.get("std")}
        else:
            col = {"kind": "categorical", "values": ref["values"], "ref_counts": [*ref["counts"], ref.get("rest", 0)]}
        part = {**doc[key], "nulls": 0, "unseen": doc[key].get("unseen", 0)}
        entry = decide_column(f"__{key}", col, part, 1, numeric_cfg if ref["kind"] == "numeric" else cfg, enough)
        parts[key] = {**entry, "ref_counts": col["ref_counts"], "counts": doc[key]["counts"]}
    if not parts:
        return None
    flags = [p["drifted"] for p in parts.values()]
    return {"drifted": None if not enough else any(flags), "parts": parts}


def _source(plan: dict[str, Any], name: str) -> str:
    """The input column a monitored column reads: itself, or a datetime part's date column."""
    return (plan["columns"][name].get("date") or {}).get("column", name)


def _validate(plan: dict[str, Any], present: list[str], doc: dict[str, Any] | None, spec: Spec) -> None:
    """Raise what makes the window itself unusable, by the validate stage's rules: a feature column
    missing, more missing values in a column than ``validate.max_missing_fraction`` (over the valid
    rows), more invalid rows than that share, or any invalid row under ``on_invalid_rows: fail``."""
    schema = plan["schema"]
    features = feature_columns(schema)  # ids and the target may be absent from a window
    problems = [f"column {c!r} is missing from the window (the version was trained with it, as "
                f"{schema['columns'][c]['type']}); add it to the input" for c in features if c not in present]
    if doc is not None:
        limit = spec.validate_.max_missing_fraction
        needed = {**schema, "columns": {c: schema["columns"][c] for c in features}}
        stats = {"rows": doc["valid"], "nulls": {_source(plan, c): p["nulls"] for c, p in doc["columns"].items()}}
        problems += [f["message"] for f in null_findings(stats, needed, limit, "window")]
        share = doc["invalid"] / doc["rows"] if doc["rows"] else 0.0
        reasons = "; ".join(f"{r} ({n:,})" for r, n in sorted(doc["reasons"].items(), key=lambda kv: -kv[1]))
        if share > limit:
            problems.append(f"window: {doc['invalid']:,} of {doc['rows']:,} rows ({share:.1%}) are invalid > "
                            f"validate.max_missing_fraction={limit:g}: {reasons}")
        elif doc["invalid"] and spec.validate_.on_invalid_rows == "fail":
            problems.append(f"window: {doc['invalid']:,} row(s) invalid (validate.on_invalid_rows: fail): {reasons}")
    if problems:
        raise DataValidationError(problems)


def check_per_column(cfg: Any, plan: dict[str, Any]) -> None:
    """``monitor.drift.per_column`` may name only monitored columns: a typo would silently keep the default.

    A datetime column may be named itself (both its parts) or by part (``<column>:weekday``).
    """
    known = set(plan["columns"]) | {col["date"]["column"] for col in plan["columns"].values() if col.get("date")}
    unknown = sorted(set(cfg.per_column) - known)
    if unknown:
        from raypipe.errors import SpecError

        raise SpecError(f"monitor.drift.per_column: {unknown} are not feature columns of the monitored version; "
                        f"use some of {sorted(known)}")


def window_id(version: int, input: str) -> str:
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-v{version}-{hashlib.sha256(input.encode()).hexdigest()[:8]}"


def check_window(spec: Spec, ref: Reference, ds: Any, *, input: str, model: dict[str, Any],
                 report_dir: str | Path | None = None, rows: int | None = None) -> MonitorReport:
    """Check the rows of ``ds`` against ``ref`` (the version that answered them).

    ``rows``: the number of rows of ``ds`` when the caller knows it (a log window counts them by
    version in a pass over three columns), which saves a pass over the whole window.

    Raises:
        DataValidationError: the window lacks a column of the version's schema, has more missing or
            invalid values than ``validate.max_missing_fraction`` allows, or invalid rows under
            ``validate.on_invalid_rows: fail``.
    """
    t0 = time.perf_counter()
    cfg = spec.monitor.drift
    plan = build_plan(ref)
    check_per_column(cfg, plan)
    present = [c for c in ds.schema().names if not c.startswith("__")]
    _validate(plan, present, None, spec)
    n = ds.count() if rows is None else rows
    feats = ref.schema.get("features", {})
    sample_cols = [c for c in [*feats.get("numeric", []), *feats.get("categorical", [])] if c in present]
    sample = {"columns": sample_cols, "seed": spec.data.split.seed, "rows": SAMPLE_ROWS,
              "fraction": min(1.0, 3.0 * SAMPLE_ROWS / max(n, 1))}
    doc, window_sample, labelled = count_window(ds, plan, model, sample)
    _validate(plan, present, doc, spec)
    valid = doc["valid"]
    enough = valid >= cfg.min_rows
    columns = {c: ColumnDrift(**decide_column(c, plan["columns"][c], part, valid, cfg, enough))
               for c, part in doc["columns"].items()}
    prediction = prediction_drift_of(plan, doc, cfg, enough)
    multivariate = domain_classifier(ref.sample, window_sample, feats.get("numeric", []), feats.get("categorical", []),
                                     cfg.multivariate_auc, seed=spec.data.split.seed)
    if not enough:
        multivariate["drifted"] = None
    version_test = ref.metrics.get("test") or {}
    if len(labelled):
        performance = measured(plan, labelled, version_test, spec.evaluate.gate)
    else:
        performance = estimated(plan, doc, version_test, spec.evaluate.gate, spec.monitor.max_calibration_error) \
            or {"kind": "none", "note": "no labels in the window, and no estimate for this task"}
    drifted = [c for c, e in columns.items() if e.drifted]
    any_drift = bool(drifted) or bool(prediction and prediction["drifted"]) or bool(multivariate.get("drifted"))
    status = "not_enough_data" if not enough else "drift" if any_drift else "ok"
    wid = window_id(ref.version, input)
    store = Store(spec.storage).sub("monitor", spec.name)
    report = MonitorReport(
        pipeline=spec.name, version=ref.version, window_id=wid, input=input, status=status, rows=doc["rows"],
        valid_rows=valid, invalid_rows=doc["invalid"], min_rows=cfg.min_rows, method=cfg.method, drifted=drifted,
        columns=columns, prediction_drift=prediction, multivariate=multivariate, performance=performance,
        performance_below_gate=bool(enough and performance.get("below_gate")), rescored_rows=doc.get("rescored", 0),
        report_dir=store.full_uri(wid), seconds=0.0)
    report.seconds = round(time.perf_counter() - t0, 3)
    _write(store, wid, report, plan, doc)
    if spec.tracking.mlflow_uri:
        from raypipe.monitor.tracking import log_window

        report.tracking = log_window(spec, report, store.sub(wid))
        store.write_json(f"{wid}/report.json", report.model_dump(mode="json"))  # with the MLflow run (or the error)
    store.complete_artifact(wid, {"version": report.version, "status": report.status})
    if report_dir is not None:
        dest = Path(report_dir)
        if store.is_local:
            shutil.copytree(store.path(wid), dest, dirs_exist_ok=True)
        else:
            for f in store.walk_files(wid):
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                (dest / f).write_bytes(store.read_bytes(wid, f))
        report.copied_to = str(dest)
    return report


def _write(store: Store, wid: str, report: MonitorReport, plan: dict[str, Any], doc: dict[str, Any]) -> None:
    from raypipe.monitor.report import performance_history, write_report

    out = store.sub(wid)
    data = report.model_dump(mode="json")
    write_report(out, data, plan, doc, history=performance_history(store, data))
    out.write_json("report.json", data)
