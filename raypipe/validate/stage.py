"""The validate stage: choose the schema, check and profile every split, quarantine bad rows.

A plain Ray task per parquet file of the splits (``sink.check_and_write`` on the file as one
block; for small data one Ray task running it on every file, ``datasets.SMALL_DATA_BYTES``)
annotates every row with a reason (or None), writes it to ``valid/`` or ``quarantine/`` from the same
task, and returns the block's counts, profile and row hashes; only those small
results reach the driver. ``valid + quarantined == input rows`` holds per split
(and the input equals what ingest wrote) and is recorded in the report. Column findings (see ``checks.finding``)
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

from raypipe.datasets import footer_rows, has_rows, is_small, parquet_schema
from raypipe.errors import ArtifactError, DataValidationError, SpecError
from raypipe.tasks import TASKS
from raypipe.stage import SPLITS, StageContext, StageOutput, ValidateOutput
from raypipe.validate import infer
from raypipe.validate import reference as refs
from raypipe.validate import sink
from raypipe.rowchecks import missing_column_findings, null_findings, shape_key
from raypipe.validate.checks import (column_kind_findings, constant_findings, duplicate_findings, looks_like_regression,
                                     merge_stats, quarantine_findings, row_findings, target_findings)
from raypipe.validate.profile import count_duplicates, finish, merge_profiles, reference_bounds
from raypipe.validate.report_html import render
from raypipe.schema import complete_schema, infer_schema, refine_schema

REPORT_FORMAT = "raypipe.validate-report/1"
SAMPLE_ROWS = 10_000  # training rows an inferred schema's dates and identifiers are judged on


@dataclass
class SplitCheck:
    """One split after its pass: its counts and profile (its rows are written by then)."""

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


def _sample(store: Any, rel: str, schema: dict[str, Any], small: bool) -> Any:
    """The first :data:`SAMPLE_ROWS` training rows of the string and integer columns (None when there are none).

    Small data: one Ray task (or the driver) reads them; larger: this process reads the first files
    until it has them, as Ray Data's ``take_batch`` would.
    """
    cols = [c for c, col in schema["columns"].items() if col["type"] in ("string", "integer")]
    if not cols:
        return None
    if small:
        from raypipe.datasets import run_small

        return run_small(_first_rows, store, rel, cols, SAMPLE_ROWS)
    return _first_rows_of_files(store, rel, cols, SAMPLE_ROWS)


def _first_rows_of_files(store: Any, rel: str, columns: list[str], n: int) -> Any:
    """The first ``n`` rows of the split, reading its files in order only as far as needed."""
    import pyarrow as pa

    from raypipe.datasets import as_batch, parquet_files, read_file

    tables, rows = [], 0
    for path in parquet_files(store, rel):
        tables.append(read_file(store, path, columns))
        rows += tables[-1].num_rows
        if rows >= n:
            break
    return as_batch(pa.concat_tables(tables, promote_options="permissive").slice(0, n), "pandas")


def _first_rows(store: Any, rel: str, columns: list[str], n: int) -> Any:
    from raypipe.datasets import as_batch, read_table

    return as_batch(read_table(store, rel, columns).slice(0, n), "pandas")


def _load_schema(spec: Any, arrow_schema: Any, ref: dict[str, Any] | None, inputs: Inputs
                 ) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The schema to enforce, where it came from (a schema file, the reference, or inferred) and,
    when inferred, how its text columns were typed (``infer.decide``).

    An inferred schema types text columns by majority over the training split
    (:mod:`raypipe.validate.infer`), then is refined on a sample of it: date strings,
    identifier-like columns (:func:`raypipe.schema.refine_schema`).
    """
    data, cfg = spec.data, spec.validate_
    inference: dict[str, Any] = {}
    if cfg.schema_ != "infer":
        with open(cfg.schema_) as f:
            schema, source = json.load(f), "file"
    elif ref is not None:
        schema, source = copy.deepcopy(ref["schema"]), "reference"
    else:
        roles = infer.text_columns(arrow_schema, target=data.target, id_columns=data.id_columns,
                                   free_text=_text_columns(spec))
        inference = infer.infer_text_types(inputs.store, inputs.rels["train"], roles, cfg.infer, inputs.small)
        audio = {"audio": data.source.sample_rate} if data.source.type == "audio" else None
        schema = infer_schema(arrow_schema, target=data.target, task=data.task, id_columns=data.id_columns,
                              text_columns=_text_columns(spec), audio_columns=audio,
                              column_types={c: d["type"] for c, d in inference.items() if d["type"] != "string"})
        sample = _sample(inputs.store, inputs.rels["train"], schema, inputs.small)
        if sample is not None:
            refine_schema(schema, sample, datetime_fraction=cfg.datetime_fraction, dayfirst=cfg.dayfirst,
                          id_fraction=cfg.id_fraction)
        source = "inferred"
    complete_schema(schema)
    for name, col in schema["columns"].items():
        if col["type"] == "image" and not col.get("shape") and name == "image":
            col["shape"] = _image_shape_from_spec(data.source)
    return schema, source, inference


