"""Date and time columns: calendar parts and cyclic encodings, never one-hot of the strings.

Values are read by :func:`raypipe.dates.parse` (Arrow dates/timestamps, ISO 8601 strings,
and the column's slashed ``dmy``/``mdy`` format), as naive UTC. Per column, in order:

* ``year``: standardised with the training mean and standard deviation (fitted);
* ``month``, ``day``, ``weekday`` (Monday 0), ``hour``: scaled to [0, 1] by their fixed
  ranges ((m-1)/11, (d-1)/30, w/6, h/23);
* ``month_sin``/``month_cos``, ``weekday_sin``/``weekday_cos``, ``hour_sin``/``hour_cos``:
  positions on the circle (December sits next to January, 23:00 next to 00:00; the hour's
  angle includes the minutes);
* ``missing``: 1 when the value is missing or not a date (then every other feature is 0).

The hour features exist only for a column whose training values carry a time of day
(not all midnight): a date column gets none (fitted, ``has_time_``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raypipe.dates import parse
from raypipe.model.features.base import Batch, Operator, column, num_rows

_DATE_PARTS = ("year", "month", "day", "weekday", "month_sin", "month_cos", "weekday_sin", "weekday_cos")
_TIME_PARTS = ("hour", "hour_sin", "hour_cos")


class DatetimeEncoder(Operator):
    """Expand date/time columns into calendar features.

    Args:
        columns: input columns.
        formats: per column its format from the schema (``iso``, ``dmy``, ``mdy``); ``iso``
            when absent.
    """

    kind = "datetime"
    state_keys = ("year_mean_", "year_scale_", "has_time_")

    def __init__(self, columns: Sequence[str], *, formats: Mapping[str, str] | None = None) -> None:
        self.columns = list(columns)
        self.formats = {c: str(f) for c, f in (formats or {}).items() if c in self.columns}

    def get_params(self) -> dict[str, Any]:
        return {"columns": self.columns, "formats": self.formats}

    def _parse(self, batch: Batch, c: str) -> Any:
        return parse(column(batch, c), self.formats.get(c, "iso"))[0]

    # -- fitting ----------------------------------------------------------------------
    def partial_stats(self, batch: Batch) -> dict[str, Any]:
        out = {}
        for c in self.columns:
            t = self._parse(batch, c)
            ok = t.notna().to_numpy()
            year = t.dt.year.to_numpy(dtype=np.float64, na_value=np.nan)[ok]
            time = (t.dt.hour * 3600 + t.dt.minute * 60 + t.dt.second).to_numpy(dtype=np.float64, na_value=0.0)
            out[c] = {"n": int(ok.sum()), "sum": float(year.sum()), "sq": float(np.square(year).sum()),
                      "time": bool((time[ok] != 0).any())}
        return out

    def _fit(self, parts: list[dict[str, Any]]) -> None:
        self.year_mean_: dict[str, float] = {}
        self.year_scale_: dict[str, float] = {}
        self.has_time_: dict[str, bool] = {}
        for c in self.columns:
            n = sum(p[c]["n"] for p in parts)
            total, sq = sum(p[c]["sum"] for p in parts), sum(p[c]["sq"] for p in parts)
            mean = total / n if n else 0.0
            std = float(np.sqrt(max(sq / n - mean * mean, 0.0))) if n else 0.0
            self.year_mean_[c], self.year_scale_[c] = float(mean), std if std > 0 else 1.0
            self.has_time_[c] = any(p[c]["time"] for p in parts)

    # -- transforming -----------------------------------------------------------------
    def _parts(self, c: str) -> tuple[str, ...]:
        return _DATE_PARTS + (_TIME_PARTS if self.has_time_[c] else ()) + ("missing",)

    def _column(self, c: str, batch: Batch) -> np.ndarray:
        t = self._parse(batch, c)
        ok = t.notna().to_numpy()

        def part(values: Any) -> np.ndarray:
            return values.to_numpy(dtype=np.float64, na_value=0.0)

        month, day, weekday = part(t.dt.month), part(t.dt.day), part(t.dt.weekday)
        cols = {
            "year": (part(t.dt.year) - self.year_mean_[c]) / self.year_scale_[c],
            "month": (month - 1) / 11, "day": (day - 1) / 30, "weekday": weekday / 6,
            "month_sin": np.sin(2 * np.pi * (month - 1) / 12), "month_cos": np.cos(2 * np.pi * (month - 1) / 12),
            "weekday_sin": np.sin(2 * np.pi * weekday / 7), "weekday_cos": np.cos(2 * np.pi * weekday / 7),
        }
        if self.has_time_[c]:
            hour = part(t.dt.hour)
            angle = 2 * np.pi * (hour + part(t.dt.minute) / 60) / 24
            cols |= {"hour": hour / 23, "hour_sin": np.sin(angle), "hour_cos": np.cos(angle)}
        out = np.zeros((len(ok), len(self._parts(c))), dtype=np.float64)
        for j, name in enumerate(self._parts(c)[:-1]):
            out[ok, j] = cols[name][ok]
        out[:, -1] = ~ok
        return out

    def transform(self, batch: Batch) -> np.ndarray:
        self.check_fitted()
        blocks = [self._column(c, batch) for c in self.columns]
        if not blocks:
            return np.zeros((num_rows(batch), 0), dtype=np.float32)
        return np.hstack(blocks).astype(np.float32)

    @property
    def feature_names(self) -> list[str]:
        return [f"{c}:{p}" for c in self.columns for p in self._parts(c)]
