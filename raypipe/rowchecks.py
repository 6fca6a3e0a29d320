"""Row checks and the column findings the validate stage and the monitor share.

``annotate`` gives every row of a block the first reason it is invalid (not a number,
infinite, not a date, wrong image shape, outside a schema file's limits, a missing or
unseen target) or None; ``missing_column_findings`` and ``null_findings`` turn merged
counts into findings. Moved down from ``validate/checks.py`` so that ``raypipe monitor``
checks a window with exactly the validate stage's rules without importing a stage package.

A finding is ``{"severity": "error"|"warning", "check", "column", "value",
"limit", "message", "split"}``.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from raypipe.columns import as_float
from raypipe.dates import unparsable
from raypipe.schema import label_strings

REASON = "__reason"
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
