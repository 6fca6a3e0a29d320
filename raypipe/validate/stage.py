"""The validate stage: infer or load the schema, check every split, quarantine bad rows.

``valid + quarantined == input rows`` holds per split and is recorded in the report.
"""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from raypipe.datasets import has_rows, read_parquet, write_parquet
from raypipe.errors import DataValidationError
from raypipe.validate.checks import (
    REASON, annotate, batch_stats, coerce_numeric, column_problems, merge_stats, row_problems,
)
from raypipe.validate.schema import infer_schema


def _load_schema(ctx: Any, arrow_schema: Any) -> dict[str, Any]:
    data = ctx.spec.data
    if ctx.spec.validate_.schema_ == "infer":
        return infer_schema(arrow_schema, target=data.target, task=data.task, id_columns=data.id_columns)
    with open(ctx.spec.validate_.schema_) as f:
        return json.load(f)


def _check_split(ds: Any, schema: dict[str, Any], classes: list[str] | None) -> tuple[Any, dict[str, Any]]:
    target = schema["target"]["name"] if schema.get("target") else None
    annotated = ds.map_batches(
        annotate, fn_kwargs={"schema": schema, "classes": classes}, batch_format="pandas"
    ).materialize()
    parts = annotated.map_batches(
        lambda b: {"s": [json.dumps(batch_stats(b, target))]}, batch_format="pandas", batch_size=None
    ).to_pandas()["s"]
    return annotated, merge_stats([json.loads(s) for s in parts])


def _rows(annotated: Any, valid: bool, schema: dict[str, Any]) -> Any:
    def pick(b: pd.DataFrame) -> pd.DataFrame:
        mask = b[REASON].isna()
        return coerce_numeric(b[mask].drop(columns=[REASON]), schema) if valid else b[~mask]

    return annotated.map_batches(pick, batch_format="pandas")


def run(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    ctx.ray()
    ingest = inputs["ingest"]
    cfg = ctx.spec.validate_
    datasets = {s: read_parquet(ingest.store, s) for s, n in ingest.outputs["rows"].items() if n}
    schema = _load_schema(ctx, datasets["train"].schema().base_schema)
    problems: list[str] = []
    report: dict[str, Any] = {"splits": {}, "schema": schema}
    counts: dict[str, dict[str, int]] = {}
    classes: list[str] | None = None
    checked = {}
    for split in ("train", "validation", "test"):
        if split not in datasets:
            continue
        present = list(datasets[split].schema().names)
        annotated, stats = _check_split(datasets[split], schema, classes)
        if split == "train":
            if schema.get("target") and schema["target"]["task"] == "classification":
                classes = sorted(stats["classes"])
            if cfg.schema_ == "infer":  # serving requires the columns that were never missing
                for c, col in schema["columns"].items():
                    col["nullable"] = stats["nulls"].get(c, 0) > 0
        problems += [f"{split}: {p}" for p in column_problems(stats, schema, present, cfg.max_missing_fraction)]
        if cfg.on_invalid_rows == "fail":
            problems += row_problems(stats, split)
        checked[split] = annotated
        counts[split] = {"input": stats["rows"], "valid": stats["rows"] - stats["invalid"], "quarantined": stats["invalid"]}
        report["splits"][split] = {**counts[split], "reasons": stats["reasons"], "examples": stats["examples"],
                                   "null_fraction": {c: n / max(stats["rows"], 1) for c, n in stats["nulls"].items()}}
    if problems:
        raise DataValidationError(problems)
    if schema.get("target") and classes is not None:
        schema["target"]["classes"] = classes
    for split, annotated in checked.items():
        write_parquet(_rows(annotated, True, schema), ctx.artifact, f"valid/{split}")
        if counts[split]["quarantined"]:
            write_parquet(_rows(annotated, False, schema), ctx.artifact, f"quarantine/{split}")
        assert counts[split]["valid"] + counts[split]["quarantined"] == counts[split]["input"]
    quarantined = sum(c["quarantined"] for c in counts.values())
    ctx.artifact.write_json("schema.json", schema)
    ctx.artifact.write_json("report.json", report)
    ctx.log(f"schema: {len(schema['columns'])} columns; quarantined rows: {quarantined}")
    return {
        "schema": "schema.json",
        "report": "report.json",
        "splits": {s: f"valid/{s}" for s in checked if has_rows(ctx.artifact, f"valid/{s}")},
        "counts": counts,
        "quarantined": quarantined,
    }
