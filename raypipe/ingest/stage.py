"""The ingest stage: read the source with Ray Data, split it, write parquet."""
from __future__ import annotations

from typing import Any

from raypipe.datasets import write_parquet
from raypipe.ingest.split import SPLITS, split_dataset


def run(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    from raypipe.ingest.sources import read_source

    ctx.ray()
    data = ctx.spec.data
    ds = read_source(data.source)
    splits, rows = split_dataset(
        ds, target=data.target, stratify=data.split.stratify, test=data.split.test,
        validation=data.split.validation, seed=data.split.seed,
    )
    for name in SPLITS:
        if rows[name]:
            write_parquet(splits[name], ctx.artifact, name)
    ctx.log("rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    return {"splits": {name: name for name in SPLITS}, "rows": rows, "input_rows": sum(rows.values())}
