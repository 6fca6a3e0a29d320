"""Labels that arrive late, joined to the prediction log and stored beside it.

A label names the answer it belongs to by the request id the response returned, or by
the value of one of the spec's ``data.id_columns`` (every logged answer for that value
gets it). Three rules keep the stored labels trustworthy:

- a label whose id is not in the log is *unknown*: counted and reported (the first ids
  listed), not stored. The log is written every ``flush_seconds``, so a label sent for an
  answer younger than that may be unknown: send it again later;
- the first label of an id wins. The same label again is a *duplicate* (not stored twice);
  a different one is a *conflict*, reported with its id and never stored;
- labels are checked before anything is stored: a classification label must be one of
  the version's classes, a regression label a finite number, an anomaly label a boolean
  (or 0/1). A bad label is a :class:`~raypipe.errors.DataValidationError` naming its row.

Finding ids is cheapest for ``raypipe predict``'s ids (UUIDv7: the hour they were made
picks the log folder, :func:`raypipe.predlog.request_id_time`). The endpoint's ids are
Serve's (the client's ``X-Request-ID`` or a UUID4 Serve made); they and id-column values
are looked up in that one column of every log file (parquet column projection and a
pushed-down ``isin`` filter, not a full read).
"""
from __future__ import annotations

import datetime as dt
import math
import posixpath
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import pyarrow as pa

from raypipe import predlog
from raypipe.errors import DataValidationError
from raypipe.store import Store

LISTED = 20  # ids listed per kind in a report


@dataclass
class FeedbackReport:
    """What became of a batch of labels. ``rows = matched + unknown``; ``matched = stored + duplicates + conflicts``."""

    rows: int = 0
    matched: int = 0
    unknown: int = 0
    conflicts: int = 0
    duplicates: int = 0
    stored: int = 0
    unknown_ids: list[str] = field(default_factory=list)
    conflict_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise_labels(values: Sequence[Any], task: str, classes: Optional[list[str]] = None,
                     what: str = "label") -> list[Any]:
    """Labels in the log's label type for ``task`` (see :data:`raypipe.predlog.LABEL_TYPES`).

    Raises:
        DataValidationError: naming the first bad rows, what they hold and what is accepted.
    """
    if task not in predlog.LABEL_TYPES:
        raise DataValidationError([f"{what}: a {task} model has no labels to compare its answers with; "
                                   "feedback is for classification, regression and anomaly pipelines"])
    out: list[Any] = []
    bad: list[str] = []
    for i, v in enumerate(values):
        try:
            out.append(_label(v, task, classes))
        except ValueError as e:
            out.append(None)
            if len(bad) < 5:
                bad.append(f"{what} of row {i}: {e}")
    if bad:
        n = sum(o is None for o in out)
        raise DataValidationError(bad + ([f"... {n - len(bad)} more bad labels"] if n > len(bad) else []))
    return out


def _label(v: Any, task: str, classes: Optional[list[str]]) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise ValueError("missing; give a label for every row")
    if task == "classification":
        from raypipe.schema import label_strings

        text = label_strings([v])[0]
        if classes is not None and text not in classes:
            raise ValueError(f"{str(v)[:60]!r} is not a class of the served model (classes: {', '.join(classes[:20])})")
        return text
    if task == "regression":
        if isinstance(v, bool):
            raise ValueError(f"{v!r} is not a number; give the observed value")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{str(v)[:60]!r} is not a number; give the observed value") from None
        if not math.isfinite(x):
            raise ValueError(f"{x} is not a finite number")
        return x
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("1", "1.0", "true"):
        return True
    if text in ("0", "0.0", "false"):
        return False
    raise ValueError(f"{str(v)[:60]!r} is not an anomaly flag; give true/false or 1/0")


