"""Sources -> ``ray.data.Dataset``, and the data fingerprint computed before a run.

Each source type has its own module; this one only dispatches on ``data.source.type``.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from raypipe.spec import (
    AudioSource, BuiltinSource, CsvSource, HttpSource, ImagesSource, JsonSource, MqttSource, ParquetSource, SqlSource,
    TextSource,
)

if TYPE_CHECKING:
    from raypipe.store import Store

FileSource = ParquetSource | CsvSource | JsonSource
TreeSource = ImagesSource | TextSource | AudioSource
AnySource = BuiltinSource | FileSource | SqlSource | HttpSource | TreeSource | MqttSource


def read_source(source: AnySource, scratch: Store | None = None, stack: ExitStack | None = None,
                na_values: list[str] | None = None) -> Any:
    """Open a source as a lazy ``ray.data.Dataset`` (read by Ray tasks, not on the driver).

    ``scratch``: a folder every Ray node can read, for a source that lands its data in files
    first (``http`` writes its pages there); the caller deletes it once the dataset is consumed.
    ``stack``: what a source must hold while its dataset is read (a sharded SQL read's
    shared snapshot) is entered here; the caller closes it once the dataset is consumed.
    ``na_values``: the cells of a csv or json source that are missing values (``data.na_values``).
    """
    if isinstance(source, BuiltinSource):
        from raypipe.ingest.builtin import builtin_dataset

        return builtin_dataset(source)
    if isinstance(source, SqlSource):
        from raypipe.ingest.sql import read_sql

        return read_sql(source, stack)
    if isinstance(source, HttpSource):
        from raypipe.ingest.http import read_http

        return read_http(source, scratch)
    if isinstance(source, MqttSource):
        from raypipe.ingest.mqtt import read_mqtt

        return read_mqtt(source)
    if isinstance(source, ImagesSource):
        from raypipe.ingest.unstructured import read_images

        return read_images(source)
    if isinstance(source, TextSource):
        from raypipe.ingest.unstructured import read_text_folder

        return read_text_folder(source)
    if isinstance(source, AudioSource):
        from raypipe.ingest.audio import read_audio_checked

        return read_audio_checked(source)[0]
    from raypipe.ingest.files import read_files

    return read_files(source, na_values=na_values)


def data_fingerprint(source: AnySource | None, nonce: str = "") -> str:
    """A content hash of the input data, computed without Ray.

    Built-in data is defined by its generator version and parameters; files and
    folder trees by the sha256 of every byte they hold (one changed byte gives a new
    fingerprint). A database or an API cannot be hashed without reading it: their
    fingerprint is the source's configuration (secrets excluded) plus its
    ``snapshot`` label, or ``nonce`` (the run id) without one, so that every run
    reads them again. An MQTT source's is its window of landed micro-batches (file names and
    sizes: the same window, the same fingerprint). No source (a policy learning from its environment alone) has one fixed fingerprint.
    """
    if source is None:
        return _sha({"source": None})
    if isinstance(source, BuiltinSource):
        from raypipe.ingest.builtin import BUILTIN_GENERATOR_VERSION

        params = source.model_dump(mode="json")
        params["generator"] = BUILTIN_GENERATOR_VERSION[source.name]
        return _sha(params)
    if isinstance(source, SqlSource):
        from raypipe.ingest.sql import sql_fingerprint

        return sql_fingerprint(source, nonce)
    if isinstance(source, HttpSource):
        params = source.model_dump(mode="json", exclude={"snapshot"})
        params["headers"] = sorted(params["headers"])  # names only: values may be credentials
        return _sha({"http": params, "snapshot": source.snapshot or f"run:{nonce}"})
    if isinstance(source, MqttSource):
        from raypipe.ingest.mqtt import mqtt_fingerprint

        return mqtt_fingerprint(source)
    return _files_fingerprint(source)


def _files_fingerprint(source: FileSource | TreeSource) -> str:
    from raypipe.errors import SpecError
    from raypipe.ingest.files import filesystem_and_path
    from raypipe.store import iter_file_digests

    fs, path = filesystem_and_path(source.path)
    try:
        digests = list(iter_file_digests(fs, path))
    except FileNotFoundError:
        raise SpecError(
            f"data.source.path: {source.path!r} does not exist; point it at a {source.type} file or folder"
        ) from None
    params = source.model_dump(mode="json", exclude={"path"})
    return _sha({"source": params, "files": digests})


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
