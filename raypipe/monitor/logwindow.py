"""A window of the prediction log checked version by version, with the labels that arrived joined in.

Monitoring compares a window against the version that answered it: the log's ``__version``
splits the window, and each version's rows are checked against that version's reference by
:func:`raypipe.monitor.check.check_window`. Shadow rows are left out: they are the challenger's
answers to the champion's requests, so their inputs are the champion's rows a second time.

Labels (:func:`raypipe.predlog.read_feedback`, those received since the window opened: a label
never arrives before its answer) are few next to the window, so they are broadcast to the Ray Data
tasks as two small lookups (by ``__request_id``; by an id column's value as text when the label came
by ``--id-column``) that fill the version's target column. Rows with a label are then measured by
the evaluate metrics, the others estimated; the window itself never reaches the driver.

The version's answers are read from the log, not computed again: :func:`logged_scores` turns the
logged answer columns into the score matrix the checks take (``__s0``..``__s{k-1}``), so the
prediction drift, the performance estimate and the labelled rows' scores follow what the
endpoint actually returned. Only rows whose logged answer is missing are scored again.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from raypipe import predlog
from raypipe.errors import SpecError
from raypipe.monitor.window import score_columns

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ORDER = {"ok": 0, "not_enough_data": 0, "drift": 1}


def parse_duration(text: str, what: str = "--last") -> dt.timedelta:
    """``90s``, ``15m``, ``1h``, ``2d`` as a timedelta; a clear SpecError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise SpecError(f"{what}={text!r} is not a duration; give a positive number with a unit s, m, h or d "
                        f"(e.g. 30m, 1h, 7d)")
    return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def parse_time(text: str | dt.datetime, what: str) -> dt.datetime:
    """An ISO 8601 time (naive: UTC)."""
    if isinstance(text, dt.datetime):
        t = text
    else:
        try:
            t = dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(f"{what}={text!r} is not an ISO 8601 time; give e.g. 2026-12-06T13:00:00Z") from None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def window_bounds(last: Optional[str] = None, since: Optional[str | dt.datetime] = None,
                  until: Optional[str | dt.datetime] = None,
                  now: Optional[dt.datetime] = None) -> tuple[dt.datetime, dt.datetime]:
    """``[start, end)`` of a log window: the last ``last`` before now, or ``since`` .. ``until`` (default now)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if last is not None and since is not None:
        raise SpecError("give --last or --since/--until, not both")
    if last is not None:
        if until is not None:
            raise SpecError("give --last or --since/--until, not both")
        return now - parse_duration(last), now
    if since is None:
        raise SpecError("a log window needs --last (e.g. 1h) or --since (an ISO time)")
    start = parse_time(since, "--since")
    end = parse_time(until, "--until") if until is not None else now
    if end <= start:
        raise SpecError(f"--until={end.isoformat()} is not after --since={start.isoformat()}; swap them")
    return start, end


# --- labels ---------------------------------------------------------------------------
def label_lookups(store: Any, pipeline: str, start: dt.datetime) -> dict[str, Any]:
    """The labels received since ``start``: ``{"request": {id: label}, "ids": {column: {value: label}}}``."""
    import pyarrow.compute as pc

    t = predlog.read_feedback(store, pipeline, filter=pc.field("received_at") >= pa.scalar(start, predlog.TS_TYPE))
    by_request: dict[str, Any] = {}
    by_id: dict[str, dict[str, Any]] = {}
    if t.num_rows:
        for rid, col, val, label in zip(t["request_id"].to_pylist(), t["id_column"].to_pylist(),
                                        t["id_value"].to_pylist(), t["label"].to_pylist()):
            if label is None:
                continue
            if rid is not None:
                by_request.setdefault(rid, label)
            elif col is not None and val is not None:
                by_id.setdefault(col, {}).setdefault(val, label)
    return {"request": by_request, "ids": by_id}


def _lookup(keys: Any, table: dict[str, Any]) -> Any:
    import pyarrow.compute as pc

    idx = pc.index_in(keys, value_set=pa.array(list(table), pa.string()))
    return pc.take(pa.array(list(table.values())), idx)  # a key not in the table: null


def _join_labels(batch: pa.Table, target: str, labels: dict[str, Any]) -> pa.Table:
    """Fill ``target`` from the labels: by request id first, then by each id column's value as text
    (cast by Arrow as ``raypipe feedback`` compares them: an integer id 17 is "17")."""
    import pyarrow.compute as pc

    found = [_lookup(batch[predlog.REQUEST_ID], labels["request"])] if labels["request"] else []
    for col, values in labels["ids"].items():
        if col in batch.column_names and values:
            found.append(_lookup(pc.cast(batch[col], pa.string()), values))
    if not found:
        return batch
    column = found[0] if len(found) == 1 else pc.coalesce(*found)
    return batch.append_column(target, column)


def _keep(batch: pa.Table, version: int) -> pa.Table:
    import pyarrow.compute as pc

    mask = pc.and_(pc.equal(batch[predlog.VERSION], version), pc.not_equal(batch[predlog.ROLE], "shadow"))
    return batch.filter(mask)


def logged_scores(batch: pa.Table, task: str, classes: list[str] | None) -> pa.Table:
    """Add the logged answers as float64 columns ``__s0``..``__s{k-1}``: per row the matrix
    :meth:`raypipe.model.predictor.Predictor.scores` would give (what ``Task.decide`` and
    ``Task.drift_score`` take), so the check uses what was served instead of scoring again.

    classification: each class's probability from ``__scores`` (a map), in the order of the
    version's ``classes``; regression: ``__prediction``; clustering: ``__cluster``; anomaly:
    ``__anomaly_score``. A null (no answer logged, or a class missing from the map) stays null:
    :func:`raypipe.monitor.window.block_counts` scores those rows again.
    """
    import pyarrow.compute as pc

    if task == "classification":
        columns = [pc.map_lookup(batch[predlog.SCORES], pa.scalar(c, pa.string()), "first") for c in classes or []]
    else:
        name = {"regression": predlog.PREDICTION, "clustering": predlog.CLUSTER, "anomaly": predlog.ANOMALY_SCORE}[task]
        columns = [batch[name]]
    for name, values in zip(score_columns(task, classes), columns, strict=True):
        batch = batch.append_column(name, pc.cast(values, pa.float64()))
    return batch


def references_for(spec: Any, reg: Any) -> Any:
    """``version -> (Reference, model dict)``: what a check needs of a version, loaded once each.

    The version's model kind is checked against the spec's trusted factories first, as everywhere
    a model is loaded.
    """
    from raypipe.model.formats import check_trusted, trusted_factories
    from raypipe.monitor.reference import load_reference

    trusted = trusted_factories(spec)
    cache: dict[int, Any] = {}

    def get(v: int) -> Any:
        if v not in cache:
            ref = load_reference(reg, v)
            check_trusted(reg.version_store(v).read_json("model", "model.json")["kind"], trusted)
            cache[v] = (ref, {"uri": ref.model_uri, "key": ref.manifest_sha256, "features": ref.features,
                              "schema": ref.schema, "trusted": list(trusted)})
        return cache[v]
    return get


# --- the whole window -----------------------------------------------------------------
@dataclass
class WindowCheck:
    """Every version's report for one log window; ``raypipe monitor --last`` exits by the worst."""

    pipeline: str
    start: dt.datetime
    end: dt.datetime
    reports: list[Any] = field(default_factory=list)
    labels: int = 0

    @property
    def alarm(self) -> bool:
        return any(r.alarm for r in self.reports)

    @property
    def status(self) -> str:
        if not self.reports:
            return "not_enough_data"
        if any(r.alarm for r in self.reports):
            return "drift"
        return "ok" if any(r.status == "ok" for r in self.reports) else "not_enough_data"

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.reports)

    def summary(self) -> dict[str, Any]:
        """The ``--json`` line: the window, its status, and each version's summary."""
        return {"pipeline": self.pipeline, "window": {"start": self.start.isoformat(), "end": self.end.isoformat()},
                "status": self.status, "alarm": self.alarm, "rows": self.rows, "labels": self.labels,
                "versions": [r.version for r in self.reports], "reports": [r.summary() for r in self.reports]}


