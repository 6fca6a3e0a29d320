"""The landing folder a stream is written into, micro-batch by micro-batch, and the windows read from it.

Two rules: a file is visible only whole (written under a temporary name, fsynced, renamed,
its folder fsynced: :meth:`raypipe.store.Store.write_bytes`), and every landed or
quarantined message's id is inside the files themselves (``__msg_id``), so the set of ids
already landed is rebuilt from the folder after a crash and a redelivered message is not
landed twice. Layout::

    <landing>/batch-<arrival ms, 13 digits>-<writer>-<seq>.parquet   rows: the columns + __msg_id, __topic, __arrived
    <landing>/_quarantine/q-<arrival ms>-<writer>-<seq>.parquet      __msg_id, __topic, payload, reason, __arrived
    <landing>/_schema.json                                           the columns and types rows are checked against

A file name starts with its arrival time, so a window is chosen from names and sizes alone.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.ingest.mqtt_wire import META_COLUMNS
from raypipe.store import Store

QUARANTINE = "_quarantine"
SCHEMA_FILE = "_schema.json"
_ARROW = {"number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_(), "string": pa.string(),
          "text": pa.string(), "datetime": pa.string()}
QUARANTINE_SCHEMA = pa.schema([("__msg_id", pa.string()), ("__topic", pa.string()), ("payload", pa.string()),
                               ("reason", pa.string()), ("__arrived", pa.timestamp("ms", tz="UTC"))])


@dataclass(frozen=True)
class LandedFile:
    name: str
    arrived_ms: int
    size: int


class Landing:
    """One landing folder (a local path)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.store = Store(path)
        self.writer = uuid.uuid4().hex[:8]  # a new one per process: two writers never pick the same name
        self.seq = 0

    # -- schema ---------------------------------------------------------------------------
    def read_columns(self) -> dict[str, str] | None:
        """The columns held for this landing (None before the first good micro-batch)."""
        return json.loads(self.store.read_bytes(SCHEMA_FILE)) if self.store.exists(SCHEMA_FILE) else None

    def write_columns(self, columns: dict[str, str]) -> None:
        self.store.write_bytes(SCHEMA_FILE, json.dumps(columns, indent=2).encode())

    # -- writing ----------------------------------------------------------------------------
    def _name(self, prefix: str, arrived_ms: int) -> str:
        self.seq += 1
        return f"{prefix}-{arrived_ms:013d}-{self.writer}-{self.seq:06d}.parquet"

    def write_batch(self, rows: list[dict[str, Any]], columns: dict[str, str], ids: list[str], topics: list[str],
                    arrived_ms: int) -> str:
        """Land good rows as one parquet file (synced before this returns); its name."""
        arrays = [pa.array([r[c] for r in rows], _ARROW[t]) for c, t in columns.items()]
        arrays += [pa.array(ids, pa.string()), pa.array(topics, pa.string()),
                   pa.array([arrived_ms] * len(rows), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))]
        table = pa.Table.from_arrays(arrays, names=[*columns, *META_COLUMNS])
        name = self._name("batch", arrived_ms)
        self.store.write_bytes(name, _parquet(table))
        return name

    def write_quarantine(self, ids: list[str], topics: list[str], payloads: list[bytes], reasons: list[str],
                         arrived_ms: int) -> str:
        """Keep bad messages, each with the reason it was refused (synced before this returns); the file's name."""
        text = [p.decode("utf-8", errors="replace") for p in payloads]
        arrived = pa.array([arrived_ms] * len(ids), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        table = pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(topics, pa.string()),
                                      pa.array(text, pa.string()), pa.array(reasons, pa.string()), arrived],
                                     schema=QUARANTINE_SCHEMA)
        name = f"{QUARANTINE}/" + self._name("q", arrived_ms)
        self.store.write_bytes(name, _parquet(table))
        return name

    # -- reading ----------------------------------------------------------------------------
    def files(self, folder: str = "") -> list[LandedFile]:
        """The whole files landed (oldest first); temporary files left by a crash are not listed."""
        where = os.path.join(self.path, folder)
        if not os.path.isdir(where):
            return []
        out = []
        for entry in os.scandir(where):
            parts = entry.name.split("-")
            if entry.is_file() and entry.name.endswith(".parquet") and len(parts) == 4 and parts[1].isdigit():
                out.append(LandedFile(os.path.join(folder, entry.name) if folder else entry.name, int(parts[1]),
                                      entry.stat().st_size))
        return sorted(out, key=lambda f: (f.arrived_ms, f.name))

    def seen_ids(self) -> set[str]:
        """Every message id landed or quarantined so far, read back from the files."""
        ids: set[str] = set()
        for f in self.files() + self.files(QUARANTINE):
            ids.update(pq.read_table(os.path.join(self.path, f.name), columns=["__msg_id"])["__msg_id"].to_pylist())
        return ids

    def remove_temporary(self) -> None:
        """Delete the temporary files a killed writer left (never a whole file)."""
        for folder in (self.path, os.path.join(self.path, QUARANTINE)):
            if os.path.isdir(folder):
                for entry in os.scandir(folder):
                    if ".tmp-" in entry.name:
                        os.unlink(entry.path)

    def rows(self, files: list[LandedFile]) -> int:
        return sum(pq.ParquetFile(os.path.join(self.path, f.name)).metadata.num_rows for f in files)

    def window(self, *, seconds: float | None = None, messages: int | None = None,
               now_ms: int | None = None) -> list[LandedFile]:
        """The files of a window: arrived in the last ``seconds`` (before ``now_ms``), or the newest whole
        micro-batches that hold at least ``messages`` rows (all of them when fewer have landed)."""
        files = self.files()
        if seconds is not None:
            now_ms = int(time.time() * 1000) if now_ms is None else now_ms
            return [f for f in files if f.arrived_ms >= now_ms - seconds * 1000]
        chosen: list[LandedFile] = []
        held = 0
        for f in reversed(files):
            if messages is not None and held >= messages:
                break
            chosen.append(f)
            held += pq.ParquetFile(os.path.join(self.path, f.name)).metadata.num_rows
        return chosen[::-1]


def window_fingerprint(files: list[LandedFile]) -> str:
    """A hash of a window's file names and sizes: the same window, the same fingerprint; a new micro-batch, a new one."""
    return hashlib.sha256(json.dumps([[f.name, f.size] for f in files]).encode()).hexdigest()


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
