"""Dates and times: how raypipe reads them, and when a text column holds them.

One parser serves validate (which rows are dates), the features (year, month, ...)
and serving (a request's date string), so a value means the same everywhere.

Accepted values:

* Arrow ``date32``/``date64``/``timestamp`` columns (and pandas ``datetime64``,
  ``datetime.date``/``datetime.datetime`` objects) as they are;
* ISO 8601 strings, always: ``2024-03-01``, ``2024-03-01 12:30``, ``2024-03-01 12:30:00``,
  ``2024-03-01T12:30:00.250Z``, ``2024-03-01T12:30:00+02:00``;
* in a column of format ``dmy``: ``01/03/2024`` or ``01.03.2024`` (1 March), optionally
  followed by ``HH:MM`` or ``HH:MM:SS``; in a column of format ``mdy``: ``03/01/2024``
  (1 March). ``2024/03/01`` (year first) is read in both.

Time zones: a value with an offset or ``Z`` is converted to UTC; a value without one is
taken as it is (as if it were UTC). Every parsed value is a naive UTC timestamp.

The day/month rule (the one ambiguity): a column's order is decided once, on the
training data, by :func:`infer_format`, and stored in the schema (``format``). A value
like ``13/03/2024`` can only be day first; a column where some values only read day
first is ``dmy``, one where some only read month first is ``mdy``. A column where every
value reads both ways (every day <= 12) is ambiguous: ``validate.dayfirst`` decides,
and without it the column is read month first (``mdy``, the pandas and US default)
and validate warns. Two-digit years, month names and free text ("last Tuesday") are
not dates. Blank strings are missing values.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

FORMATS = ("iso", "dmy", "mdy")
DEFAULT_THRESHOLD = 0.95
_TIME = r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?"
_ISO = r"^\d{4}-\d{2}-\d{2}" + r"(?:[ T]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?)?(?:Z|z|[+-]\d{2}(?::?\d{2})?)?$"
_YMD_SLASH = r"^\d{4}/\d{1,2}/\d{1,2}" + _TIME + "$"
_SLASHED = r"^\d{1,2}[/.]\d{1,2}[/.]\d{4}" + _TIME + "$"
_STRPTIME = {  # (pattern a value must match, strptime formats tried in order)
    "dmy": [("%d/%m/%Y", "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%d.%m.%Y", "%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S")],
    "mdy": [("%m/%d/%Y", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")],
}
_YMD = ("%Y/%m/%d", "%Y/%m/%d %H:%M", "%Y/%m/%d %H:%M:%S")


def _naive_utc(x: Any) -> pd.Series:
    """Parsed values (a DatetimeIndex or Series, aware or naive) as naive UTC ``datetime64``."""
    s = pd.Series(x)
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.astype("datetime64[us]")


def _parse_strings(texts: np.ndarray, fmt: str) -> pd.Series:
    """Distinct stripped strings to naive UTC timestamps (NaT where not a date in ``fmt``)."""
    out = pd.Series(pd.NaT, index=range(len(texts)), dtype="datetime64[us]")
    if not len(texts):
        return out
    t = pd.Series(texts, dtype=object)
    iso = t.str.match(_ISO).to_numpy(dtype=bool)
    if iso.any():
        out[iso] = _naive_utc(pd.to_datetime(t[iso], format="ISO8601", utc=True, errors="coerce")).to_numpy()
    formats = list(_YMD) + ([f for group in _STRPTIME[fmt] for f in group] if fmt in _STRPTIME else [])
    rest = ~iso & (t.str.match(_YMD_SLASH) | t.str.match(_SLASHED)).to_numpy(dtype=bool)
    for f in formats:
        todo = rest & out.isna().to_numpy()
        if not todo.any():
            break
        out[todo] = pd.to_datetime(t[todo], format=f, errors="coerce").to_numpy(dtype="datetime64[us]")
    return out


def _is_datetime_dtype(dtype: Any) -> bool:
    return isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype)


def parse(values: Any, fmt: str | None = "iso") -> tuple[pd.Series, np.ndarray]:
    """Values as naive UTC timestamps (``datetime64[us]``, NaT where missing or not a date)
    and the mask of values that were present but are not dates.

    ``fmt`` is the column's stored format (see the module docstring); ISO 8601 is always
    accepted. Only the distinct values are parsed.
    """
    if isinstance(values, pd.Series):
        s = values.reset_index(drop=True)
    elif isinstance(values, np.ndarray):
        s = pd.Series(values)
    else:
        s = pd.Series(list(values), dtype=object)
    if isinstance(s.dtype, pd.ArrowDtype):
        s = s.astype(object)  # dates and timestamps become Python objects, read below
    if _is_datetime_dtype(s.dtype):
        return _naive_utc(s), np.zeros(len(s), dtype=bool)
    codes, uniques = pd.factorize(s.astype(object), use_na_sentinel=True)
    parsed_u = pd.Series(pd.NaT, index=range(len(uniques)), dtype="datetime64[us]")
    bad_u = np.zeros(len(uniques), dtype=bool)
    u = np.asarray(uniques, dtype=object)
    is_str = np.fromiter((type(v) is str for v in u), dtype=bool, count=len(u))
    if is_str.any():
        texts = np.array([v.strip() for v in u[is_str]], dtype=object)
        got = _parse_strings(texts, fmt or "iso").to_numpy()
        parsed_u[is_str] = got
        blank = texts == ""
        bad_u[np.flatnonzero(is_str)] = np.isnat(got) & ~blank
    temporal = np.fromiter((isinstance(v, (_dt.date, np.datetime64)) for v in u), dtype=bool, count=len(u))
    if temporal.any():
        parsed_u[temporal] = _naive_utc(pd.to_datetime(list(u[temporal]), utc=True, errors="coerce")).to_numpy()
    other = ~is_str & ~temporal
    bad_u[other] = ~pd.isna(u[other]).astype(bool)  # a number or another object: not a date
    p = np.append(parsed_u.to_numpy(), np.datetime64("NaT", "us"))[codes]  # code -1 (missing) picks NaT
    return pd.Series(p, dtype="datetime64[us]"), np.append(bad_u, False)[codes]


def unparsable(values: Any, fmt: str | None = "iso") -> np.ndarray:
    """Per value: present (not None/NaN/blank) but not a date in ``fmt``."""
    return parse(values, fmt)[1]


class DateGuess(NamedTuple):
    """What :func:`infer_format` decided about a text column."""

    format: str  # iso | dmy | mdy
    fraction: float  # of the present values that parse in that format
    ambiguous: bool  # every value read both day first and month first; the order was a default


def _fraction(texts: np.ndarray, counts: np.ndarray, fmt: str) -> float:
    ok = ~np.isnat(_parse_strings(texts, fmt).to_numpy())
    return float(counts[ok].sum() / counts.sum())


def infer_format(values: Any, threshold: float = DEFAULT_THRESHOLD, dayfirst: bool | None = None) -> DateGuess | None:
    """The date format of a text column, or None when fewer than ``threshold`` of its present values are dates.

    The rest of a column that passes are quarantined by validate (``not a date: ...``).
    ``dayfirst`` forces the day/month order; None decides it from the values (see the
    module docstring). A column without any present string is no date column.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    strings = s[s.map(lambda v: type(v) is str)].str.strip()
    strings = strings[strings != ""]
    if not len(strings):
        return None
    vc = strings.value_counts()
    texts, counts = vc.index.to_numpy(dtype=object), vc.to_numpy(dtype=np.float64)
    share = {f: _fraction(texts, counts, f) for f in FORMATS}
    if max(share.values()) < threshold:
        return None
    if share["iso"] >= max(share["dmy"], share["mdy"]):
        return DateGuess("iso", share["iso"], False)
    if dayfirst is not None:
        fmt = "dmy" if dayfirst else "mdy"
        return DateGuess(fmt, share[fmt], False) if share[fmt] >= threshold else None
    if share["dmy"] != share["mdy"]:
        fmt = "dmy" if share["dmy"] > share["mdy"] else "mdy"
        return DateGuess(fmt, share[fmt], False)
    return DateGuess("mdy", share["mdy"], True)


def is_datetime_column(values: Any, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """True when at least ``threshold`` of the column's present values are dates (see :func:`infer_format`)."""
    return infer_format(values, threshold) is not None