def _settle_schema(schema: dict[str, Any], train: SplitCheck, source: str) -> None:
    """What the training split decides: classes, nullable (inferred schemas), image shapes."""
    target = schema.get("target")
    if target and TASKS[target["task"]].has_classes:
        target["classes"] = sorted(train.stats["classes"])
    if source == "inferred":  # serving requires the columns that were never missing
        for c, col in schema["columns"].items():
            col["nullable"] = train.stats["nulls"].get(c, 0) > 0
    for c, col in schema["columns"].items():
        seen = train.profile["columns"].get(c, {}).get("shape")
        if col["type"] in ("image", "audio") and seen and (not col.get("shape") or shape_key(seen) == shape_key(col["shape"])):
            col["shape"] = seen  # the exact form the data has, e.g. [h, w, 1] rather than [h, w]


# --- the pass -----------------------------------------------------------------------------------
def _clear(artifact: Any, splits: list[str]) -> None:
    """Remove a split's rows of an earlier pass (a split checked again)."""
    for split in splits:
        for kind in ("valid", "quarantine"):
            artifact.delete(kind, split)


def _check_splits(splits: list[str], inputs: Inputs, schema: dict[str, Any], classes: list[str] | None,
                  bounds: dict[str, Any], artifact: Any) -> dict[str, SplitCheck]:
    """``sink.check_and_write`` on each block (parquet file) of the given splits: check, write valid/ and
    quarantine/, summarise.

    ``classes`` (the training classes) applies to every split but ``train``. Small splits (under
    :data:`raypipe.datasets.SMALL_DATA_BYTES` in all) are checked in one Ray task (or the driver),
    others in a plain Ray task per file (``sink.check_in_tasks``).
    """
    root, fs = artifact.path(), artifact.fs
    _clear(artifact, splits)
    kwargs = {split: {"schema": schema, "classes": None if split == "train" else classes, "bounds": bounds,
                      "fs": fs, "root": root, "split": split} for split in splits}
    if inputs.small:
        from raypipe.datasets import run_small

        summaries = run_small(sink.check_tables, inputs.store, {s: inputs.rels[s] for s in splits}, kwargs)
    else:
        from raypipe.datasets import parquet_files

        summaries = sink.check_in_tasks(inputs.store, {s: parquet_files(inputs.store, inputs.rels[s]) for s in splits},
                                        kwargs)
    checks = {}
    for split, (docs, hashes) in sink.collect(summaries).items():
        profile = finish(merge_profiles([d["profile"] for d in docs]), duplicates=count_duplicates(hashes))
        checks[split] = SplitCheck(merge_stats([d["stats"] for d in docs]), profile)
    return checks


@dataclass
class Inputs:
    """Where the splits' parquet files are, and whether they are small (read in one task, or the driver)."""

    store: Any
    rels: dict[str, str]
    small: bool


