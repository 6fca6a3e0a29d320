"""Row- and column-level data checks, vectorised on pandas batches.

``annotate`` gives every row a reason (or None); ``check_block`` does the whole
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

from raypipe.columns import is_text, parse_booleans, parse_integers, parse_numbers, text_array
from raypipe.dates import unparsable
from raypipe.tasks import TASKS
from raypipe.schema import NUMERIC_TYPES, feature_columns, label_strings
from raypipe.validate.profile import block_profile, row_hashes, text_value_counts

REASON = "__reason"  # why a row is quarantined, with the offending value where one is to blame
REASON_KEY = "__reason_key"  # the reason without the value: what counts and examples are grouped by
INTERNAL = (REASON, REASON_KEY)
MAX_EXAMPLES = 3
MAX_VALUE_CHARS = 60  # an offending value longer than this is shortened in the reason


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


class Check(NamedTuple):
    """Rows one check flags: ``mask``; ``reason`` (the counted key); ``values``: the column whose
    value is named in each flagged row's reason (None: the reason alone); ``unparsed``: the mask
    counts as values of the column that did not parse as its type."""

    mask: np.ndarray
    reason: str
    values: pd.Series | None = None
    unparsed: bool = False


def _column_checks(name: str, col: dict[str, Any], s: pd.Series) -> tuple[list[Check], np.ndarray | None]:
    """The checks of one column, in the order they are applied, and the values of a numeric or
    boolean column that arrived as text, parsed (float64, NaN where missing or not parsed)."""
    checks: list[Check] = []
    xf = parsed = None
    if col["type"] in ("number", "integer"):
        p = parse_numbers(s)  # text by the grammar the inference counted with: the same values fail
        xf, parsed = p.values, p.values if is_text(s) else None
        checks += [Check(p.failed, f"{name}: not a number", s, True), Check(np.isinf(xf), f"{name}: infinite value")]
    elif col["type"] == "boolean":
        p = parse_booleans(s)
        parsed = p.values if not pd.api.types.is_bool_dtype(s) else None
        checks.append(Check(p.failed, f"{name}: not a boolean", s, True))
    elif col["type"] == "image" and col.get("shape"):
        shape = "x".join(str(d) for d in col["shape"])
        checks.append(Check(_wrong_shape(s, col["shape"]), f"{name}: image of the wrong shape (expected {shape})"))
    elif col["type"] == "datetime":
        checks.append(Check(unparsable(s, col.get("format", "iso")), f"{name}: not a date", s, True))
    return checks + [Check(mask, text) for mask, text in _value_checks(name, col, s, xf)], parsed


def _from_parsed(s: pd.Series, values: np.ndarray, col_type: str) -> pd.Series:
    """:func:`typed` of a column whose text was already parsed to ``values`` (float64)."""
    if col_type == "integer":
        ints = parse_integers(s)
        if ints is not None:
            return ints
    if col_type == "boolean":
        return pd.Series(pd.array(np.where(np.isnan(values), None, values == 1.0), dtype="boolean"), index=s.index)
    return pd.Series(values, index=s.index)


def typed(s: pd.Series, col_type: str) -> pd.Series:
    """A column in its schema type: text integers as pandas' nullable Int64 (float64 when a value
    is no integer literal), numbers as float64, booleans as pandas' nullable boolean; values that
    do not parse become missing. Other types are returned as they are."""
    if col_type in ("number", "integer") and is_text(s):
        return _from_parsed(s, parse_numbers(s).values, col_type)  # integers exact: ids keep every digit
    if col_type in ("number", "integer") and pd.api.types.is_bool_dtype(s):
        return pd.Series(parse_numbers(s).values, index=s.index)
    if col_type == "boolean" and not pd.api.types.is_bool_dtype(s):
        return _from_parsed(s, parse_booleans(s).values, col_type)
    return s


def blank_target(t: pd.Series) -> pd.Series:
    """The target with empty or blank text as missing: a row without a label is no class ``""``."""
    if not is_text(t):
        return t
    import pyarrow.compute as pc

    blank = np.asarray(pc.fill_null(pc.equal(text_array(t), ""), False).to_numpy(zero_copy_only=False), dtype=bool)
    return t.where(~blank, None) if blank.any() else t


def _known(t: pd.Series, classes: list[str]) -> np.ndarray:
    """Per row: the label is one of ``classes`` (or missing); only distinct values become text."""
    codes, uniques = pd.factorize(t, use_na_sentinel=True)
    known = label_strings(pd.Series(uniques)).isin(classes).to_numpy()
    return np.append(known, True)[codes]  # code -1 (missing) picks the appended True


def _shown(v: Any) -> str:
    """An offending value as it appears in a reason: its repr, shortened when long."""
    return repr(v if not isinstance(v, str) or len(v) <= MAX_VALUE_CHARS else v[:MAX_VALUE_CHARS] + "…")


class Annotated(NamedTuple):
    batch: pd.DataFrame  # with ``__reason`` and ``__reason_key``
    unparsed: dict[str, int]  # per column, the values that did not parse as its type
    parsed: dict[str, np.ndarray]  # per column that arrived as text, its values parsed (``_column_checks``)


def _annotate(batch: pd.DataFrame, schema: dict[str, Any], classes: list[str] | None) -> Annotated:
    """:func:`annotate`, with what the checks parsed on the way."""
    reasons = np.full(len(batch), None, dtype=object)
    keys = np.full(len(batch), None, dtype=object)
    flagged = np.zeros(len(batch), dtype=bool)
    unparsed: dict[str, int] = {}
    parsed: dict[str, np.ndarray] = {}

    def flag(check: Check) -> None:
        new = check.mask & ~flagged
        if new.any():
            keys[new] = check.reason
            if check.values is None:
                reasons[new] = check.reason
            else:
                values = check.values.to_numpy(dtype=object)[new]
                reasons[new] = [f"{check.reason}: {_shown(v)}" for v in values]
            flagged[new] = True

    for name, col in schema["columns"].items():
        if name in batch.columns:
            checks, values = _column_checks(name, col, batch[name])
            if values is not None:
                parsed[name] = values
            for check in checks:
                if check.unparsed and check.mask.any():
                    unparsed[name] = int(check.mask.sum())
                flag(check)
    target = schema.get("target")
    if target and target["name"] in batch.columns:
        t = batch[target["name"]] = blank_target(batch[target["name"]])
        flag(Check(t.isna().to_numpy(), f"{target['name']}: target is missing"))
        if classes is not None:
            flag(Check(~_known(typed(t, target["type"]), classes), f"{target['name']}: class not seen in the training split"))
    batch[REASON] = reasons
    batch[REASON_KEY] = keys
    return Annotated(batch, unparsed, parsed)


def annotate(batch: pd.DataFrame, schema: dict[str, Any], classes: list[str] | None = None) -> pd.DataFrame:
    """Add a ``__reason`` column: why a row is invalid (the first reason found, with the value that
    did not parse: ``x: not a number: 'n/a?'``), or None; and ``__reason_key``, the reason without the value."""
    return _annotate(batch, schema, classes).batch


def coerce_numeric(batch: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Numbers and booleans that arrived as text (csv, json) continue in their type (see :func:`typed`)."""
    for name, col in schema["columns"].items():
        if col["type"] in ("number", "integer", "boolean") and name in batch.columns:
            batch[name] = typed(batch[name], col["type"])
    return batch


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
    batch, unparsed, parsed = _annotate(batch, schema, classes)
    ok = batch[REASON].isna().to_numpy()
    valid = (batch if ok.all() else batch[ok]).drop(columns=list(INTERNAL))
    for name, values in parsed.items():  # the text the checks parsed is not parsed again
        valid[name] = _from_parsed(valid[name], values if ok.all() else values[ok], schema["columns"][name]["type"])
    valid = coerce_numeric(valid, schema)  # counted, profiled and written in their types
    stats = batch_stats(batch, target, unparsed, valid)
    rows = batch.drop(columns=[REASON_KEY])
    return BlockCheck(rows, valid, {"stats": stats, "profile": block_profile(valid, schema, bounds)},
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
