"""The request model of an endpoint, generated from the stored data schema.

Strict types (no "12" for a number), no NaN/Inf, no unknown keys. Columns that were
never missing in training are required; the rest may be null or left out and are
imputed by the feature pipeline, exactly as in training. A ``datetime`` column takes a
string the validate stage would have accepted (:mod:`raypipe.dates`: ISO 8601 always,
and the column's ``dmy``/``mdy`` slashed form); anything else is refused with a 422.
An ``audio`` column takes the clip's file (WAV, FLAC) base64-encoded in a string, decoded,
resampled and padded exactly as the audio source does (:mod:`raypipe.model.waveform`), or
the waveform itself as a list of its samples; a bad base64 string, an undecodable file or
a waveform of the wrong length is a 422 naming the field.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

import numpy as np
from pydantic import (
    AfterValidator, PlainValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model,
)

from raypipe.dates import unparsable
from raypipe.schema import feature_columns

_FLOAT_MAX = float(np.finfo(np.float64).max)
_INT64 = int(np.iinfo(np.int64).max)
_TYPES: dict[str, Any] = {
    # finite float64 / int64 values only: 1e400 or 2**70 would overflow the feature arrays
    "number": Annotated[StrictFloat | StrictInt, Field(ge=-_FLOAT_MAX, le=_FLOAT_MAX)],
    "integer": Annotated[StrictInt, Field(ge=-_INT64 - 1, le=_INT64)],
    "boolean": StrictBool,
    "string": Annotated[StrictStr, Field(max_length=10_000)],
    "text": Annotated[StrictStr, Field(max_length=1_000_000)],
}
_PIXEL = Annotated[StrictFloat | StrictInt, Field(ge=0, le=255)]


def _image_type(shape: list[int]) -> Any:
    """Nested lists of pixel values (0..255) of exactly ``shape``."""
    typ: Any = _PIXEL
    for _ in shape:
        typ = list[typ]

    def check(value: Any) -> Any:
        got = np.shape(value)
        if list(got) != list(shape):
            raise ValueError(f"image shape {list(got)} != {list(shape)}; send {shape[0]} rows of {shape[1]} pixels"
                             + (f" with {shape[2]} channels" if len(shape) > 2 else ""))
        return value

    return Annotated[typ, AfterValidator(check)]


MAX_AUDIO_CHARS = 16_000_000  # base64 of a ~12 MB file: minutes of 16-bit audio


def _audio_type(samples: int, sample_rate: int) -> Any:
    """A base64 string of an audio file, or a list of ``samples`` numbers: the waveform (float32)."""
    from raypipe.model.waveform import decode_base64_audio

    def check(value: Any) -> np.ndarray:
        if isinstance(value, str):
            if len(value) > MAX_AUDIO_CHARS:
                raise ValueError(f"audio of {len(value):,} base64 characters is longer than {MAX_AUDIO_CHARS:,}; "
                                 "send a shorter clip")
            return decode_base64_audio(value, sample_rate, samples)
        if isinstance(value, list) and all(type(v) in (int, float) for v in value):
            if len(value) != samples:
                raise ValueError(f"a waveform of {len(value)} samples != {samples}; send the clip's file base64-encoded "
                                 f"(it is resampled and padded), or exactly {samples} samples at {sample_rate} Hz")
            y = np.asarray(value, dtype=np.float32)
            if not np.isfinite(y).all():
                raise ValueError("the waveform holds NaN or infinite samples")
            return y
        raise ValueError(f"expected the clip's file (WAV, FLAC) as a base64 string, or a list of {samples} samples; "
                         f"got {type(value).__name__}")

    return Annotated[Any, PlainValidator(check, json_schema_input_type=str),
                     Field(description=f"the clip's WAV or FLAC file, base64-encoded (resampled to {sample_rate} Hz, "
                                       f"padded or cut to {samples} samples), or a list of {samples} samples")]


_DATE_EXAMPLE = {"iso": "2024-03-01 or 2024-03-01T12:30:00Z", "dmy": "01/03/2024 (day/month) or 2024-03-01",
                 "mdy": "03/01/2024 (month/day) or 2024-03-01"}


def _datetime_type(fmt: str) -> Any:
    """A date string in ``fmt`` or ISO 8601, checked with the parser the features use."""
    def check(value: str) -> str:
        if unparsable([value], fmt)[0]:
            raise ValueError(f"not a date: {value[:60]!r}; send e.g. {_DATE_EXAMPLE.get(fmt, _DATE_EXAMPLE['iso'])}")
        return value

    return Annotated[StrictStr, Field(max_length=64), AfterValidator(check)]


def _column_type(meta: dict[str, Any]) -> Any:
    if meta["type"] == "image":
        return _image_type(meta["shape"])
    if meta["type"] == "audio":
        return _audio_type(int(meta["shape"][0]), int(meta["sample_rate"]))
    if meta["type"] == "datetime":
        return _datetime_type(meta.get("format", "iso"))
    return _TYPES[meta["type"]]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def request_model(schema: dict[str, Any], name: str = "Row") -> type[BaseModel]:
    """A pydantic model for one input row of this schema."""
    fields: dict[str, Any] = {}
    for col in feature_columns(schema):
        meta = schema["columns"][col]
        typ = _column_type(meta)
        if meta.get("nullable", True):
            fields[col] = (Optional[typ], Field(default=None))
        else:
            fields[col] = (typ, Field(...))
    for col in schema.get("id_columns", []):  # accepted and echoed, never used as a feature
        typ = _TYPES.get(schema["columns"][col]["type"], StrictStr)  # a datetime id: any string
        fields[col] = (Optional[typ], Field(default=None))
    return create_model(name, __base__=_Row, **fields)