def record_feedback(store_or_uri: Store | str, pipeline: str, keys: Sequence[Any], labels: Sequence[Any], *,
                    task: str, classes: Optional[list[str]] = None, id_column: Optional[str] = None,
                    source: str = "file", writer_id: Optional[str] = None,
                    now: Optional[dt.datetime] = None) -> FeedbackReport:
    """Join labels to the log by request id (or ``id_column``'s values), then store the new ones.

    Args:
        keys: request ids, or values of ``id_column`` (compared as text: 17 and "17" are one id).
        labels: one per key, normalised with :func:`normalise_labels`.
        source: ``serve`` or ``file``, stored with each label.

    Returns:
        The report; see the module docstring for what each count means.
    """
    store = predlog.as_store(store_or_uri)
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} ids but {len(labels)} labels")
    values = normalise_labels(labels, task, classes)
    keys = [None if k is None else str(k) for k in keys]
    missing = [i for i, k in enumerate(keys) if not k]
    if missing:
        what = id_column or "request_id"
        raise DataValidationError([f"{what} of row {missing[0]}: missing ({len(missing)} rows without an id); "
                                   "give the id of the answer each label belongs to"])
    known = _known(store, pipeline, keys, id_column)
    report = FeedbackReport(rows=len(keys))
    existing = _stored_labels(store, pipeline, [k for k in dict.fromkeys(keys) if k in known], id_column)
    seen: dict[str, Any] = {}
    new_keys, new_labels = [], []
    for k, v in zip(keys, values):
        if k not in known:
            report.unknown += 1
            if len(report.unknown_ids) < LISTED and k not in report.unknown_ids:
                report.unknown_ids.append(k)
            continue
        report.matched += 1
        first = existing.get(k, seen.get(k, _ABSENT))
        if first is _ABSENT:
            seen[k] = v
            new_keys.append(k)
            new_labels.append(v)
        elif first == v:
            report.duplicates += 1
        else:
            report.conflicts += 1
            if len(report.conflict_ids) < LISTED and k not in report.conflict_ids:
                report.conflict_ids.append(k)
    if new_keys:
        _write(store, pipeline, new_keys, new_labels, task, id_column, source, writer_id, now)
    report.stored = len(new_keys)
    return report


_ABSENT = object()


def _known(store: Store, pipeline: str, keys: list[str], id_column: Optional[str]) -> set[str]:
    """The keys that appear in the log."""
    import pyarrow.compute as pc

    wanted = list(dict.fromkeys(keys))
    if id_column is not None:
        files = predlog.window_files(store, pipeline)
        _check_logged(store, files, id_column)
        t = predlog.read_log_table(store, pipeline, columns=[id_column],
                                   filter=pc.field(id_column).cast(pa.string()).isin(wanted), files=files)
        return set(t[id_column].cast(pa.string()).to_pylist())
    by_hour: dict[Optional[dt.datetime], list[str]] = {}
    for k in wanted:
        t = predlog.request_id_time(k)
        by_hour.setdefault(None if t is None else predlog.floor_hour(t), []).append(k)
    found: set[str] = set()
    for hour, ids in by_hour.items():
        # an id is made when the request arrives; its answer is logged within the request's time limit
        files = (predlog.window_files(store, pipeline) if hour is None else
                 predlog.window_files(store, pipeline, hour, hour + dt.timedelta(hours=2)))
        if files:
            t = predlog.read_log_table(store, pipeline, columns=[predlog.REQUEST_ID],
                                       filter=pc.field(predlog.REQUEST_ID).isin(ids), files=files)
            found.update(t[predlog.REQUEST_ID].to_pylist())
    return found


def _check_logged(store: Store, files: list[str], id_column: str) -> None:
    import pyarrow.parquet as pq

    for f in files[:1]:  # one file tells whether the log has the column
        if id_column not in pq.read_schema(f, filesystem=store.fs).names:
            raise DataValidationError([f"--id-column {id_column!r}: the prediction log has no such column "
                                       "(is it in monitor.log.exclude_columns?); join by request_id instead"])


def _stored_labels(store: Store, pipeline: str, keys: list[str], id_column: Optional[str]) -> dict[str, Any]:
    """The first stored label of each key (by ``received_at``)."""
    import pyarrow.compute as pc

    if not keys:
        return {}
    if id_column is None:
        flt = pc.field("request_id").isin(keys)
    else:
        flt = (pc.field("id_column") == id_column) & pc.field("id_value").isin(keys)
    t = predlog.read_feedback(store, pipeline, filter=flt)
    if t.num_rows == 0:
        return {}
    key = "request_id" if id_column is None else "id_value"
    t = t.sort_by([("received_at", "ascending")])
    out: dict[str, Any] = {}
    for k, v in zip(t[key].to_pylist(), t["label"].to_pylist()):
        out.setdefault(k, v)
    return out


def _write(store: Store, pipeline: str, keys: list[str], labels: list[Any], task: str, id_column: Optional[str],
           source: str, writer_id: Optional[str], now: Optional[dt.datetime]) -> str:
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    n = len(keys)
    by_id = id_column is not None
    table = pa.Table.from_arrays([
        pa.array([None] * n if by_id else keys, pa.string()),
        pa.array([id_column] * n if by_id else [None] * n, pa.string()),
        pa.array(keys if by_id else [None] * n, pa.string()),
        pa.array(labels, predlog.LABEL_TYPES[task]),
        pa.array([now] * n, predlog.TS_TYPE),
        pa.array([source] * n, pa.string()),
    ], schema=predlog.feedback_schema(task))
    folder = posixpath.join(predlog.FEEDBACK, pipeline, f"date={now:%Y-%m-%d}")
    return predlog.write_table(store, folder, writer_id or f"{source}-{uuid.uuid4().hex[:12]}", 0, table)
