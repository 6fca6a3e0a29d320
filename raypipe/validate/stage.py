"""The validate stage: choose the schema, check and profile every split, quarantine bad rows.

Per split, one pass (``checks.check_block``) annotates every row with a reason (or
None) and computes the counts, the profile and the row hashes of the block; only
those small results reach the driver. ``valid + quarantined == input rows`` holds
per split and is recorded in the report. Column findings (see ``checks.finding``)
are errors or warnings; errors (and warnings with ``validate.strict``) fail the
stage with one :class:`DataValidationError` after every split was checked.

Written to the stage artifact: ``valid/<split>``, ``quarantine/<split>`` (every
invalid row with its ``__reason``), ``schema.json``, ``profile.json`` (train),
``report.json`` and ``report.html``. The reference (see ``reference.py``) lives in
the pipeline's root store.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from raypipe.datasets import has_rows, read_parquet, write_parquet
from raypipe.errors import DataValidationError
from raypipe.validate import reference as refs
from raypipe.validate.checks import (
    HASHES,
    REASON,
    STATS,
    check_block,
    constant_findings,
    duplicate_findings,
    merge_stats,
    missing_column_findings,
    null_findings,
    row_findings,
    shape_key,
    target_findings,
)
from raypipe.validate.profile import (
    count_duplicates,
    finish,
    merge_profiles,
    reference_bounds,
    to_floats,
)
from raypipe.validate.report_html import render
from raypipe.validate.schema import complete_schema, infer_schema

SPLITS = ("train", "validation", "test")
REPORT_FORMAT = "raypipe.validate-report/1"


@dataclass
class SplitCheck:
    """One split after its pass: the annotated rows (materialised), counts and profile."""

    annotated: Any
    stats: dict[str, Any]
    profile: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return {"input": self.stats["rows"], "valid": self.stats["rows"] - self.stats["invalid"],
                "quarantined": self.stats["invalid"]}


# --- schema -------------------------------------------------------------------------------------
def _text_columns(spec: Any) -> list[str]:
    cols = list(spec.features.text.columns)
    if spec.data.source.type == "text" and "text" not in cols:
        cols.append("text")
    return cols


def _image_shape_from_spec(source: Any) -> list[int] | None:
    if source.type != "images":
        return None
    h, w = source.size
    return [h, w, 3] if source.mode == "RGB" else [h, w]


def _load_schema(spec: Any, arrow_schema: Any, ref: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The schema to enforce and where it came from: a schema file, the reference, or inferred."""
    data, cfg = spec.data, spec.validate_
    if cfg.schema_ != "infer":
        with open(cfg.schema_) as f:
            schema, source = json.load(f), "file"
    elif ref is not None:
        schema, source = copy.deepcopy(ref["schema"]), "reference"
    else:
        schema = infer_schema(arrow_schema, target=data.target, task=data.task, id_columns=data.id_columns,
                              text_columns=_text_columns(spec))
        source = "inferred"
    complete_schema(schema)
    for name, col in schema["columns"].items():
        if col["type"] == "image" and not col.get("shape") and name == "image":
            col["shape"] = _image_shape_from_spec(data.source)
    return schema, source


def _settle_schema(schema: dict[str, Any], train: SplitCheck, source: str) -> None:
    """What the training split decides: classes, nullable (inferred schemas), image shapes."""
    target = schema.get("target")
    if target and target["task"] == "classification":
        target["classes"] = sorted(train.stats["classes"])
    if source == "inferred":  # serving requires the columns that were never missing
        for c, col in schema["columns"].items():
            col["nullable"] = train.stats["nulls"].get(c, 0) > 0
    for c, col in schema["columns"].items():
        seen = train.profile["columns"].get(c, {}).get("shape")
        if col["type"] == "image" and seen and (not col.get("shape") or shape_key(seen) == shape_key(col["shape"])):
            col["shape"] = seen  # the exact form the data has, e.g. [h, w, 1] rather than [h, w]


