"""The ingest stage: read the source with Ray Data, split it, write parquet per split.

A source that lands its data in files first (the HTTP source's pages) writes them under
``_source/`` in the stage's artifact folder, in the pipeline's storage, so every Ray node
reads them; the folder is deleted once the splits are written (or the stage fails), before
the artifact is sealed; after a crash, the next run's ``begin_artifact`` removes it with the rest.

Parquet and CSV sources report the files they read and the files they left out (by name,
empty, or bad under ``on_bad_files: skip``) in the output, and a bad file stops the run
with a :class:`DataValidationError` that names it, instead of a Ray task's traceback.
"""
from __future__ import annotations

import posixpath
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from raypipe import datasets
from raypipe.datasets import footer_rows, run_per_block
from raypipe.errors import ArtifactError, DataValidationError
from raypipe.ingest.builtin import builtin_frames
from raypipe.ingest.files import (
    FileRead,
    bad_files_error,
    find_bad_files,
    is_small_input,
    file_reader,
    open_dataset,
    plan_read,
    reads_per_file,
    redact,
    read_tables,
)
from raypipe.ingest.split import SPLIT_COL, PerFile, SplitPlan, plan_splits, write_block_splits
from raypipe.runtime import small_data_in_driver
from raypipe.spec import AudioSource, BuiltinSource, CsvSource, ParquetSource
from raypipe.stage import SPLITS, IngestOutput, StageContext, StageOutput

SCRATCH = "_source"
MAX_LISTED = 100  # skipped files named in the ingest output (all are counted)


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> IngestOutput:
    try:
        return _ingest(ctx)
    finally:
        ctx.artifact.delete(SCRATCH)


def _ingest(ctx: StageContext) -> IngestOutput:
    data = ctx.spec.data
    if data.source is None:  # a policy learning from its environment alone: nothing to read
        ctx.log(f"no data.source: the policy learns by acting in {data.env.name}")
        return IngestOutput(splits={}, rows={}, input_rows=0)

    def plan_of(ds: Any) -> SplitPlan:
        # A regression target has no classes to stratify by: every distinct value would be a stratum of one
        # to three rows, each rounding to no test rows (diabetes got 29 test rows instead of ~66).
        stratify = data.split.stratify and data.task != "regression"
        return plan_splits(ds, target=data.target, stratify=stratify, test=data.split.test,
                           validation=data.split.validation, seed=data.split.seed, group_by=data.split.group_by)

    audio: tuple[dict[str, int], list[dict[str, str]]] | None = None
    if isinstance(data.source, ParquetSource | CsvSource):
        read, plan = _plan_files(ctx, data.source, plan_of, data.na_values)
    elif isinstance(data.source, AudioSource):  # undecodable clips are left out by name, like bad files
        from raypipe.ingest.audio import read_audio_checked

        ctx.ray()
        clips, counts, bad = read_audio_checked(data.source)
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            ctx.log(f"skipped {len(bad)} audio file(s) that cannot be decoded: "
                    + ", ".join(posixpath.basename(s["file"]) for s in bad[:5]) + more)
        read, plan, audio = None, plan_of(clips), (counts, bad[:MAX_LISTED])
    elif isinstance(data.source, BuiltinSource) and (frames := builtin_frames(data.source)) is not None:
        import ray.data
        from ray.data.block import BlockAccessor

        # generated here either way: as arrow the way Ray Data's from_pandas converts them (the same blocks)
        tables = [BlockAccessor.for_block(f).to_arrow() for f in frames]
        small = sum(t.nbytes for t in tables) <= datasets.SMALL_DATA_BYTES
        ctx.ray(small=small)
        read, plan = None, plan_of(tables if small and small_data_in_driver() else ray.data.from_pandas(frames))
    else:
        from raypipe.ingest.sources import read_source

        ctx.ray()
        with ExitStack() as held:  # held until the plan has read the source: a sharded SQL read's one snapshot
            read, plan = None, plan_of(read_source(data.source, ctx.artifact.sub(SCRATCH), held,
                                                     na_values=data.na_values))
    if read is not None and not sum(plan.rows.values()):
        raise DataValidationError([(f"data.source.path: {redact(data.source.path)!r} holds no rows: its "
                                    f"{len(read.files)} file(s) have a header or schema only; point it at data")])
    # Each task writes its block's rows to splits/__split=<name>/ (Ray's partitioned write took 2x longer): plain
    # tasks on the blocks the plan materialised, so the read is the stage's only Ray Data execution.
    write = {"bounds": plan.bounds, "key": plan.key, "fs": ctx.artifact.fs, "root": ctx.artifact.path("splits"),
             "text_columns": plan.as_text}
    refs = plan.block_refs()
    if refs is None:  # small data read in the driver: written here too
        wrote = [write_block_splits(t, **write) for t in plan.rows_u]
    else:
        wrote = run_per_block(write_block_splits, refs, **write)
    written = {name: sum(t["rows"][i].as_py() for t in wrote) for i, name in enumerate(SPLITS)}
    on_disk = {name: footer_rows(ctx.artifact, f"splits/{SPLIT_COL}={name}") for name in SPLITS}
    if any(written.get(name, 0) != n or on_disk[name] != n for name, n in plan.rows.items()):
        raise ArtifactError(f"ingest lost rows: planned {plan.rows}, the tasks reported {written}, the parquet "
                            f"footers on disk hold {on_disk}; run again with --force ingest")
    ctx.log("rows: " + ", ".join(f"{k} {v:,}" for k, v in plan.rows.items()))
    files, skipped = (read.counts(), read.skipped[:MAX_LISTED]) if read else audio or ({}, [])
    return IngestOutput(splits={name: f"splits/{SPLIT_COL}={name}" for name in SPLITS if plan.rows[name]},
                        rows=plan.rows, input_rows=sum(plan.rows.values()), files=files, skipped_files=skipped)


