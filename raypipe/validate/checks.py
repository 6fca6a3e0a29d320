"""Row- and column-level data checks, vectorised on pandas batches.

The row checks themselves (``annotate``) and the missing-column / null findings live in
:mod:`raypipe.rowchecks` (the monitor checks windows with them); ``check_block`` does the whole
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

from raypipe.rowchecks import REASON, annotate, finding, reason_key
from raypipe.tasks import TASKS
from raypipe.schema import NUMERIC_TYPES, feature_columns
from raypipe.validate.profile import block_profile, row_hashes, text_value_counts

INTERNAL = (REASON,)
MAX_EXAMPLES = 3


# --- per block counts ---------------------------------------------------------------------------
def _example(v: Any) -> Any:
    if v is None or (np.ndim(v) == 0 and pd.isna(v)):
        return None
    if isinstance(v, np.ndarray):
        return f"<array of shape {list(v.shape)}>"
    return str(v)


def batch_stats(batch: pd.DataFrame, target: str | None) -> dict[str, Any]:
    """Mergeable counts of one annotated block (reasons grouped by :func:`reason_key`)."""
    bad = batch[REASON].notna()
    keys = batch.loc[bad, REASON].map(reason_key)
    reasons = keys.value_counts().to_dict()
    examples: dict[str, list[Any]] = {}
    for reason in reasons:
        col = reason.split(":", 1)[0]
        vals = batch.loc[keys.index[keys == reason], col].head(MAX_EXAMPLES) if col in batch else []
        examples[reason] = [_example(v) for v in vals]
    out = {
        "rows": len(batch),
        "invalid": int(bad.sum()),
        "reasons": {str(k): int(v) for k, v in reasons.items()},
        "examples": examples,
        "nulls": {c: int(batch[c].isna().sum()) for c in batch.columns if c not in INTERNAL},
        "classes": {},
    }
    if target and target in batch.columns:
        out["classes"] = {str(k): int(v) for k, v in text_value_counts(batch[target]).items()}
    return out


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counts of many blocks; keep the first few examples of each reason."""
    total: dict[str, Any] = {"rows": 0, "invalid": 0, "reasons": {}, "examples": {}, "nulls": {}, "classes": {}}
    for p in parts:
        total["rows"] += p["rows"]
        total["invalid"] += p["invalid"]
        for key in ("reasons", "nulls", "classes"):
            for k, v in p[key].items():
                total[key][k] = total[key].get(k, 0) + v
        for k, v in p["examples"].items():
            total["examples"].setdefault(k, []).extend(v)
    for k in total["examples"]:
        total["examples"][k] = total["examples"][k][:MAX_EXAMPLES]
    return total


class BlockCheck(NamedTuple):
    """One block after the check pass."""

    rows: pd.DataFrame  # the input rows with ``__reason`` (None for a valid row)
    valid: pd.DataFrame  # the valid rows, without ``__reason``
    summary: dict[str, Any]  # {"stats": batch_stats, "profile": block_profile of the valid rows}
    hashes: np.ndarray  # uint64 hash of each valid row, for the exact duplicate count


def check_block(batch: pd.DataFrame, schema: dict[str, Any], classes: list[str] | None,
                bounds: dict[str, Any] | None) -> BlockCheck:
    """The single pass over a block: annotate its rows, count, profile and hash the valid ones."""
    target = schema["target"]["name"] if schema.get("target") else None
    batch = annotate(batch, schema, classes)
    stats = batch_stats(batch, target)
    ok = batch[REASON].isna().to_numpy()
    valid = batch if ok.all() else batch[ok]
    valid = valid.drop(columns=[REASON])
    return BlockCheck(batch, valid, {"stats": stats, "profile": block_profile(valid, schema, bounds)},
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
