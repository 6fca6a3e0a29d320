"""The prediction log: every answer of the endpoint and of ``raypipe predict``, as parquet.

This module is the log's contract; the Serve replica, ``raypipe predict`` and ``raypipe stream`` write it, the
monitor and ``raypipe feedback`` read it. Names here are stable.

Layout (``<storage>`` is the spec's ``storage``: a local path or any ``pyarrow.fs`` URI)::

    <storage>/predictions/<pipeline>/date=YYYY-MM-DD/hour=HH/<writer-id>-<seq>.parquet
    <storage>/feedback/<pipeline>/date=YYYY-MM-DD/<writer-id>-<seq>.parquet

The folders are the UTC date and hour of ``__ts``. Each file is written under a temporary
name and renamed into place (:meth:`raypipe.store.Store.write_bytes`), so a reader sees
whole files only; names that do not end in ``.parquet`` (temporary files) are ignored.
A writer id is unique per process (a replica, a Ray Data task), ``seq`` counts its files.

Columns of a log file:

- the request's input columns as the request model parsed them (the feature and id
  columns of the version's schema), minus ``monitor.log.exclude_columns``, which are never
  written. Types follow the schema: number float64, integer int64, boolean bool, string /
  text / datetime string (as sent), image nested lists of float64;
- ``__request_id`` string: the id the response returned (``X-Request-ID`` header and
  ``request_id`` in the body: Serve's request id, the client's own or a UUID4 Serve made;
  ``raypipe predict``: a UUIDv7 per batch). A list body's rows are ``<request id>:<index>``,
  as each answer in the response's ``predictions`` says;
- ``__ts`` timestamp[us, tz=UTC]: when the answer was given;
- ``__version`` int64; ``__role`` string: ``champion``, ``canary`` (the challenger
  answered), ``shadow`` (the challenger scored the champion's request; never returned to
  the client) or, for ``raypipe predict`` of a version that is not the champion,
  ``challenger``;
- ``__source`` string: ``serve``, ``predict`` or ``stream`` (``raypipe stream``: one
  ``__request_id`` per micro-batch, ``<id>:<row>`` per message, as for ``predict``);
- the answer, by task: classification ``__prediction`` (string: the class label as text)
  and ``__scores`` (map<string, double>: class -> probability); regression ``__prediction``
  (double); clustering ``__cluster`` (int64); anomaly ``__is_anomaly`` (bool) and
  ``__anomaly_score`` (double).

Feedback files hold ``request_id`` (string; null when the label was joined by an id
column), ``id_column`` and ``id_value`` (string; null when joined by request id),
``label`` (classification string, regression double, anomaly bool), ``received_at``
(timestamp[us, tz=UTC]) and ``source`` (``serve`` or ``file``).
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import os
import posixpath
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.schema import feature_columns, label_value
from raypipe.store import Store

log = logging.getLogger("raypipe")

PREDICTIONS, FEEDBACK = "predictions", "feedback"
REQUEST_ID, TS, VERSION, ROLE, SOURCE = "__request_id", "__ts", "__version", "__role", "__source"
PREDICTION, SCORES, CLUSTER, IS_ANOMALY, ANOMALY_SCORE = (
    "__prediction", "__scores", "__cluster", "__is_anomaly", "__anomaly_score")
ROLES = ("champion", "canary", "shadow", "challenger")
TS_TYPE = pa.timestamp("us", tz="UTC")
META_TYPES = {REQUEST_ID: pa.string(), TS: TS_TYPE, VERSION: pa.int64(), ROLE: pa.string(), SOURCE: pa.string()}
ANSWER_TYPES: dict[str, dict[str, pa.DataType]] = {
    "classification": {PREDICTION: pa.string(), SCORES: pa.map_(pa.string(), pa.float64())},
    "regression": {PREDICTION: pa.float64()},
    "clustering": {CLUSTER: pa.int64()},
    "anomaly": {IS_ANOMALY: pa.bool_(), ANOMALY_SCORE: pa.float64()},
}
LABEL_TYPES = {"classification": pa.string(), "regression": pa.float64(), "anomaly": pa.bool_()}
FEEDBACK_SCHEMA = pa.schema([("request_id", pa.string()), ("id_column", pa.string()), ("id_value", pa.string()),
                             ("label", pa.null()), ("received_at", TS_TYPE), ("source", pa.string())])
_INPUT_TYPES = {"number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_(), "string": pa.string(),
                "text": pa.string(), "datetime": pa.string()}


def feedback_schema(task: str) -> pa.Schema:
    """The feedback file's schema for a task (the label's type is the task's)."""
    return FEEDBACK_SCHEMA.set(FEEDBACK_SCHEMA.get_field_index("label"), pa.field("label", LABEL_TYPES[task]))


