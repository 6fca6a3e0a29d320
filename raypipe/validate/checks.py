"""Row- and column-level data checks, vectorised on pandas batches.

``raypipe.rowchecks.annotate`` gives every row a reason (or None); ``check_block`` does the whole
per-block work of the validate pass: it annotates the rows and computes, in the
same pass, the block's counts (``batch_stats``), its profile and its row hashes. The
merged counts become findings a person can act on.

A finding is ``{"severity": "error"|"warning", "check", "column", "value",
"limit", "message", "split"}``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from raypipe.rowchecks import (INTERNAL, MAX_EXAMPLES, REASON, REASON_KEY, annotate_block, from_parsed, coerce_numeric,
                               finding)
from raypipe.tasks import TASKS
from raypipe.schema import NUMERIC_TYPES, feature_columns
from raypipe.validate.profile import block_profile, row_hashes, text_value_counts

# --- per block counts ---------------------------------------------------------------------------
def _example(v: Any) -> Any:
    if v is None or (np.ndim(v) == 0 and pd.isna(v)):
        return None
    if isinstance(v, np.ndarray):
        return f"<array of shape {list(v.shape)}>"
    return str(v)


def batch_stats(batch: pd.DataFrame, target: str | None, unparsed: dict[str, int] | None = None,
                valid: pd.DataFrame | None = None) -> dict[str, Any]:
    """Mergeable counts of one annotated block.

    Reasons are counted by their key (the reason without the offending value), with a few
    of those values as examples. ``unparsed``: per column, values that did not parse as its
    type. ``valid``: the block's valid rows in their schema types, whose labels are the
    classes (all rows with a label when not given).
    """
    keys = batch[REASON_KEY] if REASON_KEY in batch else batch[REASON]
    bad = keys.notna()
    reasons = keys[bad].value_counts().to_dict()
    examples: dict[str, list[Any]] = {}
    for reason in reasons:
        col = reason.split(":", 1)[0]
        vals = batch.loc[keys == reason, col].head(MAX_EXAMPLES) if col in batch else []
        examples[reason] = [_example(v) for v in vals]
    out = {
        "rows": len(batch),
        "invalid": int(bad.sum()),
        "reasons": {str(k): int(v) for k, v in reasons.items()},
        "examples": examples,
        "nulls": {c: int(batch[c].isna().sum()) for c in batch.columns if c not in INTERNAL},
        "unparsed": dict(unparsed or {}),
        "classes": {},
    }
    labelled = batch if valid is None else valid
    if target and target in labelled.columns:
        out["classes"] = {str(k): int(v) for k, v in text_value_counts(labelled[target]).items()}
    return out


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counts of many blocks; keep the first few examples of each reason."""
    total: dict[str, Any] = {"rows": 0, "invalid": 0, "reasons": {}, "examples": {}, "nulls": {}, "unparsed": {},
                             "classes": {}}
    for p in parts:
        total["rows"] += p["rows"]
        total["invalid"] += p["invalid"]
        for key in ("reasons", "nulls", "unparsed", "classes"):
            for k, v in p.get(key, {}).items():
                total[key][k] = total[key].get(k, 0) + v
        for k, v in p["examples"].items():
            total["examples"].setdefault(k, []).extend(v)
    for k in total["examples"]:
        total["examples"][k] = total["examples"][k][:MAX_EXAMPLES]
    return total


class BlockCheck(NamedTuple):
    """One block after the check pass."""

    rows: pd.DataFrame  # the input rows as they came, with ``__reason`` (None for a valid row)
    valid: pd.DataFrame  # the valid rows, without ``__reason``, in their schema types (``coerce_numeric``)
    summary: dict[str, Any]  # {"stats": batch_stats, "profile": block_profile of the valid rows}
    hashes: np.ndarray  # uint64 hash of each valid row, for the exact duplicate count