def window_versions(store: Any, pipeline: str, start: dt.datetime, end: dt.datetime) -> dict[int, int]:
    """Rows per version that answered (not as shadow) in the window: a pass over three columns only."""
    import ray.data

    files = predlog.window_files(store, pipeline, start, end)
    if not files:
        return {}
    ds = ray.data.read_parquet(files, filesystem=store.fs, partitioning=None,
                               columns=[predlog.VERSION, predlog.ROLE, predlog.TS])
    found = ds.map_batches(_answered_versions, fn_kwargs={"start": start, "end": end}, batch_format="pyarrow",
                           zero_copy_batch=True).take_all()
    rows: dict[int, int] = {}
    for r in found:
        rows[int(r[predlog.VERSION])] = rows.get(int(r[predlog.VERSION]), 0) + int(r["rows"])
    return dict(sorted(rows.items()))


def _answered_versions(batch: pa.Table, start: dt.datetime, end: dt.datetime) -> pa.Table:
    """Rows per version of a batch's rows in ``[start, end)`` that were not shadow answers."""
    import pyarrow.compute as pc

    ts = batch[predlog.TS]
    mask = pc.and_(pc.and_(pc.greater_equal(ts, pa.scalar(start, predlog.TS_TYPE)),
                           pc.less(ts, pa.scalar(end, predlog.TS_TYPE))),
                   pc.not_equal(batch[predlog.ROLE], "shadow"))
    counts = pc.value_counts(batch.filter(mask)[predlog.VERSION])
    return pa.table({predlog.VERSION: counts.field("values"), "rows": counts.field("counts").cast(pa.int64())})


