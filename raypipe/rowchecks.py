"""Row checks and the column findings the validate stage and the monitor share.

``annotate`` gives every row of a block the first reason it is invalid (not a number, not a
boolean, infinite, not a date, wrong image shape, outside a schema file's limits, a missing
or unseen target) or None; ``missing_column_findings`` and ``null_findings`` turn merged
counts into findings. Moved down from ``validate/checks.py`` so that ``raypipe monitor``
checks a window with exactly the validate stage's rules without importing a stage package.

A finding is ``{"severity": "error"|"warning", "check", "column", "value",
"limit", "message", "split"}``.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from raypipe.columns import is_text, parse_booleans, parse_integers, parse_numbers, text_array
from raypipe.dates import unparsable
from raypipe.schema import label_strings

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
    elif col["type"] in ("image", "audio") and col.get("shape"):
        shape = "x".join(str(d) for d in col["shape"])
        what = "image" if col["type"] == "image" else "waveform"
        checks.append(Check(_wrong_shape(s, col["shape"]), f"{name}: {what} of the wrong shape (expected {shape})"))
    elif col["type"] == "datetime":
        checks.append(Check(unparsable(s, col.get("format", "iso")), f"{name}: not a date", s, True))
    return checks + [Check(mask, text) for mask, text in _value_checks(name, col, s, xf)], parsed


def from_parsed(s: pd.Series, values: np.ndarray, col_type: str) -> pd.Series:
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
        return from_parsed(s, parse_numbers(s).values, col_type)  # integers exact: ids keep every digit
    if col_type in ("number", "integer") and pd.api.types.is_bool_dtype(s):
        return pd.Series(parse_numbers(s).values, index=s.index)
    if col_type == "boolean" and not pd.api.types.is_bool_dtype(s):
        return from_parsed(s, parse_booleans(s).values, col_type)
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


def annotate_block(batch: pd.DataFrame, schema: dict[str, Any], classes: list[str] | None) -> Annotated:
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
    return annotate_block(batch, schema, classes).batch


def coerce_numeric(batch: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Numbers and booleans that arrived as text (csv, json) continue in their type (see :func:`typed`)."""
    for name, col in schema["columns"].items():
        if col["type"] in ("number", "integer", "boolean") and name in batch.columns:
            batch[name] = typed(batch[name], col["type"])
    return batch



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