# --- request ids ----------------------------------------------------------------------
def new_request_id() -> str:
    """A UUIDv7 (RFC 9562): random, and its first 48 bits are the Unix time in ms.

    Time-ordered ids keep parquet's min/max statistics useful, and :func:`request_id_time`
    reads the hour back, so feedback finds the log partition without scanning the log.
    """
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return str(uuid.UUID(int=value))


def request_id_time(request_id: str) -> Optional[dt.datetime]:
    """The time a :func:`new_request_id` id was made (list rows' ``:<index>`` ignored); None for other ids."""
    try:
        u = uuid.UUID(request_id.split(":", 1)[0])
    except ValueError:
        return None
    if u.version != 7:
        return None
    return dt.datetime.fromtimestamp((u.int >> 80) / 1000, tz=dt.timezone.utc)


def row_ids(request_id: str, n: int, many: bool) -> list[str]:
    """The log's ``__request_id`` of a request's rows: the id for one row object, ``id:i`` for a list."""
    return [f"{request_id}:{i}" for i in range(n)] if many else [request_id]


# --- the shape of a version's log rows -------------------------------------------------
def _input_type(meta: dict[str, Any]) -> pa.DataType:
    if meta["type"] == "image":
        t: pa.DataType = pa.float64()
        for _ in meta["shape"]:
            t = pa.list_(t)
        return t
    if meta["type"] == "audio":  # the decoded waveform, as the features saw it
        return pa.list_(pa.float32())
    return _INPUT_TYPES.get(meta["type"], pa.string())


