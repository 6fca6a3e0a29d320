"""Sources -> ``ray.data.Dataset``, and the data fingerprint computed before a run."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow.fs as pafs

from raypipe.spec import BuiltinSource, CsvSource, ParquetSource

BUILTIN_GENERATOR_VERSION = {"transactions": 1}


def _fs_and_path(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def read_source(source: BuiltinSource | ParquetSource | CsvSource) -> Any:
    """Open a source as a lazy ``ray.data.Dataset``."""
    import ray.data

    if isinstance(source, BuiltinSource):
        from raypipe.ingest.builtin.transactions import transactions_dataset

        return transactions_dataset(source.rows, seed=source.seed, drift=source.drift)
    fs, path = _fs_and_path(source.path)
    if isinstance(source, ParquetSource):
        return ray.data.read_parquet(path, filesystem=fs)
    import pyarrow.csv as pacsv

    return ray.data.read_csv(path, filesystem=fs, parse_options=pacsv.ParseOptions(delimiter=source.delimiter))


def data_fingerprint(source: BuiltinSource | ParquetSource | CsvSource) -> str:
    """A content hash of the input data, computed without Ray.

    Built-in data is defined by its generator version and parameters; files by the
    sha256 of every byte they hold (one changed byte gives a new fingerprint).
    """
    h = hashlib.sha256()
    if isinstance(source, BuiltinSource):
        params = source.model_dump(mode="json")
        params["generator"] = BUILTIN_GENERATOR_VERSION[source.name]
        h.update(json.dumps(params, sort_keys=True).encode())
        return h.hexdigest()
    from raypipe.store import iter_file_digests

    fs, path = _fs_and_path(source.path)
    try:
        digests = list(iter_file_digests(fs, path))
    except FileNotFoundError:
        from raypipe.errors import SpecError

        raise SpecError(
            f"data.source.path: {source.path!r} does not exist; point it at a {source.type} file or folder"
        ) from None
    h.update(json.dumps({"type": source.type, "files": digests}, sort_keys=True).encode())
    return h.hexdigest()
