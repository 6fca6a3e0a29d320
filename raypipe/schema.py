"""The data schema: inferred from the training split on the first run, then enforced.

The schema is plain JSON stored with the data and in every model version; serving
builds its request model from it. Column types: ``number``, ``integer``,
``boolean``, ``string``, ``text`` (free text: a string column named in
``features.text.columns`` or a text source's ``text`` column), ``datetime`` (an Arrow
date or timestamp column, or a string column whose values are dates: see
:mod:`raypipe.dates`; its ``format`` is ``iso``, ``dmy`` or ``mdy``) and ``image`` (an
Arrow tensor column, with its ``shape``) and ``audio`` (an audio source's ``audio`` column: a
float32 waveform tensor of ``shape`` ``[samples]`` at ``sample_rate`` Hz). A string column whose values are nearly all
distinct is marked ``id_like`` (see :func:`refine_schema`) and kept out of the features. A hand-written schema file may also give
a column ``min``/``max`` (numbers) or ``values`` (allowed categories): rows outside
them are quarantined.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raypipe.errors import DataValidationError

FORMAT = "raypipe.schema/1"
FEATURE_KINDS = ("numeric", "categorical", "datetime", "text", "image", "audio")
NUMERIC_TYPES = ("number", "integer", "boolean")


def is_tensor_type(t: pa.DataType) -> bool:
    """True for Ray Data's (fixed or variable shaped) tensor extension types and Arrow's own."""
    return isinstance(t, pa.BaseExtensionType) and "tensor" in t.extension_name


def tensor_shape(t: pa.DataType) -> list[int] | None:
    """The per-row shape of a fixed-shape tensor type; None when rows may differ."""
    if "variable" in getattr(t, "extension_name", ""):
        return None
    shape = getattr(t, "shape", None)
    return [int(d) for d in shape] if shape else None


def arrow_kind(t: pa.DataType) -> str | None:
    """The schema type of an Arrow type, or None when raypipe cannot use it."""
    if is_tensor_type(t):
        return "image"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return "datetime"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_null(t):
        return "null"
    return None


def _column(field: pa.Field, text_columns: list[str],
            audio_columns: dict[str, int] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """A field's schema entry, or the problem that stops raypipe using it."""
    kind = arrow_kind(field.type)
    if kind is None:
        return None, (f"column {field.name!r}: type {field.type} is not supported; list it in data.id_columns to keep "
                      "it out of the features, or convert it to a number or string")
    if field.name in text_columns:
        if kind not in ("string", "null"):
            return None, (f"features.text.columns: column {field.name!r} is {kind}, not text; remove it from "
                          "features.text.columns or convert it to a string")
        return {"type": "text", "nullable": True}, None
    if kind == "null":
        kind = "number"  # an all-missing column in the sample: treated as numeric, caught by the null check
    col: dict[str, Any] = {"type": kind, "nullable": True}
    if kind == "image":
        col["shape"] = tensor_shape(field.type)
        if field.name in (audio_columns or {}):
            col["type"], col["sample_rate"] = "audio", int(audio_columns[field.name])
    if kind == "datetime":
        col["format"] = "iso"  # typed by Arrow; strings sent to the endpoint are read as ISO 8601
    return col, None


def infer_schema(arrow_schema: pa.Schema, *, target: str | None, task: str, id_columns: list[str],
                 text_columns: list[str] | None = None, column_types: dict[str, str] | None = None,
                 audio_columns: dict[str, int] | None = None) -> dict[str, Any]:
    """Infer a schema from an Arrow schema.

    Args:
        text_columns: string columns to treat as free text (type ``text``).
        audio_columns: tensor columns that hold waveforms (type ``audio``), with their sample rate.
        column_types: the type of string columns whose values hold numbers or booleans
            (decided from the data by ``raypipe.validate.infer``), by name.

    Raises:
        DataValidationError: naming every column whose type raypipe cannot use, and
            a missing target, id or text column.
    """
    text_columns = list(text_columns or [])
    problems: list[str] = []
    columns: dict[str, dict[str, Any]] = {}
    for field in arrow_schema:
        if field.name.startswith("__"):
            continue
        col, problem = _column(field, text_columns, audio_columns)
        if problem:
            problems.append(problem)
        if col is not None:
            if (column_types or {}).get(field.name) and col["type"] == "string":
                col["type"] = column_types[field.name]
            columns[field.name] = col
    if target is not None and target not in columns:
        problems.append(f"target column {target!r} not found; columns are {sorted(columns)}")
    for c in id_columns:
        if c not in columns:
            problems.append(f"data.id_columns: column {c!r} not found; columns are {sorted(columns)}")
    for c in text_columns:
        if c not in arrow_schema.names:
            problems.append(f"features.text.columns: column {c!r} not found; columns are {sorted(columns)}")
    if problems:
        raise DataValidationError(problems)
    return {
        "format": FORMAT,
        "columns": columns,
        "target": None if target is None else {"name": target, "type": columns[target]["type"], "task": task},
        "id_columns": list(id_columns),
        "features": feature_lists(columns, target, id_columns),
    }