def _check_all(inputs: Inputs, schema: dict[str, Any], source: str, bounds: dict[str, Any],
               artifact: Any) -> dict[str, SplitCheck]:
    """All splits in one pass; a split holding a class the training split lacks is checked again.

    Validation and test rows of a class never seen in training (or of an image shape
    other than training's) are quarantined, but those are only known once the training
    split was read. Checking every split at once and redoing only a split that needs
    it (rare) saves a pass.
    """
    checks = _check_splits([s for s in SPLITS if s in inputs.rels], inputs, schema, None, bounds, artifact)
    _settle_schema(schema, checks["train"], source)
    target = schema.get("target")
    classes = target["classes"] if target and TASKS[target["task"]].has_classes else None
    again = [s for s, c in checks.items() if s != "train" and _needs_recheck(c, schema, classes)]
    if again:
        checks.update(_check_splits(again, inputs, schema, classes, bounds, artifact))
    return checks


def _needs_recheck(check: SplitCheck, schema: dict[str, Any], classes: list[str] | None) -> bool:
    """A class training lacks, or an image shape other than the one training settled on."""
    if classes is not None and not set(check.stats["classes"]) <= set(classes):
        return True
    for c, col in schema["columns"].items():
        if col["type"] in ("image", "audio") and col.get("shape"):
            shapes = check.profile["columns"].get(c, {}).get("shapes", {})
            if any(shape_key(k.split("x")) != shape_key(col["shape"]) for k in shapes):
                return True
    return False


# --- invariants ---------------------------------------------------------------------------------
def _check_task(schema: dict[str, Any], train: SplitCheck) -> None:
    """A numeric target of many distinct values under ``task: classification``: a SpecError, before training."""
    target = schema.get("target")
    if target and target["task"] == "classification":
        problem = looks_like_regression(target, train.stats["classes"])
        if problem:
            raise SpecError(problem)


def _check_rows_on_disk(ctx: Any, ingest: StageOutput, checks: dict[str, SplitCheck]) -> None:
    """``valid + quarantined == input == what ingest wrote``, each counted from the parquet footers
    of the files on disk, and equal to what the tasks reported; an ArtifactError otherwise.

    The tasks' own counts alone would not see a file lost, torn or written twice.
    """
    problems = []
    for split, check in checks.items():
        valid = footer_rows(ctx.artifact, f"valid/{split}")
        quarantined = footer_rows(ctx.artifact, f"quarantine/{split}")
        wrote = footer_rows(ingest.store, ingest.outputs.splits[split])
        disk = {"input": wrote, "valid": valid, "quarantined": quarantined}
        if valid + quarantined != wrote or disk != check.counts or wrote != ingest.outputs.rows[split]:
            problems.append(f"split {split!r}: on disk ingest's files hold {wrote} rows and validate's {valid} valid + "
                            f"{quarantined} quarantined = {valid + quarantined}; the tasks reported {check.counts}, "
                            f"ingest {ingest.outputs.rows[split]}")
    if problems:
        raise ArtifactError("validate's rows do not add up (parquet footers): " + "; ".join(problems)
                            + ". Run again with --force validate (or --force ingest)")


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
    out += column_kind_findings(schema, train.profile, cfg.high_cardinality)
    return out


# --- report -------------------------------------------------------------------------------------
def _split_report(check: SplitCheck) -> dict[str, Any]:
    st, rows = check.stats, max(check.stats["rows"], 1)
    return {**check.counts, "reasons": st["reasons"], "examples": st["examples"], "unparsed": st.get("unparsed", {}),
            "null_fraction": {c: n / rows for c, n in st["nulls"].items()},
            "duplicates": check.profile["duplicates"], "duplicate_fraction": check.profile["duplicate_fraction"],
            "classes": st["classes"]}  # valid rows per label: the train stage's class weights


