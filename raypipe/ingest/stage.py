"""The ingest stage: read the source with Ray Data, split it, write parquet per split.

A source that lands its data in files first (the HTTP source's pages) writes them under
``_source/`` in the stage's artifact folder, in the pipeline's storage, so every Ray node
reads them; the folder is deleted once the splits are written (or the stage fails), before
the artifact is sealed; after a crash, the next run's ``begin_artifact`` removes it with the rest.
"""
from __future__ import annotations

from raypipe.datasets import footer_rows
from raypipe.errors import ArtifactError
from raypipe.ingest.split import SPLIT_COL, plan_splits, write_block_splits
from raypipe.stage import SPLITS, IngestOutput, StageContext, StageOutput

SCRATCH = "_source"


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> IngestOutput:
    try:
        return _ingest(ctx)
    finally:
        ctx.artifact.delete(SCRATCH)


def _ingest(ctx: StageContext) -> IngestOutput:
    from raypipe.ingest.sources import read_source

    ctx.ray()
    data = ctx.spec.data
    ds = read_source(data.source, ctx.artifact.sub(SCRATCH), na_values=data.na_values)
    plan = plan_splits(ds, target=data.target, stratify=data.split.stratify, test=data.split.test,
                       validation=data.split.validation, seed=data.split.seed)
    # Each task writes its block's rows to splits/__split=<name>/ (Ray's partitioned write took 2x longer).
    counts = plan.rows_u.map_batches(write_block_splits, fn_kwargs={"bounds": plan.bounds, "key": plan.key,
                                     "fs": ctx.artifact.fs, "root": ctx.artifact.path("splits"),
                                     "text_columns": plan.as_text},
                                     batch_format="pyarrow", batch_size=None).to_pandas()
    written = counts.groupby("split")["rows"].sum().to_dict()
    on_disk = {name: footer_rows(ctx.artifact, f"splits/{SPLIT_COL}={name}") for name in SPLITS}
    if any(written.get(name, 0) != n or on_disk[name] != n for name, n in plan.rows.items()):
        raise ArtifactError(f"ingest lost rows: planned {plan.rows}, the tasks reported {written}, the parquet "
                            f"footers on disk hold {on_disk}; run again with --force ingest")
    ctx.log("rows: " + ", ".join(f"{k} {v:,}" for k, v in plan.rows.items()))
    return IngestOutput(splits={name: f"splits/{SPLIT_COL}={name}" for name in SPLITS if plan.rows[name]},
                        rows=plan.rows, input_rows=sum(plan.rows.values()))
