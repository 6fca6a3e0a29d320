"""The prediction log's crash spool: what a writer holds in memory, also appended to a local file.

A replica's :class:`raypipe.predlog.PredictionLogWriter` keeps rows in memory until it writes a
parquet file. A replica killed with SIGKILL (the OOM killer, a node agent, ``kill -9``) would lose
them; so every entry it accepts is also appended, as one JSON line, to the current segment of its
spool, with an unbuffered ``os.write``: once ``add`` returns, the entry is in the operating
system's page cache, which outlives the process (not the machine: a power cut loses what the disk
did not get; nothing here calls ``fsync``, which would cost every request a disk flush).

Layout of a spool (one folder per writer under a root per pipeline)::

    <root>/<writer-id>/LOCK            held with flock(LOCK_EX) for the writer's life
    <root>/<writer-id>/formats.jsonl   one line per log format (version schema, task, excluded columns)
    <root>/<writer-id>/seg-NNNNNN.jsonl   entries not yet in a parquet file

When the writer takes its buffer to write it, the segment is closed and a new one begins; once
that buffer's parquet files are in place, the segment is deleted. A writer that stops gracefully
leaves nothing. Any writer that starts later (the replica Serve starts in place of a killed one)
first recovers the folders whose ``LOCK`` it can take: their owner is dead, because the operating
system releases an ``flock`` when its process dies. It writes their segments as log files under
the names the dead writer would have used (so a segment whose files were already written before
the kill is rewritten in place, never twice) and counts the rows as ``recovered``.

The root is ``<storage>/spool/predictions/<pipeline>`` for a local storage, and a folder of the
node's temporary directory (``$RAYPIPE_SPOOL_DIR`` to choose another) for remote storage, where
only a later writer on the same node recovers it. ``flock`` needs a local file system; on NFS it
may not exclude other hosts.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("raypipe")

SEGMENT = "seg-{:06d}.jsonl"


def spool_root(store: Any, pipeline: str) -> Path:
    """Where ``pipeline``'s writers keep their spools (see the module docstring)."""
    if store.is_local:
        return Path(store.root) / "spool" / "predictions" / pipeline
    base = os.environ.get("RAYPIPE_SPOOL_DIR") or os.path.join(tempfile.gettempdir(), "raypipe-spool")
    key = hashlib.sha256(store.full_uri().encode()).hexdigest()[:16]
    return Path(base) / key / pipeline


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _locked(path: Path) -> Optional[int]:
    """An fd holding ``flock(LOCK_EX)`` on ``path``, or None when another open file holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Spool:
    """One writer's spool folder. Not thread-safe: the writer calls it under its own lock.

    Args:
        root: :func:`spool_root`.
        writer_id: the writer's id (its folder's name).
    """

    def __init__(self, root: Path, writer_id: str) -> None:
        self.dir = Path(root) / writer_id
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = _locked(self.dir / "LOCK")
        if fd is None:
            raise RuntimeError(f"prediction log spool {self.dir} is held by another writer with the same id")
        self._lock_fd = fd
        # id(LogFormat) -> (its key in formats.jsonl, the format: held so that its id is never reused)
        self._formats: dict[int, tuple[int, Any]] = {}
        self._formats_fd = os.open(self.dir / "formats.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fd: Optional[int] = None
        self.segment = 0  # the segment appends go to

    def format_key(self, fmt: Any) -> int:
        """The key of a log format in this spool, written down the first time it is seen."""
        known = self._formats.get(id(fmt))
        if known is not None:
            return known[0]
        k = len(self._formats)
        line = json.dumps({"key": k, **fmt.describe()}, default=_jsonable) + "\n"
        os.write(self._formats_fd, line.encode())
        self._formats[id(fmt)] = (k, fmt)
        return k

    def append(self, entries: list[tuple]) -> None:
        """Append entries (``predlog.Entry``) in one write; rows keep only the logged input columns."""
        lines = []
        for rid, many, ts, version, role, rows, answers, fmt in entries:
            kept = [fmt.logged_inputs(r) for r in rows]
            lines.append(json.dumps([rid, many, ts, version, role, kept, answers, self.format_key(fmt)],
                                    default=_jsonable))
        data = ("\n".join(lines) + "\n").encode()
        if self._fd is None:
            self._fd = os.open(self.dir / SEGMENT.format(self.segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        view = memoryview(data)
        while view:  # a regular file takes it whole; the loop is for a short write all the same
            view = view[os.write(self._fd, view):]

    def rotate(self) -> Optional[int]:
        """Close the current segment (the entries just taken to be written) and start the next; its number."""
        if self._fd is None:
            return None
        os.close(self._fd)
        self._fd = None
        done, self.segment = self.segment, self.segment + 1
        return done

    def written(self, segment: Optional[int], ok: bool) -> None:
        """The segment's rows are in parquet files (delete it), or could not be written (leave it on disk:
        :meth:`close` then keeps the folder, for the next writer to recover)."""
        if ok and segment is not None:
            (self.dir / SEGMENT.format(segment)).unlink(missing_ok=True)

    def close(self) -> None:
        """After the last write: remove the folder, unless segments had to be kept; release the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        os.close(self._formats_fd)
        if not any(self.dir.glob("seg-*.jsonl")):
            for name in ("formats.jsonl", "LOCK"):
                (self.dir / name).unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                pass
        os.close(self._lock_fd)


