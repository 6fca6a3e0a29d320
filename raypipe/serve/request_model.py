"""The request model of an endpoint, generated from the stored data schema.

Strict types (no "12" for a number), no NaN/Inf, no unknown keys. Columns that were
never missing in training are required; the rest may be null or left out and are
imputed by the feature pipeline, exactly as in training.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

_TYPES: dict[str, Any] = {
    "number": StrictFloat | StrictInt,
    "integer": StrictInt,
    "boolean": StrictBool,
    "string": StrictStr,
}


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def request_model(schema: dict[str, Any], name: str = "Row") -> type[BaseModel]:
    """A pydantic model for one input row of this schema."""
    fields: dict[str, Any] = {}
    features = schema["features"]["numeric"] + schema["features"]["categorical"]
    for col in features:
        meta = schema["columns"][col]
        typ = _TYPES[meta["type"]]
        if meta.get("nullable", True):
            fields[col] = (Optional[typ], Field(default=None))
        else:
            fields[col] = (typ, Field(...))
    for col in schema.get("id_columns", []):  # accepted and echoed, never used as a feature
        typ = _TYPES.get(schema["columns"][col]["type"], StrictStr)
        fields[col] = (Optional[typ], Field(default=None))
    return create_model(name, __base__=_Row, **fields)