def _write_report(ctx: Any, report: dict[str, Any]) -> None:
    ctx.artifact.write_json("report.json", report)
    ctx.artifact.write_bytes("report.html", render(report).encode())


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> ValidateOutput:
    ingest, cfg = inputs["ingest"], ctx.spec.validate_
    if ctx.spec.data.source is None:  # a policy learning from its environment alone: no rows to check
        return ValidateOutput(schema="", profile="", report="", report_html="", splits={}, counts={}, quarantined=0,
                              warnings=[], reference="off")
    rows = {s: n for s, n in ingest.outputs.rows.items() if n}
    rels = {s: ingest.outputs.splits[s] for s in rows}
    if "train" not in rels:
        raise DataValidationError(["the train split is empty: the source has too few rows for data.split"])
    ref = refs.load_reference(ctx.root, ctx.spec.name) if cfg.reference == "first_run" else None
    inputs = Inputs(ingest.store, rels, is_small(ingest.store, list(rels.values())))
    ctx.ray(small=inputs.small)
    # the files are read by one task (or the driver) when small, else by a plain task per file: no Ray Data
    arrow_schema = parquet_schema(ingest.store, rels["train"])
    schema, source, inference = _load_schema(ctx.spec, arrow_schema, ref, inputs)
    bounds = reference_bounds(ref["profile"]) if ref else {}
    checks = _check_all(inputs, schema, source, bounds, ctx.artifact)
    _check_task(schema, checks["train"])
    _check_rows_on_disk(ctx, ingest, checks)
    findings = _train_findings(checks["train"], schema, arrow_schema, source, cfg) + infer.findings(inference, cfg.infer)
    for split, check in checks.items():
        findings += _split_findings(split, check, schema, cfg, ref)
    if cfg.on_invalid_rows == "quarantine":
        findings += quarantine_findings({s: c.stats for s, c in checks.items()}, cfg.max_quarantine_fraction)
    refs.apply_strict(findings, cfg.strict)
    errors = [f["message"] for f in findings if f["severity"] == "error"]
    warnings = [f["message"] for f in findings if f["severity"] == "warning"]
    ref_status = "off" if cfg.reference == "none" else "checked" if ref else "written" if not errors else "not written"
    report = {
        "format": REPORT_FORMAT, "pipeline": ctx.spec.name, "run_id": ctx.run_id,
        "status": "failed" if errors else "passed", "schema_source": source,
        "reference": {"mode": cfg.reference, "status": ref_status, "location": ctx.root.full_uri(refs.DIR, ctx.spec.name)},
        "splits": {s: _split_report(c) for s, c in checks.items()}, "inference": inference,
        "findings": findings, "errors": errors, "warnings": warnings,
        "input_files": {"counts": ingest.outputs.files, "skipped": ingest.outputs.skipped_files},
        "schema": schema, "profile": checks["train"].profile,
    }
    _write_report(ctx, report)
    for w in warnings:
        ctx.log(f"warning: {w}")
    if errors:
        ctx.log(f"data report: {ctx.artifact.full_uri('report.html')}")
        raise DataValidationError(errors)
    splits, data_schema = {s: f"valid/{s}" for s in checks if has_rows(ctx.artifact, f"valid/{s}")}, schema
    if ctx.spec.features.windows is not None:
        from raypipe.validate.windows import add_to_splits

        splits, schema = add_to_splits(ctx.artifact, splits, ctx.spec.features.windows, schema)
        ctx.log(f"features.windows: {len(splits)} split(s) with {ctx.spec.features.windows.size}-reading windows "
                f"of {len(ctx.spec.features.windows.columns)} column(s) per {ctx.spec.features.windows.by}")
    ctx.artifact.write_json("schema.json", schema)
    ctx.artifact.write_json("profile.json", checks["train"].profile)
    if ref_status == "written":
        refs.save_reference(ctx.root, ctx.spec.name, data_schema, checks["train"].profile,
                            origin={"written_by": ctx.base_fingerprint, "saw": ctx.external})
    counts = {s: c.counts for s, c in checks.items()}
    quarantined = sum(c["quarantined"] for c in counts.values())
    ctx.log(f"schema ({source}): {len(schema['columns'])} columns; quarantined rows: {quarantined}; "
            f"warnings: {len(warnings)}; reference: {ref_status}")
    return ValidateOutput(
        schema="schema.json", profile="profile.json", report="report.json", report_html="report.html",
        splits=splits,
        counts=counts, quarantined=quarantined, warnings=warnings, reference=ref_status,
    )