class LogFormat:
    """How one version's requests and answers become log columns.

    Args:
        schema: the version's stored data schema (``schema.json``).
        task: ``classification``, ``regression``, ``clustering`` or ``anomaly``.
        exclude_columns: input columns never written.
    """

    def __init__(self, schema: dict[str, Any], task: str, exclude_columns: Iterable[str] = ()) -> None:
        self.task, self._schema = task, schema
        excluded = set(exclude_columns)
        self.excluded = sorted(excluded)
        names = feature_columns(schema) + [c for c in schema.get("id_columns", []) if c not in feature_columns(schema)]
        self.inputs = [(c, _input_type(schema["columns"][c])) for c in names if c not in excluded]
        target = schema.get("target") or {}
        self.classes: Optional[list[str]] = target.get("classes")
        # the JSON value an answer carries -> the class's text (1.0 and 1 both print as "1" there)
        self._class_text = {label_value(c, target.get("type", "string")): c for c in self.classes or []}
        self.schema = pa.schema([*self.inputs, *META_TYPES.items(), *ANSWER_TYPES[task].items()])

    def describe(self) -> dict[str, Any]:
        """What rebuilds this format (:meth:`from_description`): the crash spool writes it down."""
        return {"schema": self._schema, "task": self.task, "exclude_columns": self.excluded}

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> "LogFormat":
        return cls(desc["schema"], desc["task"], desc.get("exclude_columns", ()))

    def logged_inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        """A request row as the log keeps it: the logged input columns only (never an excluded one)."""
        return {name: row.get(name) for name, _ in self.inputs}

    @staticmethod
    def input_names(schema: dict[str, Any]) -> list[str]:
        """The input columns a request may carry (what ``exclude_columns`` may name)."""
        return feature_columns(schema) + list(schema.get("id_columns", []))

    def answers_from_records(self, answers: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """The endpoint's answer records (``Task.records``) as log columns."""
        if self.task == "classification":
            return {PREDICTION: [self._class_text.get(a["prediction"], str(a["prediction"])) for a in answers],
                    SCORES: [a["scores"] for a in answers]}
        if self.task == "regression":
            return {PREDICTION: [a["prediction"] for a in answers]}
        if self.task == "clustering":
            return {CLUSTER: [a["cluster"] for a in answers]}
        return {IS_ANOMALY: [a["is_anomaly"] for a in answers], ANOMALY_SCORE: [a["anomaly_score"] for a in answers]}

    def answers_from_columns(self, columns: dict[str, Any]) -> dict[str, Any]:
        """Batch inference's answer columns (``Task.columns``) as log columns."""
        if self.task == "classification":
            names = [f"score_{c}" for c in self.classes or []]
            scores = [dict(zip(self.classes or [], map(float, row))) for row in zip(*(columns[n] for n in names))]
            return {PREDICTION: [str(p) for p in columns["prediction"]], SCORES: scores}
        if self.task == "regression":
            return {PREDICTION: columns["prediction"]}
        if self.task == "clustering":
            return {CLUSTER: columns["cluster"]}
        return {IS_ANOMALY: columns["is_anomaly"], ANOMALY_SCORE: columns["anomaly_score"]}

    def table(self, inputs: dict[str, Any], answers: dict[str, Any], request_ids: Sequence[str],
              ts: Sequence[Any] | Any, version: int, role: str | Sequence[str], source: str) -> pa.Table:
        """One log table: ``inputs`` by column name (missing columns are null), answers as log columns.

        ``ts``: datetimes or epoch seconds per row (or one for all rows); ``role``: one or per row.
        """
        n = len(request_ids)
        arrays = []
        for name, typ in self.inputs:
            values = inputs.get(name)
            arrays.append(pa.nulls(n, typ) if values is None else _typed(values, typ))
        if not isinstance(ts, (list, tuple)) and not hasattr(ts, "__len__"):
            ts = [ts] * n
        arrays += [pa.array(list(request_ids), pa.string()), _timestamps(ts), pa.array([version] * n, pa.int64()),
                   pa.array([role] * n if isinstance(role, str) else list(role), pa.string()),
                   pa.array([source] * n, pa.string())]
        for name, typ in ANSWER_TYPES[self.task].items():
            arrays.append(pa.array(_pylist(answers[name]), type=typ, from_pandas=True))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _typed(values: Any, typ: pa.DataType) -> pa.Array:
    """A column in the log's type; a batch file's column of another type (ints read as floats) is cast."""
    try:
        return pa.array(_pylist(values), type=typ, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(_pylist(values), from_pandas=True).cast(typ, safe=False)


def _pylist(values: Any) -> Any:
    if hasattr(values, "to_numpy") and hasattr(values, "dtype") and values.dtype == object:
        return values.to_numpy()
    return values


def _timestamps(ts: Sequence[Any]) -> pa.Array:
    if ts and isinstance(ts[0], (int, float)):
        return pa.array([int(t * 1_000_000) for t in ts], pa.int64()).cast(TS_TYPE)
    return pa.array(list(ts), TS_TYPE)


# --- partitions and reading ------------------------------------------------------------
def as_store(store_or_uri: Store | str | os.PathLike[str]) -> Store:
    return store_or_uri if isinstance(store_or_uri, Store) else Store(store_or_uri)


def partition(ts: dt.datetime) -> str:
    """The folder of a UTC time: ``date=YYYY-MM-DD/hour=HH``."""
    ts = ts.astimezone(dt.timezone.utc)
    return f"date={ts:%Y-%m-%d}/hour={ts:%H}"


@dataclass(frozen=True)
class Partition:
    """One hour of the log: its folder (relative to the pipeline's log) and the hour it starts."""

    path: str
    start: dt.datetime


def _utc(t: Optional[dt.datetime]) -> Optional[dt.datetime]:
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def floor_hour(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=0, second=0, microsecond=0)


MAX_PROBED_HOURS = 24 * 7  # a window up to a week: its hour folders are named, not listed


def list_partitions(store_or_uri: Store | str, pipeline: str, start: Optional[dt.datetime] = None,
                    end: Optional[dt.datetime] = None) -> list[Partition]:
    """The hour folders of ``pipeline``'s log that may hold rows with ``start <= __ts < end``, oldest first.

    Naive datetimes are taken as UTC. A window of up to a week looks up its hours' folders
    by name (one existence check each); an open or longer window lists the date folders,
    then the hour folders of the dates in range. Files are never listed here.
    """
    store = as_store(store_or_uri).sub(PREDICTIONS, pipeline)
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None:
        if end <= start:
            return []
        hours = int((floor_hour(end - dt.timedelta(microseconds=1)) - floor_hour(start)).total_seconds() // 3600) + 1
        if hours <= MAX_PROBED_HOURS:
            out = []
            for k in range(hours):
                h = floor_hour(start) + dt.timedelta(hours=k)
                if store.exists(partition(h)):
                    out.append(Partition(partition(h), h))
            return out
    out = []
    for d in store.listdir():
        if not d.startswith("date="):
            continue
        try:
            day = dt.datetime.strptime(d[5:], "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        if (end is not None and day >= end) or (start is not None and day + dt.timedelta(days=1) <= floor_hour(start)):
            continue
        for h in store.listdir(d):
            if not h.startswith("hour=") or not h[5:].isdigit():
                continue
            t = day + dt.timedelta(hours=int(h[5:]))
            if (start is None or t + dt.timedelta(hours=1) > start) and (end is None or t < end):
                out.append(Partition(f"{d}/{h}", t))
    return sorted(out, key=lambda p: p.start)


def _parquet_files(store: Store, folder: str) -> list[str]:
    return [posixpath.join(folder, f) for f in store.listdir(folder) if f.endswith(".parquet") and f[0] not in "._"]


def window_files(store_or_uri: Store | str, pipeline: str, start: Optional[dt.datetime] = None,
                 end: Optional[dt.datetime] = None) -> list[str]:
    """Full paths (no scheme) of the log files in the window's hour folders."""
    store = as_store(store_or_uri).sub(PREDICTIONS, pipeline)
    return [store.path(f) for p in list_partitions(store_or_uri, pipeline, start, end) for f in _parquet_files(store, p.path)]


def read_window(store_or_uri: Store | str, pipeline: str, start: Optional[dt.datetime] = None,
                end: Optional[dt.datetime] = None) -> Any:
    """The log rows with ``start <= __ts < end`` as a lazy ``ray.data.Dataset`` (None: unbounded).

    Only the window's hour folders are read; rows of the first and last hour outside the
    window are filtered out by the Ray Data tasks. An empty window is an empty dataset.
    """
    import ray.data

    store = as_store(store_or_uri)
    files = window_files(store, pipeline, start, end)
    if not files:
        return ray.data.from_items([])
    ds = ray.data.read_parquet(files, filesystem=store.fs, partitioning=None)
    start, end = _utc(start), _utc(end)
    if start is None and end is None:
        return ds
    return ds.map_batches(_in_window, fn_kwargs={"start": start, "end": end}, batch_format="pyarrow", zero_copy_batch=True)


def _in_window(batch: pa.Table, start: Optional[dt.datetime], end: Optional[dt.datetime]) -> pa.Table:
    import pyarrow.compute as pc

    mask = None
    if start is not None:
        mask = pc.greater_equal(batch[TS], pa.scalar(start, TS_TYPE))
    if end is not None:
        before = pc.less(batch[TS], pa.scalar(end, TS_TYPE))
        mask = before if mask is None else pc.and_(mask, before)
    return batch.filter(mask)


def read_log_table(store_or_uri: Store | str, pipeline: str, columns: Optional[list[str]] = None,
                   filter: Any = None, files: Optional[list[str]] = None) -> pa.Table:
    """Log rows read in this process with ``pyarrow.dataset`` (projection and filter pushed down)."""
    import pyarrow.dataset as pads

    store = as_store(store_or_uri)
    paths = window_files(store, pipeline) if files is None else files
    if not paths:
        return pa.table({c: pa.array([], META_TYPES.get(c, pa.string())) for c in columns or [REQUEST_ID]})
    return pads.dataset(paths, filesystem=store.fs, format="parquet").to_table(columns=columns, filter=filter)


def read_feedback(store_or_uri: Store | str, pipeline: str, columns: Optional[list[str]] = None,
                  filter: Any = None) -> pa.Table:
    """Every label stored for ``pipeline`` (see the module docstring for its columns); an empty table if none."""
    import pyarrow.dataset as pads

    store = as_store(store_or_uri).sub(FEEDBACK, pipeline)
    paths = [store.path(f) for f in store.walk_files() if f.endswith(".parquet") and not posixpath.basename(f)[0] in "._"]
    if not paths:
        names = columns or FEEDBACK_SCHEMA.names
        return pa.table({n: pa.array([], FEEDBACK_SCHEMA.field(n).type if n != "label" else pa.string())
                         for n in names})
    return pads.dataset(paths, filesystem=store.fs, format="parquet").to_table(columns=columns, filter=filter)


def write_table(store: Store, rel_folder: str, writer_id: str, seq: int, table: pa.Table,
                metadata: Optional[dict[str, str]] = None) -> str:
    """Write one parquet file atomically (temporary name, then a rename); returns its path under ``store``."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    rel = posixpath.join(rel_folder, f"{writer_id}-{seq:06d}.parquet")
    store.write_bytes(rel, buf.getvalue())
    return rel


def write_log(store_or_uri: Store | str, pipeline: str, table: pa.Table, writer_id: str, seq: int = 0) -> list[str]:
    """Write log rows, one file per hour folder of their ``__ts``; returns the files' paths under the store."""
    import pyarrow.compute as pc

    store = as_store(store_or_uri)
    if table.num_rows == 0:
        return []
    hours = pc.floor_temporal(table[TS], unit="hour")
    out = []
    for k, h in enumerate(pc.unique(hours).to_pylist()):
        part = table.filter(pc.equal(hours, pa.scalar(h, TS_TYPE)))
        out.append(write_table(store, posixpath.join(PREDICTIONS, pipeline, partition(h)), writer_id, seq + k, part))
    return out


# --- the replica's writer --------------------------------------------------------------
Entry = tuple  # (request id, many, ts (epoch s), version, role, rows, answers, LogFormat)


class PredictionLogWriter:
    """Buffers a replica's log rows in memory and writes them from a background thread.

    ``add`` never waits on storage: under a lock it appends the entries to the buffer and, as
    JSON lines, to the writer's crash spool on local disk (:mod:`raypipe.spool`: one unbuffered
    ``os.write``), and it refuses (drops and counts) a request's rows when more than
    ``max_buffer_rows`` are held, the rows of a write in progress included. The thread writes
    when ``flush_rows`` rows are held or the oldest is ``flush_seconds`` old; :meth:`close`
    writes what is left. A killed process loses nothing the spool holds: the next writer of the
    pipeline to start (on the same node, for remote storage) writes a dead writer's spool and
    counts its rows as ``recovered``. Without a spool (``spool=False``, or its folder cannot be
    made) a killed process loses what it held: at most ``max_buffer_rows`` rows, and ``held``
    (reported through ``on_count``) says how many.

    Args:
        store_or_uri: the spec's storage.
        pipeline: the pipeline name.
        writer_id: unique per process (file names are ``<writer_id>-<seq>.parquet``; ``seq`` is
            the buffer's number x 1000 + the file's number within it, the same when a later writer
            recovers the buffer from the spool).
        on_count: called from the writer thread with ``(state, rows)``; states ``buffered``,
            ``written``, ``dropped`` (buffer full or writer closed), ``failed`` (a write that
            raised; with a spool its rows stay there for the next writer) and ``recovered`` (rows
            of dead writers' spools written by this one), and ``held`` (rows not yet written, a
            level rather than a count).
        spool: keep the crash spool.
    """

    def __init__(self, store_or_uri: Store | str, pipeline: str, *, writer_id: str, flush_rows: int = 2000,
                 flush_seconds: float = 10.0, max_buffer_rows: int = 20000,
                 on_count: Optional[Callable[[str, int], None]] = None, spool: bool = True) -> None:
        self.store, self.pipeline, self.writer_id = as_store(store_or_uri), pipeline, writer_id
        self.flush_rows, self.flush_seconds, self.max_buffer_rows = flush_rows, flush_seconds, max_buffer_rows
        self.on_count = on_count or (lambda state, n: None)
        self._lock = threading.Condition(threading.Lock())
        self._entries: list[Entry] = []
        self._rows = 0  # rows in _entries
        self._pending = 0  # rows in _entries + rows being written
        self._oldest: Optional[float] = None
        self._counts = {"buffered": 0, "dropped": 0}  # not yet reported
        self._flush_requested = 0
        self._flushed = 0
        self._closed = False
        self._batch = 0  # buffers taken to be written (the spool's segment numbers follow it)
        self.totals = {"buffered": 0, "written": 0, "dropped": 0, "failed": 0, "recovered": 0}
        self._spool = None
        self._spool_root = None
        if spool:
            from raypipe.spool import Spool, spool_root

            try:
                self._spool_root = spool_root(self.store, pipeline)
                self._spool = Spool(self._spool_root, writer_id)
            except OSError as e:
                log.warning("prediction log: no crash spool (%s); a killed replica loses its unwritten rows", e)
        self._thread = threading.Thread(target=self._run, name=f"raypipe-predlog-{writer_id}", daemon=True)
        self._thread.start()

    def add(self, entries: list[Entry], rows: int) -> bool:
        """Hold ``entries`` (``rows`` rows in all) for writing; False when they were dropped."""
        with self._lock:
            if self._closed or self._pending + rows > self.max_buffer_rows:
                self._counts["dropped"] += rows
                return False
            if self._spool is not None:
                try:
                    self._spool.append(entries)
                except (OSError, TypeError, ValueError):  # a full local disk, an answer JSON cannot hold
                    log.exception("prediction log: the crash spool failed; going on without it")
                    self._spool = None
            self._entries.extend(entries)
            self._rows += rows
            self._pending += rows
            self._counts["buffered"] += rows
            if self._oldest is None:
                self._oldest = time.monotonic()
            if self._rows >= self.flush_rows:
                self._lock.notify()
        return True

    def flush(self, timeout: float = 60.0) -> None:
        """Write what is held now, and wait until it is written."""
        with self._lock:
            self._flush_requested += 1
            wanted = self._flush_requested
            self._lock.notify()
            self._lock.wait_for(lambda: self._flushed >= wanted or not self._thread.is_alive(), timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Write what is held and stop the thread; later ``add`` calls drop their rows. Idempotent."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout)

    @property
    def held(self) -> int:
        return self._pending

    def status(self) -> dict[str, int]:
        """Rows buffered, written, dropped, failed and recovered so far (counts the thread has not reported yet
        included), and rows held now."""
        with self._lock:
            out = {k: v + self._counts.get(k, 0) for k, v in self.totals.items()}
            return {**out, "held": self._pending}

    def _due(self) -> bool:
        if self._closed or self._flush_requested > self._flushed or self._rows >= self.flush_rows:
            return True
        return self._oldest is not None and time.monotonic() - self._oldest >= self.flush_seconds

    def _recover(self) -> None:
        """Write the spools of this pipeline's dead writers (see :mod:`raypipe.spool`)."""
        from raypipe.spool import recover

        if self._spool_root is None:
            return
        try:
            n = recover(self._spool_root, lambda wid, batch, entries: write_entries(
                self.store, self.pipeline, wid, batch, entries), LogFormat.from_description, skip=self.writer_id)
        except Exception:  # never into serving
            log.exception("prediction log: recovering dead writers' spools failed")
            return
        if n:
            log.info("prediction log: %d rows recovered from dead writers' spools", n)
            self.totals["recovered"] += n
            self.on_count("recovered", n)

    def _run(self) -> None:
        self._recover()
        while True:
            with self._lock:
                # wakes at least once a second, so counts are reported even while nothing is due
                batch = None
                if self._lock.wait_for(self._due, timeout=min(1.0, self.flush_seconds)):
                    entries, self._entries, rows, self._rows, self._oldest = self._entries, [], self._rows, 0, None
                    if entries:
                        segment = self._spool.rotate() if self._spool is not None else None
                        batch = self._batch if segment is None else segment
                        self._batch = batch + 1
                else:
                    entries, rows = [], 0
                counts, self._counts = self._counts, {"buffered": 0, "dropped": 0}
                for state, n in counts.items():
                    self.totals[state] += n
                wanted, closing = self._flush_requested, self._closed
            for state, n in counts.items():
                if n:
                    self.on_count(state, n)
            if entries:
                ok = self._write(entries, rows, batch)
            with self._lock:
                if entries and self._spool is not None and batch is not None:
                    self._spool.written(batch, ok)
                self._pending -= rows
                self._flushed = max(self._flushed, wanted)
                held = self._pending
                self._lock.notify_all()
            self.on_count("held", held)
            if closing and not self._entries:
                with self._lock:
                    if self._spool is not None:
                        self._spool.close()
                        self._spool = None
                return

    def _write(self, entries: list[Entry], rows: int, batch: int) -> bool:
        try:
            write_entries(self.store, self.pipeline, self.writer_id, batch, entries)
        except Exception:  # storage down, a full disk: counted and logged, never raised into serving
            log.exception("prediction log: %d rows could not be written", rows)
            self.totals["failed"] += rows
            self.on_count("failed", rows)
            return False
        self.totals["written"] += rows
        self.on_count("written", rows)
        return True


FILES_PER_BATCH = 1000  # a buffer's files: one per (version, hour) it holds, far fewer than this


def write_entries(store: Store, pipeline: str, writer_id: str, batch: int, entries: list[Entry]) -> list[str]:
    """Write one buffer's entries: a file per (log format, version) and hour, named by ``batch``.

    The names depend only on the writer, the buffer's number and the entries' order, so a buffer
    written again (recovered from a crash spool after its files were already in place) replaces
    its files instead of adding rows twice.
    """
    groups: dict[tuple[int, int], list[Entry]] = {}
    for e in entries:
        groups.setdefault((id(e[7]), e[3]), []).append(e)
    out: list[str] = []
    for group in groups.values():
        out += write_log(store, pipeline, _entries_table(group), writer_id, batch * FILES_PER_BATCH + len(out))
    return out


def _entries_table(entries: list[Entry]) -> pa.Table:
    fmt: LogFormat = entries[0][7]
    rows = [r for e in entries for r in e[5]]
    answers = [a for e in entries for a in e[6]]
    ids = [i for e in entries for i in row_ids(e[0], len(e[5]), e[1])]
    ts = [e[2] for e in entries for _ in e[5]]
    roles = [e[4] for e in entries for _ in e[5]]
    inputs = {name: [r.get(name) for r in rows] for name, _ in fmt.inputs}
    return fmt.table(inputs, fmt.answers_from_records(answers), ids, ts, entries[0][3], roles, "serve")