def feature_lists(columns: dict[str, dict[str, Any]], target: str | None, id_columns: list[str]) -> dict[str, list[str]]:
    """The feature columns by kind: every column but the target, the ids and the id-like strings."""
    feats = [c for c in columns if c != target and c not in id_columns
             and not (columns[c].get("id_like") and columns[c]["type"] == "string")]
    kind = {"number": "numeric", "integer": "numeric", "boolean": "numeric", "string": "categorical",
            "text": "text", "image": "image", "audio": "audio", "datetime": "datetime"}
    return {k: [c for c in feats if kind.get(columns[c]["type"]) == k] for k in FEATURE_KINDS}


def complete_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Fill what an older or hand-written schema leaves out (feature lists, ids, format)."""
    schema.setdefault("format", FORMAT)
    schema.setdefault("id_columns", [])
    schema.setdefault("target", None)
    target = schema["target"]["name"] if schema.get("target") else None
    derived = feature_lists(schema["columns"], target, schema["id_columns"])
    feats = schema.setdefault("features", {})
    for kind in FEATURE_KINDS:
        feats.setdefault(kind, derived[kind])
    for col in schema["columns"].values():
        col.setdefault("nullable", True)
    return schema


def feature_columns(schema: dict[str, Any]) -> list[str]:
    """Every feature column: numeric, categorical, datetime, text, image and audio."""
    return [c for kind in FEATURE_KINDS for c in schema["features"].get(kind, [])]


ID_MIN_VALUES = 50  # fewer present values in the sample: too few to call a column identifier-like


def distinct_fraction(values: pd.Series) -> tuple[float, int]:
    """Distinct present values / present values, and the present count."""
    present = values.dropna()
    n = len(present)
    return (float(present.nunique()) / n if n else 0.0), n


def refine_schema(schema: dict[str, Any], sample: pd.DataFrame, *, datetime_fraction: float = 0.95,
                  dayfirst: bool | None = None, id_fraction: float = 0.95) -> dict[str, Any]:
    """What an inferred schema learns from a sample of the training rows (the Arrow types cannot tell).

    * A ``string`` column where at least ``datetime_fraction`` of the present values are
      dates (:func:`raypipe.dates.infer_format`) becomes ``datetime`` with their
      ``format``; the rest of its values are quarantined by validate. ``date_fraction``
      and, when the day/month order was a default, ``ambiguous_order`` are recorded.
    * A ``string`` or ``integer`` feature column whose present values are at least
      ``id_fraction`` distinct (and at least :data:`ID_MIN_VALUES` of them) is marked
      ``id_like`` with its ``distinct_fraction``: an id-like string is kept out of the
      features (one-hot of an identifier learns nothing that generalises), an id-like
      integer stays numeric; validate warns about both.

    The target, ``data.id_columns`` and text columns are left alone. Feature lists are
    derived again. Returns ``schema``, changed in place.
    """
    from raypipe.dates import infer_format

    target = schema["target"]["name"] if schema.get("target") else None
    skip = {target, *schema.get("id_columns", [])}
    for name, col in schema["columns"].items():
        if name in skip or name not in sample.columns:
            continue
        s = sample[name]
        if col["type"] == "string":
            guess = infer_format(s, datetime_fraction, dayfirst)
            if guess is not None:
                col.update(type="datetime", format=guess.format, date_fraction=round(guess.fraction, 6))
                if guess.ambiguous:
                    col["ambiguous_order"] = True
                continue
        if col["type"] in ("string", "integer"):
            frac, n = distinct_fraction(s)
            if n >= ID_MIN_VALUES and frac >= id_fraction:
                col.update(id_like=True, distinct_fraction=round(frac, 6))
    schema["features"] = feature_lists(schema["columns"], target, schema.get("id_columns", []))
    return schema


def label_strings(values: Any) -> pd.Series:
    """Class labels as strings, the same whatever the dtype a batch arrived in.

    Integral numbers print without a decimal point (an int column read with nulls
    becomes float in pandas; 1 and 1.0 must be the same class). Missing stays None.
    Only the distinct values are formatted.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if s.dtype == object:  # factorising raw objects would merge 1 and 1.0 into whichever came first
        return s.astype(object).where(s.notna(), None).map(lambda v: v if v is None else str(v))
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    text = np.append(_label_text(pd.Series(uniques, dtype=s.dtype if len(uniques) else None)), None)
    return pd.Series(text[codes], index=s.index, dtype=object)  # code -1 (missing) picks the None


def _label_text(u: pd.Series) -> np.ndarray:
    """Text of distinct, present labels."""
    if pd.api.types.is_bool_dtype(u):
        return np.array([str(bool(v)) for v in u], dtype=object)
    if pd.api.types.is_numeric_dtype(u):
        x = u.to_numpy(dtype=np.float64, na_value=np.nan)
        integral = np.isfinite(x) & (x == np.round(x))
        return np.where(integral, np.char.mod("%d", np.where(integral, x, 0).astype(np.int64)),
                        u.astype(str).to_numpy()).astype(object)
    return np.array([str(v) for v in u], dtype=object)


def label_value(label: str, target_type: str) -> Any:
    """A class label back in the target column's JSON type."""
    if target_type == "integer":
        return int(label)
    if target_type == "number":
        return float(label)
    if target_type == "boolean":
        return label == "True"
    return label
