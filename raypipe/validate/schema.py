"""The data schema: inferred from the training split on the first run, then enforced.

The schema is plain JSON stored with the data and in every model version; serving
builds its request model from it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raypipe.errors import DataValidationError

FORMAT = "raypipe.schema/1"


def arrow_kind(t: pa.DataType) -> str | None:
    """The schema type of an Arrow type, or None when raypipe cannot use it."""
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_null(t):
        return "null"
    return None


def infer_schema(arrow_schema: pa.Schema, *, target: str | None, task: str, id_columns: list[str]) -> dict[str, Any]:
    """Infer a schema from an Arrow schema.

    Raises:
        DataValidationError: naming every column whose type raypipe cannot use, and
            a missing target or id column.
    """
    problems: list[str] = []
    columns: dict[str, dict[str, Any]] = {}
    for field in arrow_schema:
        if field.name.startswith("__"):
            continue
        kind = arrow_kind(field.type)
        if kind is None:
            problems.append(
                f"column {field.name!r}: type {field.type} is not supported; list it in data.id_columns to keep it "
                "out of the features, or convert it to a number or string"
            )
            continue
        if kind == "null":
            kind = "number"  # an all-missing column in the sample: treated as numeric, caught by the null check
        columns[field.name] = {"type": kind, "nullable": True}
    if target is not None and target not in columns:
        problems.append(f"target column {target!r} not found; columns are {sorted(columns)}")
    for c in id_columns:
        if c not in columns:
            problems.append(f"data.id_columns: column {c!r} not found; columns are {sorted(columns)}")
    if problems:
        raise DataValidationError(problems)
    feats = [c for c in columns if c != target and c not in id_columns]
    return {
        "format": FORMAT,
        "columns": columns,
        "target": None if target is None else {"name": target, "type": columns[target]["type"], "task": task},
        "id_columns": list(id_columns),
        "features": {
            "numeric": [c for c in feats if columns[c]["type"] in ("number", "integer", "boolean")],
            "categorical": [c for c in feats if columns[c]["type"] == "string"],
        },
    }


def feature_columns(schema: dict[str, Any]) -> list[str]:
    return schema["features"]["numeric"] + schema["features"]["categorical"]


def label_strings(values: Any) -> pd.Series:
    """Class labels as strings, the same whatever the dtype a batch arrived in.

    Integral numbers print without a decimal point (an int column read with nulls
    becomes float in pandas; 1 and 1.0 must be the same class). Missing stays None.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_bool_dtype(s):
        return s.map(lambda v: None if pd.isna(v) else str(bool(v)))
    if pd.api.types.is_numeric_dtype(s):
        x = s.to_numpy(dtype=np.float64, na_value=np.nan)
        integral = np.isfinite(x) & (x == np.round(x))
        out = np.where(integral, np.char.mod("%d", np.where(integral, x, 0).astype(np.int64)), s.astype(str).to_numpy())
        return pd.Series(out, index=s.index, dtype=object).where(s.notna(), None)
    return s.astype(object).where(s.notna(), None).map(lambda v: v if v is None else str(v))


def label_value(label: str, target_type: str) -> Any:
    """A class label back in the target column's JSON type."""
    if target_type == "integer":
        return int(label)
    if target_type == "number":
        return float(label)
    if target_type == "boolean":
        return label == "True"
    return label
