"""Row- and column-level data checks, vectorised on pandas batches.

``annotate`` gives every row a reason (or None); ``check_block`` does the whole
per-block work of the validate pass: it annotates the rows and computes, in the
same pass, the block's counts (``batch_stats``), its profile and its row hashes. The
merged counts become findings a person can act on.

A finding is ``{"severity": "error"|"warning", "check", "column", "value",
"limit", "message", "split"}``.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from raypipe.columns import as_float
from raypipe.dates import unparsable
from raypipe.tasks import TASKS
from raypipe.schema import NUMERIC_TYPES, feature_columns, label_strings
from raypipe.validate.profile import block_profile, row_hashes, text_value_counts

REASON = "__reason"
INTERNAL = (REASON,)
MAX_EXAMPLES = 3
_VALUE_DETAIL = re.compile(r": (?:'.*'|\".*\")$", re.DOTALL)  # a reason's trailing quoted value: "d: not a date: '31/31'"
Check = tuple[np.ndarray, "str | np.ndarray"]  # a mask and its reason (one text, or one per row)


def reason_key(reason: str) -> str:
    """A row's reason without the value it may quote: what the counts and findings group by."""
    return _VALUE_DETAIL.sub("", reason)


def date_check(name: str, col: dict[str, Any], s: pd.Series) -> Check:
    """Rows of a ``datetime`` column whose value is present but no date in the column's format.

    The reason quotes the value (``Year: not a date: '31/31/2024'``); the counts group by
    ``Year: not a date`` (:func:`reason_key`).
    """
    bad = unparsable(s, col.get("format", "iso"))
    texts = np.full(len(s), None, dtype=object)
    if bad.any():
        values = s.to_numpy(dtype=object)
        texts[bad] = [f"{name}: not a date: {str(v)[:60]!r}" for v in values[bad]]
    return bad, texts


# --- rows ---------------------------------------------------------------------------------------
def shape_key(shape: Any) -> tuple[int, ...]:
    """A shape without trailing 1s: a (h, w) image and a (h, w, 1) one are the same."""
    dims = [int(d) for d in shape]
    while dims and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def _wrong_shape(s: pd.Series, shape: list[int]) -> np.ndarray:
    want = shape_key(shape)
    return np.fromiter(
        (v is not None and not (isinstance(v, float) and np.isnan(v)) and shape_key(np.shape(v)) != want
         for v in s.to_numpy(dtype=object)),
        dtype=bool, count=len(s),
    )


def _value_checks(name: str, col: dict[str, Any], s: pd.Series, xf: np.ndarray | None) -> list[tuple[np.ndarray, str]]:
    """Rows outside a schema file's declared ``min``/``max``/``values`` for one column."""
    out = []
    if xf is not None and col.get("min") is not None:
        out.append((xf < float(col["min"]), f"{name}: below the schema minimum {col['min']}"))
    if xf is not None and col.get("max") is not None:
        out.append((xf > float(col["max"]), f"{name}: above the schema maximum {col['max']}"))
    if col.get("values") is not None:
        if xf is not None:
            bad = ~np.isin(xf, np.asarray(col["values"], dtype=np.float64)) & ~np.isnan(xf)
        else:
            text = label_strings(s) if pd.api.types.is_numeric_dtype(s) else s.astype(str)
            bad = s.notna().to_numpy() & ~text.isin([str(v) for v in col["values"]]).to_numpy()
        out.append((bad, f"{name}: value not among the schema's allowed values"))
    return out


def _column_checks(name: str, col: dict[str, Any], s: pd.Series) -> list[Check]:
    """(mask, reason) pairs for one column, in the order they are applied."""
    checks: list[Check] = []
    xf = None
    if col["type"] in ("number", "integer"):
        xf = as_float(s)
        checks += [(s.notna().to_numpy() & np.isnan(xf), f"{name}: not a number"),
                   (np.isinf(xf), f"{name}: infinite value")]
    elif col["type"] == "image" and col.get("shape"):
        shape = "x".join(str(d) for d in col["shape"])
        checks.append((_wrong_shape(s, col["shape"]), f"{name}: image of the wrong shape (expected {shape})"))
    elif col["type"] == "datetime":
        checks.append(date_check(name, col, s))
    return checks + _value_checks(name, col, s, xf)


def _known(t: pd.Series, classes: list[str]) -> np.ndarray:
    """Per row: the label is one of ``classes`` (or missing); only distinct values become text."""
    codes, uniques = pd.factorize(t, use_na_sentinel=True)
    known = label_strings(pd.Series(uniques)).isin(classes).to_numpy()
    return np.append(known, True)[codes]  # code -1 (missing) picks the appended True


def annotate(batch: pd.DataFrame, schema: dict[str, Any], classes: list[str] | None = None) -> pd.DataFrame:
    """Add a ``__reason`` column: why a row is invalid (the first reason found), or None."""
    reasons = np.full(len(batch), None, dtype=object)
    flagged = np.zeros(len(batch), dtype=bool)

    def flag(mask: np.ndarray, text: str | np.ndarray) -> None:
        new = mask & ~flagged
        if new.any():
            reasons[new] = text if isinstance(text, str) else text[new]
            flagged[new] = True

    for name, col in schema["columns"].items():
        if name in batch.columns:
            for mask, text in _column_checks(name, col, batch[name]):
                flag(mask, text)
    target = schema.get("target")
    if target and target["name"] in batch.columns:
        t = batch[target["name"]]
        flag(t.isna().to_numpy(), f"{target['name']}: target is missing")
        if classes is not None:
            flag(~_known(t, classes), f"{target['name']}: class not seen in the training split")
    batch[REASON] = reasons
    return batch


def coerce_numeric(batch: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Numbers that arrived as text (CSV) continue as float64 numbers."""
    for name, col in schema["columns"].items():
        if col["type"] in ("number", "integer") and name in batch.columns:
            s = batch[name]
            if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
                batch[name] = as_float(s)
    return batch


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
def finding(severity: str, check: str, message: str, *, column: str | None = None, value: Any = None,
            limit: Any = None, split: str | None = None) -> dict[str, Any]:
    """One column- or data-level result for the report (and, for errors, the raised error)."""
    prefix = f"{split}: " if split else ""
    return {"severity": severity, "check": check, "column": column, "value": value, "limit": limit,
            "split": split, "message": prefix + message}


def missing_column_findings(schema: dict[str, Any], present: list[str], source: str = "the schema") -> list[dict[str, Any]]:
    """An error for each schema column the data lacks."""
    target = schema["target"]["name"] if schema.get("target") else None
    out = []
    for c, col in schema["columns"].items():
        if c in present:
            continue
        role = "the target column" if c == target else f"expected by {source} as {col['type']}"
        out.append(finding("error", "missing_column", f"column {c!r} is missing from the data ({role}); add it back "
                           "to the source, or reset the reference if it was removed on purpose", column=c))
    return out


def null_findings(stats: dict[str, Any], schema: dict[str, Any], max_missing: float,
                  split: str | None = None) -> list[dict[str, Any]]:
    """An error for each schema column with more missing values than allowed."""
    rows = max(stats["rows"], 1)
    out = []
    for c, n in sorted(stats["nulls"].items()):
        frac = n / rows
        if c in schema["columns"] and frac > max_missing:
            out.append(finding(
                "error", "missing_values",
                f"column {c!r}: {frac:.1%} missing values > validate.max_missing_fraction={max_missing:g}; "
                "fix the source or raise the limit", column=c, value=round(frac, 6), limit=max_missing, split=split))
    return out


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
