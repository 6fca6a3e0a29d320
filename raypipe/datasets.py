"""Reading and writing Ray Datasets as parquet inside a :class:`~raypipe.store.Store`."""
from __future__ import annotations

from typing import Any

from raypipe.store import Store


def parquet_options(schema: Any) -> dict[str, Any]:
    """Parquet writer options for a ``pyarrow.Schema`` or a Ray Dataset's schema.

    Dictionary encoding only for columns that are not floating point: pyarrow tries
    a dictionary on every column by default, and on float columns (nearly all values
    distinct) that made writing 2.5x slower for the same file size.
    """
    return {"use_dictionary": [n for n, t in zip(schema.names, schema.types) if not _is_float(t)]}


def _is_float(t: Any) -> bool:
    import numpy as np
    import pyarrow as pa

    if isinstance(t, pa.DataType):
        return pa.types.is_floating(t)
    try:
        return np.dtype(t).kind == "f"
    except TypeError:
        return False


def write_parquet(ds: Any, store: Store, rel: str, **options: Any) -> None:
    """Write a dataset under ``rel`` (an empty dataset writes no files); ``options`` go to the parquet writer."""
    ds.write_parquet(store.path(rel), filesystem=store.fs, **options)


def write_table(table: Any, fs: Any, path: str) -> None:
    """Write one ``pyarrow.Table`` as a parquet file (from inside a Ray task)."""
    import pyarrow.parquet as pq

    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
    table = table.replace_schema_metadata(meta or None)  # pandas' dtype notes would make readers build ArrowDtype columns
    pq.write_table(table, path, filesystem=fs, **parquet_options(table.schema))


def read_parquet(store: Store, rel: str) -> Any:
    """Read a dataset written by :func:`write_parquet`."""
    import ray.data

    return ray.data.read_parquet(store.path(rel), filesystem=store.fs, file_extensions=["parquet"])


def has_rows(store: Store, rel: str) -> bool:
    return any(f.endswith(".parquet") for f in store.walk_files(rel))


_sequence: dict[str, Any] = {}


def task_file_name() -> str:
    """A parquet file name for a block written from inside a Ray task.

    The Ray task id and a per-task sequence number: a retried task overwrites its
    own files instead of adding copies.
    """
    import itertools

    import ray

    task = ray.get_runtime_context().get_task_id() or "driver"
    return f"{task}-{next(_sequence.setdefault(task, itertools.count())):05d}.parquet"
