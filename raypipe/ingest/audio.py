"""A folder tree of audio clips -> ``ray.data.Dataset`` with ``audio``, ``label`` and ``speaker``.

The layout is ``<path>/<label>/<speaker>_<n>.wav`` (or ``.flac``, ``.ogg``): a clip's label is
its folder's name, its ``speaker`` the file name's part before the first ``_`` (the whole
stem without one), so that ``data.split.group_by: speaker`` can hold whole speakers out.
Ray tasks decode every clip with :func:`raypipe.model.waveform.decode_audio` (mono,
resampled to ``sample_rate``, padded or trimmed to ``duration_s``): ``audio`` is a float32
tensor column of ``samples`` values.

A clip that cannot be decoded is never dropped silently: each task marks it (its reason in
``__error``), :func:`read_audio_checked` collects the marked files on the driver and either
stops the run naming all of them (``on_bad_files: fail``) or leaves them out, each counted
and named in the ingest output's ``skipped_files`` (``skip``, the default), the way a bad
parquet or CSV file is.
"""
from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any

import numpy as np

from raypipe.errors import UndecodableFileError
from raypipe.model.waveform import AUDIO_EXTENSIONS, decode_audio

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

    from raypipe.spec import AudioSource

ERROR_COL = "__error"


def speaker_of(path: str) -> str:
    """The file name's part before its first ``_`` (the whole stem when it has none)."""
    stem = posixpath.splitext(posixpath.basename(path.replace("\\", "/")))[0]
    return stem.split("_", 1)[0]


def _audio_batch(batch: dict[str, Any], sample_rate: int, samples: int) -> dict[str, np.ndarray]:
    """``{bytes, path}`` rows -> ``{audio, label, speaker, path, __error}``; a bad clip gets silence and its reason."""
    from raypipe.ingest.unstructured import _label

    paths = [str(p) for p in batch["path"]]
    waves, errors = [], []
    for data, path in zip(batch["bytes"], paths):
        try:
            waves.append(decode_audio(bytes(data), sample_rate, samples, path))
            errors.append("")
        except UndecodableFileError as e:
            waves.append(np.zeros(samples, dtype=np.float32))
            errors.append(str(e))
    return {
        "audio": np.stack(waves) if waves else np.zeros((0, samples), dtype=np.float32),
        "label": np.array([_label(p) for p in paths], dtype=object),
        "speaker": np.array([speaker_of(p) for p in paths], dtype=object),
        "__path": np.array(paths, dtype=object),
        ERROR_COL: np.array(errors, dtype=object),
    }


def read_audio(source: AudioSource) -> ray.data.Dataset:
    """Every clip under ``source.path`` decoded by Ray tasks: ``audio``, ``label``, ``speaker``,
    plus ``__path`` and ``__error`` (empty for a good clip; see :func:`read_audio_checked`).

    Raises:
        SpecError: ``source.path`` does not exist or holds no audio file (at once).
    """
    from raypipe.ingest.unstructured import _binary_tree

    return _binary_tree(source.path, AUDIO_EXTENSIONS).map_batches(
        _audio_batch, fn_kwargs={"sample_rate": source.sample_rate, "samples": source.samples},
        batch_format="numpy", batch_size=64,
    )


def _bad_of_block(table: Any) -> list[dict[str, str]]:
    """The ``{file, reason, kind}`` of a block's undecodable clips."""
    errors = table[ERROR_COL].to_pylist()
    paths = table["__path"].to_pylist()
    return [{"file": p, "reason": e, "kind": "bad"} for p, e in zip(paths, errors) if e]


def _good_rows(table: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pc.equal(table[ERROR_COL], pa.scalar(""))
    return table.filter(keep).drop_columns([ERROR_COL, "__path"])


def read_audio_checked(source: AudioSource) -> tuple[Any, dict[str, int], list[dict[str, str]]]:
    """The decoded clips without the undecodable ones, the file counts and the skipped files.

    The clips are decoded once (materialised); the bad ones are found by one plain task per
    block, so only their names and reasons reach the driver.

    Raises:
        DataValidationError: ``on_bad_files: fail`` and some clip cannot be decoded (naming
            every such file), or no clip can be decoded at all.
    """
    from raypipe.datasets import run_per_block
    from raypipe.errors import DataValidationError

    decoded = read_audio(source).materialize()
    bad = [s for part in run_per_block(_bad_of_block, decoded.to_arrow_refs()) for s in part]
    total = decoded.count()
    if bad and (source.on_bad_files == "fail" or len(bad) == total):
        why = "on_bad_files is fail" if source.on_bad_files == "fail" else "no clip could be decoded"
        raise DataValidationError([s["reason"] for s in bad] + [
            f"data.source: {len(bad)} of {total} audio file(s) cannot be decoded ({why}); fix or remove them"
            + ("" if source.on_bad_files == "skip" else ", or set data.source.on_bad_files: skip to leave them out")])
    good = decoded.map_batches(_good_rows, batch_format="pyarrow", batch_size=None)
    return good, {"read": total - len(bad), "skipped_bad": len(bad)}, bad
