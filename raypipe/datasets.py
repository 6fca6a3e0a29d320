"""Reading and writing Ray Datasets as parquet inside a :class:`~raypipe.store.Store`."""
from __future__ import annotations

from typing import Any

from raypipe.store import Store


def parquet_options(schema: Any) -> dict[str, Any]:
    """Parquet writer options for tables of a ``pyarrow.Schema``.

    Dictionary encoding only for columns that are not floating point: pyarrow tries
    a dictionary on every column by default, and on float columns (nearly all values
    distinct) that made writing 2.5x slower for the same file size.
    """
    import pyarrow as pa

    return {"use_dictionary": [f.name for f in schema if not pa.types.is_floating(f.type)]}


def write_table(table: Any, fs: Any, path: str) -> None:
    """Write one ``pyarrow.Table`` as a parquet file (from inside a Ray task), creating its folder.

    A folder exists only once a file is written into it: a split or kind without rows has none.
    """
    import posixpath

    import pyarrow.parquet as pq

    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
    table = table.replace_schema_metadata(meta or None)  # pandas' dtype notes would make readers build ArrowDtype columns
    fs.create_dir(posixpath.dirname(path), recursive=True)
    pq.write_table(table, path, filesystem=fs, **parquet_options(table.schema))


def read_parquet(store: Store, rel: str) -> Any:
    """Read a dataset written by :func:`write_parquet`."""
    import ray.data

    return ray.data.read_parquet(store.path(rel), filesystem=store.fs, file_extensions=["parquet"])


def footer_rows(store: Store, rel: str) -> int:
    """Rows of the parquet files under ``rel``, counted from their footers (0 when there are none).

    What is on disk, not what the tasks that wrote it reported: a file torn by a killed
    writer has no footer and fails here, loudly.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    files = [store.path(rel, f) for f in store.walk_files(rel) if f.endswith(".parquet")]
    if not files:
        return 0
    def rows(path: str) -> int:
        with store.fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata.num_rows

    with ThreadPoolExecutor(max_workers=8) as pool:  # a footer is one small read: many at once on object stores
        return sum(pool.map(rows, files))


def has_rows(store: Store, rel: str) -> bool:
    return any(f.endswith(".parquet") for f in store.walk_files(rel))


_sequence: dict[str, Any] = {}


def task_file_name(content: bytes | None = None) -> str:
    """A parquet file name for a block written from inside a Ray task.

    The Ray task id and a per-task sequence number: a retried task overwrites its
    own files instead of adding copies. With ``content`` (bytes that follow from the
    rows written, such as their hashes), the name starts with a digest of it: files
    are read back in name order, and task ids differ from run to run, so this keeps
    the rows' order the same in every fresh run of a pipeline (torch training sees rows
    in that order; identical blocks share a digest and still get distinct names).
    """
    import hashlib
    import itertools

    import ray

    task = ray.get_runtime_context().get_task_id() or "driver"
    prefix = "" if content is None else hashlib.blake2b(content, digest_size=8).hexdigest() + "-"
    return f"{prefix}{task}-{next(_sequence.setdefault(task, itertools.count())):05d}.parquet"
