"""The ingest stage: read the source with Ray Data, split it, write parquet."""
from __future__ import annotations

from typing import Any

from raypipe.ingest.split import SPLIT_COL, SPLITS, label_splits


def run(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    from raypipe.ingest.sources import read_source

    ctx.ray()
    data = ctx.spec.data
    ds = read_source(data.source)
    labelled, rows = label_splits(
        ds, target=data.target, stratify=data.split.stratify, test=data.split.test,
        validation=data.split.validation, seed=data.split.seed,
    )
    # One pass writes all three splits: splits/__split=<name>/ (three filtered passes took 2.5x longer).
    labelled.write_parquet(ctx.artifact.path("splits"), filesystem=ctx.artifact.fs, partition_cols=[SPLIT_COL])
    ctx.log("rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    return {"splits": {name: f"splits/{SPLIT_COL}={name}" for name in SPLITS if rows[name]}, "rows": rows,
            "input_rows": sum(rows.values())}