def check_block(batch: pd.DataFrame, schema: dict[str, Any], classes: list[str] | None,
                bounds: dict[str, Any] | None) -> BlockCheck:
    """The single pass over a block: annotate its rows, count, profile and hash the valid ones."""
    target = schema["target"]["name"] if schema.get("target") else None
    batch, unparsed, parsed = annotate_block(batch, schema, classes)
    ok = batch[REASON].isna().to_numpy()
    valid = (batch if ok.all() else batch[ok]).drop(columns=list(INTERNAL))
    for name, values in parsed.items():  # the text the checks parsed is not parsed again
        valid[name] = from_parsed(valid[name], values if ok.all() else values[ok], schema["columns"][name]["type"])
    valid = coerce_numeric(valid, schema)  # counted, profiled and written in their types
    stats = batch_stats(batch, target, unparsed, valid)
    rows = batch.drop(columns=[REASON_KEY])
    return BlockCheck(rows, valid, {"stats": stats, "profile": block_profile(valid, schema, bounds)},
                      row_hashes(valid, schema))


# --- findings -----------------------------------------------------------------------------------
def row_findings(stats: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """``on_invalid_rows: fail``: an error for each reason rows were invalid, with examples."""
    out = []
    for reason, n in sorted(stats["reasons"].items()):
        col = reason.split(":", 1)[0]
        out.append(finding("error", "invalid_rows", f"{n} row(s) invalid — {reason} (e.g. {stats['examples'].get(reason, [])})",
                           column=col, value=n, limit=0, split=split))
    return out


def duplicate_findings(profile: dict[str, Any], limit: float, split: str) -> list[dict[str, Any]]:
    """A warning when more rows than allowed are exact copies of another row."""
    frac = profile.get("duplicate_fraction") or 0.0
    if frac <= limit:
        return []
    return [finding("warning", "duplicates",
                    f"{frac:.1%} of rows ({profile['duplicates']:,}) are exact duplicates of another row > "
                    f"validate.max_duplicate_fraction={limit:g}; deduplicate the source or raise the limit",
                    value=round(frac, 6), limit=limit, split=split)]


def constant_findings(profile: dict[str, Any], schema: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """A warning for each feature column holding a single value."""
    feats = set(feature_columns(schema))
    out = []
    for c in profile.get("constant_columns", []):
        if c in feats:
            value = profile["columns"][c].get("constant_value")
            out.append(finding("warning", "constant_column",
                               f"column {c!r} holds the single value {value!r} in every row and carries no "
                               "information; drop it from the source or list it in data.id_columns",
                               column=c, value=value, split=split))
    return out


def column_kind_findings(schema: dict[str, Any], profile: dict[str, Any], high_cardinality: int,
                         split: str = "train") -> list[dict[str, Any]]:
    """Warnings about what a column's values say it is: identifier-like, very many categories, a
    date column whose day/month order was a default (see :func:`raypipe.schema.refine_schema`)."""
    feats = set(feature_columns(schema))
    out = []
    for c, col in schema["columns"].items():
        if col.get("id_like"):
            frac = col.get("distinct_fraction", 1.0)
            fate = ("it is kept out of the features (one-hot of an identifier learns nothing that generalises)"
                    if col["type"] == "string" else "it is used as a number")
            out.append(finding("warning", "id_like",
                               f"column {c!r} looks like an identifier: {frac:.1%} of its values are distinct; {fate}; "
                               "list it in data.id_columns to say so, or drop it from the source",
                               column=c, value=frac, split=split))
        if col.get("ambiguous_order"):
            out.append(finding("warning", "date_order",
                               f"column {c!r}: every date reads both day/month and month/day (e.g. 01/03/2024); read "
                               "as month/day (mdy); set validate.dayfirst: true if it is day/month",
                               column=c, value="mdy", split=split))
        distinct = profile.get("columns", {}).get(c, {}).get("distinct")
        n = int(str(distinct).rstrip("+")) if distinct is not None else 0
        if c in feats and col["type"] == "string" and n > high_cardinality:
            out.append(finding("warning", "high_cardinality",
                               f"column {c!r} has {distinct} distinct values > validate.high_cardinality="
                               f"{high_cardinality}; one-hot keeps the features.categorical.max_categories most "
                               "frequent and the rest share __other__; list it in data.id_columns if it identifies "
                               "rows, or use features.categorical.encode: hashing",
                               column=c, value=distinct, limit=high_cardinality, split=split))
    return out


def target_findings(schema: dict[str, Any], stats: dict[str, Any], present: list[str]) -> list[dict[str, Any]]:
    """Errors when the training target cannot be learned: one class only, or a non-numeric regression target."""
    target = schema.get("target")
    if not target or target["name"] not in present:
        return []
    name, task = target["name"], target["task"]
    if TASKS[task].has_classes and len(stats["classes"]) < 2:
        seen = sorted(stats["classes"])
        return [finding("error", "target", f"target {name!r} has {len(seen)} class(es) {seen} in the training split; "
                        "classification needs at least 2: check data.target and the source",
                        column=name, value=len(seen), limit=2, split="train")]
    if TASKS[task].scores == "value" and target["type"] not in NUMERIC_TYPES:
        return [finding("error", "target", f"target {name!r} is {target['type']} but task regression needs numbers; "
                        "convert the column or choose task classification", column=name, value=target["type"],
                        limit="number", split="train")]
    return []


def quarantine_findings(stats: dict[str, dict[str, Any]], limit: float) -> list[dict[str, Any]]:
    """An error when more of the input rows (all splits) were quarantined than ``limit`` allows,
    with the count of each reason: a source that bad is not trained on quietly."""
    total = sum(st["rows"] for st in stats.values())
    bad = sum(st["invalid"] for st in stats.values())
    frac = bad / total if total else 0.0
    if frac <= limit:
        return []
    reasons: dict[str, int] = {}
    examples: dict[str, list[Any]] = {}
    for st in stats.values():
        for reason, n in st["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
            examples.setdefault(reason, [])
            examples[reason] += st["examples"].get(reason, [])[: MAX_EXAMPLES - len(examples[reason])]
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = "; ".join(f"{reason}: {n:,} (e.g. {examples[reason]})" for reason, n in top[:8])
    more = f"; and {len(top) - 8} more reason(s)" if len(top) > 8 else ""
    return [finding("error", "quarantined_rows",
                    f"{frac:.1%} of the rows ({bad:,} of {total:,}) were quarantined > validate.max_quarantine_fraction="
                    f"{limit:g} — {shown}{more}; fix the source (or the schema), or raise the limit",
                    value=round(frac, 6), limit=limit)]


# A numeric target that looks like a quantity rather than classes (``task: classification``):
REGRESSION_MIN_DECIMALS = 20  # more distinct values than this, most rows not whole numbers
REGRESSION_MIN_INTEGERS = 50  # more distinct whole numbers than this, and not class codes 0..k-1 or 1..k


def looks_like_regression(target: dict[str, Any], classes: dict[str, int]) -> str | None:
    """Why a numeric classification target looks like a regression target, or None.

    Class labels are few, or, when many, codes a label encoder wrote (0..k-1 or 1..k, every
    one present). A quantity has many distinct values: mostly not whole numbers (prices,
    measurements), or whole numbers with gaps or an offset (counts, ages). Thresholds: more
    than 20 distinct values with most rows not whole numbers, or more than 50 distinct whole
    numbers that are not such codes. The bundled classification sets have at most 10 classes.
    """
    if target["type"] not in ("number", "integer") or len(classes) <= REGRESSION_MIN_DECIMALS:
        return None
    values = np.array([float(k) for k in classes], dtype=np.float64)
    rows = np.array(list(classes.values()), dtype=np.float64)
    whole = values == np.round(values)
    name, k = target["name"], len(classes)
    hint = ("set data.task: regression (if they really are classes, give the column text labels such as 'c17', "
            "and the classes are kept)")
    if rows[~whole].sum() > rows.sum() / 2:
        return (f"target {name!r} looks like regression: {k} distinct values, {rows[~whole].sum() / rows.sum():.0%} of "
                f"the rows not whole numbers, under task: classification; {hint}")
    if whole.all() and k > REGRESSION_MIN_INTEGERS:
        codes = np.sort(values).astype(np.int64)
        if not (np.array_equal(codes, np.arange(k)) or np.array_equal(codes, np.arange(1, k + 1))):
            return (f"target {name!r} looks like regression: {k} distinct values, whole numbers from {codes[0]} to "
                    f"{codes[-1]} (not class codes 0..{k - 1}), under task: classification; {hint}")
    return None
