"""Reading and writing Ray Datasets as parquet inside a :class:`~raypipe.store.Store`."""
from __future__ import annotations

from typing import Any

from raypipe.store import Store


def write_parquet(ds: Any, store: Store, rel: str) -> None:
    """Write a dataset under ``rel`` (an empty dataset writes no files)."""
    ds.write_parquet(store.path(rel), filesystem=store.fs)


def read_parquet(store: Store, rel: str) -> Any:
    """Read a dataset written by :func:`write_parquet`."""
    import ray.data

    return ray.data.read_parquet(store.path(rel), filesystem=store.fs, file_extensions=["parquet"])


def has_rows(store: Store, rel: str) -> bool:
    return any(f.endswith(".parquet") for f in store.walk_files(rel))
