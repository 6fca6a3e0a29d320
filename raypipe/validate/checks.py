"""Row- and column-level data checks, vectorised on pandas batches.

``annotate`` gives every row a reason (or None): the batch function Ray Data runs.
``batch_stats`` gives mergeable per-block counts; ``summarise`` merges them and
turns them into problems a person can act on.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raypipe.validate.schema import label_strings

REASON = "__reason"
MAX_EXAMPLES = 3


def annotate(batch: pd.DataFrame, schema: dict[str, Any], classes: list[str] | None = None) -> pd.DataFrame:
    """Add a ``__reason`` column: why a row is invalid, or None when it is valid."""
    reasons = np.full(len(batch), None, dtype=object)

    def flag(mask: np.ndarray, text: str) -> None:
        new = mask & pd.isna(reasons)
        reasons[new] = text

    for name, col in schema["columns"].items():
        if name not in batch.columns:
            continue
        s = batch[name]
        if col["type"] in ("number", "integer"):
            textual = not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s))
            x = pd.to_numeric(s, errors="coerce") if textual else s
            # Via numpy: pandas' Arrow-backed dtypes report a coerced NaN as not-NA.
            xf = pd.Series(x).to_numpy(dtype=np.float64, na_value=np.nan)
            flag(s.notna().to_numpy() & np.isnan(xf), f"{name}: not a number")
            flag(np.isinf(xf), f"{name}: infinite value")
    target = schema.get("target")
    if target and target["name"] in batch.columns:
        t = batch[target["name"]]
        flag(t.isna().to_numpy(), f"{target['name']}: target is missing")
        if classes is not None:
            seen = label_strings(t).isin(classes).to_numpy() | t.isna().to_numpy()
            flag(~seen, f"{target['name']}: class not seen in the training split")
    batch[REASON] = reasons
    return batch


def coerce_numeric(batch: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Numbers that arrived as text (CSV) continue as float64 numbers."""
    for name, col in schema["columns"].items():
        if col["type"] in ("number", "integer") and name in batch.columns:
            s = batch[name]
            if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
                batch[name] = pd.Series(pd.to_numeric(s, errors="coerce")).to_numpy(dtype=np.float64, na_value=np.nan)
    return batch


def batch_stats(batch: pd.DataFrame, target: str | None) -> dict[str, Any]:
    """Mergeable counts of one annotated block."""
    bad = batch[REASON].notna()
    reasons = batch.loc[bad, REASON].value_counts().to_dict()
    examples: dict[str, list[Any]] = {}
    for reason in reasons:
        col = reason.split(":", 1)[0]
        vals = batch.loc[batch[REASON] == reason, col].head(MAX_EXAMPLES) if col in batch else []
        examples[reason] = [None if pd.isna(v) else str(v) for v in vals]
    out = {
        "rows": int(len(batch)),
        "invalid": int(bad.sum()),
        "reasons": {str(k): int(v) for k, v in reasons.items()},
        "examples": examples,
        "nulls": {c: int(batch[c].isna().sum()) for c in batch.columns if c != REASON},
        "classes": {},
    }
    if target and target in batch.columns:
        out["classes"] = {str(k): int(v) for k, v in label_strings(batch[target]).dropna().value_counts().items()}
    return out


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
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


def column_problems(stats: dict[str, Any], schema: dict[str, Any], present: list[str], max_missing: float) -> list[str]:
    """Problems no row-level quarantine can fix: missing columns, too many nulls."""
    problems = [
        f"column {c!r} is missing from the data (expected by the schema as {schema['columns'][c]['type']})"
        for c in schema["columns"] if c not in present
    ]
    rows = max(stats["rows"], 1)
    for c, n in sorted(stats["nulls"].items()):
        frac = n / rows
        if c in schema["columns"] and frac > max_missing:
            problems.append(
                f"column {c!r}: {frac:.1%} missing values > validate.max_missing_fraction={max_missing:g}; "
                "fix the source or raise the limit"
            )
    return problems


def row_problems(stats: dict[str, Any], split: str) -> list[str]:
    return [
        f"{split}: {n} row(s) invalid — {reason} (e.g. {stats['examples'].get(reason, [])})"
        for reason, n in sorted(stats["reasons"].items())
    ]