def _plan_files(ctx: StageContext, source: ParquetSource | CsvSource, plan_of: Callable[[Any], SplitPlan],
                na_values: list[str]) -> tuple[FileRead, SplitPlan]:
    """Check the files (before Ray starts: a bad file fails fast), then read them into the split plan.

    Should the read still fail, or a CSV column come out as bytes (text the encoding cannot
    decode, past the first block the check looked at), every file is checked in full: the
    bad ones stop the run with their names, or (``on_bad_files: skip``) the read runs again
    without them. A failure no file explains is raised as it came.
    """
    read = plan_read(source, na_values=na_values)
    ctx.ray(small=is_small_input(read, datasets.SMALL_DATA_BYTES))  # small: read here, maybe without Ray
    failure: Exception | None = None
    try:
        plan = plan_of(_open(read))
    except Exception as exc:  # noqa: BLE001 - a Ray task's (or pyarrow's) error: which file, and why, is found below
        failure = exc
    if failure is not None or (isinstance(source, CsvSource) and _bytes_columns(plan)):
        bad = find_bad_files(source, read.files)
        if not bad and failure is not None:
            raise failure
        if bad and source.on_bad_files == "fail":
            raise bad_files_error(bad) from None
        if bad:
            read = plan_read(source, bad=tuple(bad), na_values=na_values)
            plan = plan_of(_open(read))
    _log_skipped(ctx, read)
    return read, plan


def _open(read: FileRead) -> Any:
    """The read's data, set on it, one block per file where it can be: a small input read here when
    ``ray.small_data`` says the driver (a list of tables), else a Ray task per file (``PerFile``) unless
    there are many files or big ones (``reads_per_file``), which Ray Data reads (a lazy dataset)."""
    if is_small_input(read, datasets.SMALL_DATA_BYTES) and small_data_in_driver():
        read.dataset = read_tables(read)
    elif reads_per_file(read):
        read.dataset = PerFile(file_reader(read), read.files)
    else:
        read.dataset = open_dataset(read)
    return read.dataset


def _bytes_columns(plan: SplitPlan) -> list[str]:
    """Columns pyarrow read as bytes: CSV text the encoding could not decode."""
    return [name for name, families in plan.families.items() if families & {"binary", "large_binary"}]


def _log_skipped(ctx: StageContext, read: FileRead) -> None:
    """One line per kind of skipped file (a few names each): skipping is never silent."""
    for kind, what in (("name", "by name"), ("empty", "empty"), ("bad", "unreadable (on_bad_files: skip)")):
        names = [posixpath.basename(s["file"]) for s in read.skipped if s["kind"] == kind]
        if names:
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            ctx.log(f"skipped {len(names)} file(s) {what}: {', '.join(names[:5])}{more}")
    for s in read.skipped:
        if s["kind"] == "bad":
            ctx.log(f"skipped: {s['reason']}")