# --- the pass -----------------------------------------------------------------------------------
def _first_cells(table: Any) -> Any:
    import pyarrow.compute as pc

    return table.filter(pc.is_valid(table[STATS]))


def _check_split(ds: Any, rows: int, schema: dict[str, Any], classes: list[str] | None,
                 bounds: dict[str, Any]) -> SplitCheck:
    """One pass over a split; the driver gets each batch's counts, profile and row hashes."""
    annotated = ds.map_batches(
        check_block, fn_kwargs={"schema": schema, "classes": classes, "bounds": bounds},
        batch_format="pandas", batch_size=None,  # a block per batch: re-slicing blocks into batches cost more
    ).materialize()
    cells = annotated.select_columns([STATS, HASHES]).map_batches(
        _first_cells, batch_format="pyarrow", batch_size=None).take_all()
    docs = [json.loads(c[STATS]) for c in cells]
    hashes = [np.frombuffer(c[HASHES], dtype=np.uint64) for c in cells]
    profile = finish(merge_profiles([d["profile"] for d in docs]), duplicates=count_duplicates(hashes))
    return SplitCheck(annotated, merge_stats([d["stats"] for d in docs]), profile)


def _pick(table: Any, valid: bool, schema: dict[str, Any]) -> Any:
    """The valid rows (numbers as numbers, no internal columns) or the invalid ones with their reason."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.is_null(table[REASON])
    table = table.filter(mask if valid else pc.invert(mask)).drop_columns([STATS, HASHES])
    if not valid:
        return table.set_column(table.column_names.index(REASON), REASON, pc.cast(table[REASON], pa.string()))
    table = table.drop_columns([REASON])
    for name, col in schema["columns"].items():
        if col["type"] in ("number", "integer") and name in table.column_names:
            t = table[name].type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                floats = pa.array(to_floats(table[name].to_pandas()), type=pa.float64(), from_pandas=True)
                table = table.set_column(table.column_names.index(name), name, floats)
                table = table.replace_schema_metadata(None)  # pandas metadata would still say text
    return table


def _write(check: SplitCheck, ctx: Any, split: str, schema: dict[str, Any]) -> None:
    def rows(valid: bool) -> Any:
        return check.annotated.map_batches(_pick, fn_kwargs={"valid": valid, "schema": schema},
                                           batch_format="pyarrow", batch_size=None)

    counts = check.counts
    assert counts["valid"] + counts["quarantined"] == counts["input"]
    if counts["valid"]:
        write_parquet(rows(True), ctx.artifact, f"valid/{split}")
    if counts["quarantined"]:
        write_parquet(rows(False), ctx.artifact, f"quarantine/{split}")


# --- findings -----------------------------------------------------------------------------------
def _split_findings(split: str, check: SplitCheck, schema: dict[str, Any], cfg: Any,
                    ref: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = null_findings(check.stats, schema, cfg.max_missing_fraction, split)
    out += duplicate_findings(check.profile, cfg.max_duplicate_fraction, split)
    if ref is not None:
        out += refs.drift_findings(check.profile, ref["profile"], cfg, split)
    if cfg.on_invalid_rows == "fail":
        out += row_findings(check.stats, split)
    return out


def _train_findings(train: SplitCheck, schema: dict[str, Any], arrow_schema: Any, source: str,
                    cfg: Any) -> list[dict[str, Any]]:
    """Findings about the columns as a whole, from the training split."""
    present = list(arrow_schema.names)
    label = {"file": "the schema file", "reference": "the reference schema"}.get(source, "the schema")
    out = missing_column_findings(schema, present, label)
    if source != "inferred":
        out += refs.schema_findings(schema, arrow_schema, train.stats, cfg.max_missing_fraction, label)
    out += target_findings(schema, train.stats, present)
    out += constant_findings(train.profile, schema, "train")
    return out


# --- report -------------------------------------------------------------------------------------
def _split_report(check: SplitCheck) -> dict[str, Any]:
    st, rows = check.stats, max(check.stats["rows"], 1)
    return {**check.counts, "reasons": st["reasons"], "examples": st["examples"],
            "null_fraction": {c: n / rows for c, n in st["nulls"].items()},
            "duplicates": check.profile["duplicates"], "duplicate_fraction": check.profile["duplicate_fraction"]}


def _write_report(ctx: Any, report: dict[str, Any]) -> None:
    ctx.artifact.write_json("report.json", report)
    ctx.artifact.write_bytes("report.html", render(report).encode())


def run(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    ctx.ray()
    ingest, cfg = inputs["ingest"], ctx.spec.validate_
    rows = {s: n for s, n in ingest.outputs["rows"].items() if n}
    datasets = {s: read_parquet(ingest.store, ingest.outputs["splits"][s]) for s in rows}
    if "train" not in datasets:
        raise DataValidationError(["the train split is empty: the source has too few rows for data.split"])
    ref = refs.load_reference(ctx.root, ctx.spec.name) if cfg.reference == "first_run" else None
    arrow_schema = datasets["train"].schema().base_schema
    schema, source = _load_schema(ctx.spec, arrow_schema, ref)
    bounds = reference_bounds(ref["profile"]) if ref else {}
    checks: dict[str, SplitCheck] = {}
    findings: list[dict[str, Any]] = []
    for split in SPLITS:
        if split not in datasets:
            continue
        classes = schema["target"].get("classes") if split != "train" and schema.get("target") else None
        checks[split] = _check_split(datasets[split], rows[split], schema, classes, bounds)
        if split == "train":
            _settle_schema(schema, checks["train"], source)
            findings += _train_findings(checks["train"], schema, arrow_schema, source, cfg)
        findings += _split_findings(split, checks[split], schema, cfg, ref)
    refs.apply_strict(findings, cfg.strict)
    errors = [f["message"] for f in findings if f["severity"] == "error"]
    warnings = [f["message"] for f in findings if f["severity"] == "warning"]
    ref_status = "off" if cfg.reference == "none" else "checked" if ref else "written" if not errors else "not written"
    report = {
        "format": REPORT_FORMAT, "pipeline": ctx.spec.name, "run_id": ctx.run_id,
        "status": "failed" if errors else "passed", "schema_source": source,
        "reference": {"mode": cfg.reference, "status": ref_status, "location": ctx.root.full_uri(refs.DIR, ctx.spec.name)},
        "splits": {s: _split_report(c) for s, c in checks.items()},
        "findings": findings, "errors": errors, "warnings": warnings,
        "schema": schema, "profile": checks["train"].profile,
    }
    _write_report(ctx, report)
    for w in warnings:
        ctx.log(f"warning: {w}")
    if errors:
        ctx.log(f"data report: {ctx.artifact.full_uri('report.html')}")
        raise DataValidationError(errors)
    for split, check in checks.items():
        _write(check, ctx, split, schema)
    ctx.artifact.write_json("schema.json", schema)
    ctx.artifact.write_json("profile.json", checks["train"].profile)
    if ref_status == "written":
        refs.save_reference(ctx.root, ctx.spec.name, schema, checks["train"].profile)
    counts = {s: c.counts for s, c in checks.items()}
    quarantined = sum(c["quarantined"] for c in counts.values())
    ctx.log(f"schema ({source}): {len(schema['columns'])} columns; quarantined rows: {quarantined}; "
            f"warnings: {len(warnings)}; reference: {ref_status}")
    return {
        "schema": "schema.json",
        "profile": "profile.json",
        "report": "report.json",
        "report_html": "report.html",
        "splits": {s: f"valid/{s}" for s in checks if has_rows(ctx.artifact, f"valid/{s}")},
        "counts": counts,
        "quarantined": quarantined,
        "warnings": warnings,
        "reference": ref_status,
    }