def check_log_window(spec: Any, references: Any, start: dt.datetime, end: dt.datetime, *,
                     report_dir: Any = None) -> WindowCheck:
    """Check ``spec``'s log rows with ``start <= __ts < end``, each version against its own reference.

    ``references(version) -> (Reference, model dict)`` loads a version's reference and predictor
    description (the caller owns the registry). Each version's rows carry their logged answers as
    score columns (:func:`logged_scores`): the check counts what the endpoint answered.
    """
    from pathlib import Path

    from raypipe.monitor.check import check_window

    store = predlog.as_store(spec.storage)
    out = WindowCheck(pipeline=spec.name, start=start, end=end)
    versions = window_versions(store, spec.name, start, end)
    if not versions:
        return out
    ds = predlog.read_window(store, spec.name, start, end)
    labels = label_lookups(store, spec.name, start)
    out.labels = len(labels["request"]) + sum(len(v) for v in labels["ids"].values())
    name = f"log {start.isoformat()}..{end.isoformat()}"
    for v, rows in versions.items():
        ref, model = references(v)
        part = ds.map_batches(_keep, fn_kwargs={"version": v}, batch_format="pyarrow", zero_copy_batch=True)
        part = part.map_batches(logged_scores, fn_kwargs={"task": ref.predictions["task"],
                                                          "classes": ref.predictions.get("classes")},
                                batch_format="pyarrow", zero_copy_batch=True)
        target = (ref.schema.get("target") or {}).get("name")
        if target and out.labels:
            part = part.map_batches(_join_labels, fn_kwargs={"target": target, "labels": labels},
                                    batch_format="pyarrow", zero_copy_batch=True)
        dest = None if report_dir is None else Path(report_dir) / f"v{v}"
        out.reports.append(check_window(spec, ref, part, input=name, model=model, report_dir=dest, rows=rows))
    return out
