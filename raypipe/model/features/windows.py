"""Per-device rolling statistics over the last N readings (``features.windows``), offline and online alike.

For a reading of device ``d`` at position ``i`` of ``d``'s readings ordered by ``order``, the
window holds positions ``i - size + 1 .. i`` (fewer at the start of ``d``'s history; the
reading itself included, nothing later: a window never sees the future). For each column
in ``columns`` and each statistic in ``stats`` a column ``<column>_w<size>_<stat>`` is
added:

- ``mean``, ``std`` (population, ``ddof=0``), ``min``, ``max`` of the window's present values;
- ``slope``: the least-squares slope of the present values against their position in the
  window (change per reading), 0 with fewer than two present values.

A window without any present value gives NaN (the numeric imputer fills it later).

Both paths call :func:`window_values` on one device's ordered readings, so the values
are the same bit for bit:

- offline (the validate stage): every validated row of every split, grouped by device and
  ordered, in Ray Data (:func:`add_windows`);
- online (``raypipe stream``): :class:`OnlineWindows` keeps each device's last ``size - 1``
  readings and computes the windows of a micro-batch over them plus the new readings.

A reading without a device or an order value is its own device (a window of itself).
"""
from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

STATS = ("mean", "std", "min", "max", "slope")
KEY = "__window_key"  # the device as text; a unique text for a reading without device or order


def window_column(column: str, size: int, stat: str) -> str:
    return f"{column}_w{size}_{stat}"


def window_columns(columns: Sequence[str], size: int, stats: Sequence[str]) -> list[str]:
    """The added columns, in the order :func:`window_values` returns them."""
    return [window_column(c, size, s) for c in columns for s in stats]


def _stats(values: np.ndarray, size: int, stats: Sequence[str]) -> dict[str, np.ndarray]:
    """Each statistic of each row's window over ``values`` (one device, in order)."""
    n = len(values)
    padded = np.concatenate([np.full(size - 1, np.nan), values.astype(np.float64)])
    win = np.lib.stride_tricks.sliding_window_view(padded, size)[:n]  # row i: readings i-size+1 .. i
    present = ~np.isnan(win)
    count = present.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing windows: NaN, filled later by the imputer
        mean = np.nanmean(win, axis=1)
        for stat in stats:
            if stat == "mean":
                out[stat] = mean
            elif stat == "std":
                out[stat] = np.nanstd(win, axis=1)
            elif stat == "min":
                out[stat] = np.nanmin(win, axis=1)
            elif stat == "max":
                out[stat] = np.nanmax(win, axis=1)
            else:  # slope: least squares of value on position, over the present values
                x = np.broadcast_to(np.arange(size, dtype=np.float64), win.shape)
                xm = np.where(present, x, 0.0).sum(axis=1) / np.maximum(count, 1)
                dx = np.where(present, x - xm[:, None], 0.0)
                dy = np.where(present, win - mean[:, None], 0.0)
                sxx = (dx * dx).sum(axis=1)
                out[stat] = np.where(count >= 2, (dx * dy).sum(axis=1) / np.where(sxx > 0, sxx, 1.0), 0.0)
    return out


def window_values(frame: pd.DataFrame, columns: Sequence[str], size: int, stats: Sequence[str]) -> pd.DataFrame:
    """The window columns of one device's readings, ``frame`` in time order (same index)."""
    data: dict[str, np.ndarray] = {}
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        got = _stats(values, size, stats)
        for stat in stats:
            data[window_column(col, size, stat)] = got[stat]
    return pd.DataFrame(data, index=frame.index)


def _keys(frame: pd.DataFrame, by: str, order: str) -> pd.Series:
    """The device as text; a reading without a device or an order value gets a key of its own."""
    missing = frame[by].isna() | frame[order].isna()
    keys = frame[by].astype(str)
    if missing.any():
        keys[missing] = [f"__alone_{uuid.uuid4().hex}" for _ in range(int(missing.sum()))]
    return keys


def sort_readings(frame: pd.DataFrame, order: str, columns: Sequence[str]) -> pd.DataFrame:
    """One device's readings in time order; ties broken by the values, so the order never depends on arrival."""
    return frame.sort_values([order, *columns], kind="stable", na_position="last")


def group_windows(frame: pd.DataFrame, *, order: str, columns: Sequence[str], size: int,
                  stats: Sequence[str]) -> pd.DataFrame:
    """``frame`` (all of one device's readings, any order) with its window columns added (Ray Data's ``map_groups``)."""
    ordered = sort_readings(frame, order, columns)
    return pd.concat([ordered, window_values(ordered, columns, size, stats)], axis=1)