def read_segment(path: Path, formats: dict[int, Any]) -> Iterator[tuple]:
    """The entries of a segment file; a torn last line (the process died inside a write) is skipped."""
    with open(path, "rb") as f:
        for line in f:
            try:
                rid, many, ts, version, role, rows, answers, k = json.loads(line)
            except ValueError:
                log.warning("prediction log spool %s: a torn line skipped (%d bytes)", path, len(line))
                continue
            yield rid, many, ts, version, role, rows, answers, formats[k]


def recover(root: Path, write: Callable[[str, int, list[tuple]], None],
            make_format: Callable[[dict[str, Any]], Any], skip: str = "") -> int:
    """Write the segments of every dead writer's spool under ``root``; the rows recovered.

    ``write(writer_id, segment, entries)`` writes one segment's entries as the writer would have;
    ``make_format(description)`` rebuilds a log format from :meth:`LogFormat.describe`. A spool
    whose lock is held (its writer is alive, or another writer is recovering it) is left alone,
    and so is ``skip`` (the caller's own). A segment that cannot be written stays for the next try.
    """
    rows = 0
    if not root.is_dir():
        return 0
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != skip):
        try:
            fd = _locked(d / "LOCK")
        except FileNotFoundError:  # recovered and removed by another writer meanwhile
            continue
        if fd is None:
            continue
        try:
            rows += _recover_one(d, write, make_format)
        finally:
            os.close(fd)
    return rows


def _recover_one(d: Path, write: Callable[[str, int, list[tuple]], None],
                 make_format: Callable[[dict[str, Any]], Any]) -> int:
    formats = {}
    if (d / "formats.jsonl").exists():
        for line in (d / "formats.jsonl").read_bytes().splitlines():
            try:
                desc = json.loads(line)
            except ValueError:
                continue  # a torn format line: its entries cannot be in any segment yet
            formats[desc.pop("key")] = make_format(desc)
    rows, left = 0, False
    for seg in sorted(d.glob("seg-*.jsonl")):
        entries = list(read_segment(seg, formats))
        try:
            if entries:
                write(d.name, int(seg.stem[4:]), entries)
        except Exception:
            log.exception("prediction log spool %s could not be written; kept for the next writer", seg)
            left = True
            continue
        rows += sum(len(e[5]) for e in entries)
        seg.unlink()
    if not left:
        for name in ("formats.jsonl", "LOCK"):
            (d / name).unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:
            pass
    return rows