def add_windows(ds: Any, *, by: str, order: str, columns: Sequence[str], size: int, stats: Sequence[str]) -> Any:
    """A Ray dataset with the window columns added: grouped by device, each group ordered (offline path)."""
    def keyed(batch: pd.DataFrame) -> pd.DataFrame:
        return batch.assign(**{KEY: _keys(batch, by, order)})

    def windowed(group: pd.DataFrame) -> pd.DataFrame:
        return group_windows(group, order=order, columns=columns, size=size, stats=stats).drop(columns=[KEY])

    return ds.map_batches(keyed, batch_format="pandas").groupby(KEY).map_groups(windowed, batch_format="pandas")


class OnlineWindows:
    """The window columns of readings as they arrive (the online path): each device's last ``size - 1``
    readings are kept, and a micro-batch's windows are computed over them plus its own readings.

    Readings of one device must arrive in time order (as an MQTT topic per device delivers
    them); within one micro-batch they are ordered like the offline path orders them.

    Args:
        by, order, columns, size, stats: as in ``features.windows``.
        max_devices: devices whose state is kept; the least recently seen is dropped beyond it.
    """

    def __init__(self, *, by: str, order: str, columns: Sequence[str], size: int,
                 stats: Sequence[str] = STATS, max_devices: int = 1_000_000) -> None:
        self.by, self.order, self.columns, self.size = by, order, list(columns), int(size)
        self.stats = list(stats)
        self.max_devices = max_devices
        self._history: dict[str, np.ndarray] = {}  # device -> its last size - 1 readings, (rows, columns)

    @classmethod
    def from_spec(cls, windows: Any) -> "OnlineWindows":
        """From the spec's ``features.windows`` section."""
        return cls(by=windows.by, order=windows.order, columns=windows.columns, size=windows.size, stats=windows.stats)

    @property
    def devices(self) -> int:
        return len(self._history)

    def update(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (readings of any devices) with the window columns added, same row order and index.

        One pass for the whole micro-batch: each device's held readings and new ones (in the
        offline order) become a segment behind ``size - 1`` missing values, so no window reaches
        into another device's, and each column's statistics are computed over all segments at
        once by the same :func:`_stats` the offline path uses.
        """
        names = window_columns(self.columns, self.size, self.stats)
        if frame.empty:
            return pd.concat([frame, pd.DataFrame(columns=names, dtype=np.float64)], axis=1)
        pad, width = self.size - 1, len(self.columns)
        keyed = frame[[self.order, *self.columns]].assign(**{KEY: _keys(frame, self.by, self.order).to_numpy(),
                                                            "__pos": np.arange(len(frame))})
        ordered = keyed.sort_values([KEY, self.order, *self.columns], kind="stable", na_position="last")
        vals = np.column_stack([pd.to_numeric(ordered[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                                for c in self.columns])
        keys = ordered[KEY].to_numpy()
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        segments, take, at = [], [], 0
        for s, e in zip(starts, np.r_[starts[1:], len(keys)]):
            key = str(keys[s])
            held = self._history.pop(key, None)
            both = vals[s:e] if held is None else np.vstack([held, vals[s:e]])
            segments.append(np.vstack([np.full((pad, width), np.nan), both]))
            first_new = at + pad + len(both) - (e - s)
            take.append(np.arange(first_new, first_new + (e - s)))
            at += pad + len(both)
            if not key.startswith("__alone_"):
                self._history[key] = both[-pad:].copy()  # re-inserted: the most recently seen device is last
        while len(self._history) > self.max_devices:
            self._history.pop(next(iter(self._history)))
        series, rows = np.vstack(segments), np.concatenate(take)
        out = np.empty((len(frame), len(names)), dtype=np.float64)
        positions = ordered["__pos"].to_numpy()
        for j, col in enumerate(self.columns):
            got = _stats(series[:, j], self.size, self.stats)
            for k, stat in enumerate(self.stats):
                out[positions, j * len(self.stats) + k] = got[stat][rows]
        return pd.concat([frame, pd.DataFrame(out, index=frame.index, columns=names)], axis=1)

    def state(self) -> dict[str, list[dict[str, Any]]]:
        """Each device's held readings (plain data: to save a scorer's state)."""
        return {k: [dict(zip(self.columns, map(float, row))) for row in v] for k, v in self._history.items()}


def schema_columns(columns: Iterable[str], size: int, stats: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The schema entries of the window columns: numbers, derived from the named columns; required in a request
    (an endpoint cannot compute them from one row: the caller, or `raypipe stream`, sends them)."""
    return {window_column(c, size, s): {"type": "number", "nullable": False, "window": {"of": c, "stat": s}}
            for c in columns for s in stats}
