"""Per-device rolling windows: the values against pandas/numpy computed independently, online == offline."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.model.features.windows import OnlineWindows, group_windows, window_column, window_values

STATS = ["mean", "std", "min", "max", "slope"]


def _series(n: int, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    v = np.cumsum(rng.normal(0, 1, n)) + 50
    v[rng.random(n) < 0.2] = np.nan  # sensors drop readings
    return pd.Series(v)


def _slope(values: np.ndarray) -> float:
    """np.polyfit on the present values of one window against their positions in it."""
    x = np.arange(len(values), dtype=float)
    ok = ~np.isnan(values)
    return float(np.polyfit(x[ok], values[ok], 1)[0]) if ok.sum() >= 2 else 0.0


@pytest.mark.parametrize("size", [2, 5, 12])
def test_each_statistic_matches_pandas_rolling_and_polyfit(size: int) -> None:
    s = _series(80, size)
    got = window_values(pd.DataFrame({"v": s}), ["v"], size, STATS)
    roll = s.rolling(size, min_periods=1)
    np.testing.assert_allclose(got[window_column("v", size, "mean")], roll.mean(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got[window_column("v", size, "std")], roll.std(ddof=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got[window_column("v", size, "min")], roll.min(), rtol=0)
    np.testing.assert_allclose(got[window_column("v", size, "max")], roll.max(), rtol=0)
    padded = np.concatenate([np.full(size - 1, np.nan), s.to_numpy()])
    expected = [_slope(padded[i:i + size]) for i in range(len(s))]
    np.testing.assert_allclose(got[window_column("v", size, "slope")], expected, rtol=1e-9, atol=1e-9)


def test_a_window_never_sees_a_later_reading() -> None:
    s = _series(40, 1)
    before = window_values(pd.DataFrame({"v": s}), ["v"], 6, STATS)
    changed = s.copy()
    changed.iloc[25:] = 1e6
    after = window_values(pd.DataFrame({"v": changed}), ["v"], 6, STATS)
    pd.testing.assert_frame_equal(before.iloc[:25], after.iloc[:25])
    assert not before.iloc[25:].equals(after.iloc[25:])


def _fleet(devices: int, per_device: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = [pd.DataFrame({"device": f"M{d:03d}", "cycle": np.arange(1, per_device + 1),
                            "vib": _series(per_device, seed + d), "temp": rng.normal(60, 5, per_device)})
              for d in range(devices)]
    return pd.concat(frames, ignore_index=True)


def test_online_in_any_micro_batches_equals_offline_bit_for_bit() -> None:
    fleet = _fleet(7, 60, 3)
    offline = pd.concat([group_windows(g, order="cycle", columns=["vib", "temp"], size=8, stats=STATS)
                         for _, g in fleet.groupby("device")]).sort_index()
    # the readings arrive interleaved across devices, in time order per device, in batches of 1..40
    arrival = fleet.sort_values(["cycle", "device"]).reset_index()
    online = OnlineWindows(by="device", order="cycle", columns=["vib", "temp"], size=8, stats=STATS)
    rng, start, parts = np.random.default_rng(0), 0, []
    while start < len(arrival):
        n = int(rng.integers(1, 41))
        parts.append(online.update(arrival.iloc[start:start + n]))
        start += n
    got = pd.concat(parts).set_index("index").sort_index()
    cols = [window_column(c, 8, s) for c in ("vib", "temp") for s in STATS]
    assert np.array_equal(got[cols].to_numpy(), offline[cols].to_numpy(), equal_nan=True)
    assert online.devices == 7


def test_a_reading_without_device_or_time_is_a_window_of_itself() -> None:
    rows = pd.DataFrame({"device": ["a", "a", None, "a"], "cycle": [1, 2, 3, None], "vib": [1.0, 3.0, 100.0, 50.0]})
    got = OnlineWindows(by="device", order="cycle", columns=["vib"], size=3, stats=["mean", "std"]).update(rows)
    assert got["vib_w3_mean"].tolist() == [1.0, 2.0, 100.0, 50.0]
    assert got["vib_w3_std"].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_state_holds_only_the_last_size_minus_one_readings() -> None:
    online = OnlineWindows(by="device", order="cycle", columns=["vib"], size=4, stats=["mean"])
    online.update(pd.DataFrame({"device": "a", "cycle": range(10), "vib": np.arange(10.0)}))
    assert [r["vib"] for r in online.state()["a"]] == [7.0, 8.0, 9.0]
    nxt = online.update(pd.DataFrame({"device": ["a"], "cycle": [10], "vib": [10.0]}))
    assert nxt["vib_w4_mean"].tolist() == [8.5]


def _spec(**windows) -> dict:
    return {"name": "w", "data": {"source": {"type": "builtin", "name": "sensors", "rows": 100}, "target": "failure_soon"},
            "features": {"windows": {"by": "machine_id", "order": "cycle", "columns": ["vibration_mm_s"], **windows}}}


@pytest.mark.parametrize(("windows", "message"), [
    ({"columns": ["failure_soon"]}, "is the target"),
    ({"columns": ["cycle"]}, "not the device or the clock"),
    ({"size": 1}, "greater than or equal to 2"),
    ({"stats": ["median"]}, "mean"),
])
def test_the_spec_refuses_windows_that_leak_or_mean_nothing(windows: dict, message: str) -> None:
    with pytest.raises(raypipe.SpecError, match=message):
        raypipe.load_spec(_spec(**windows))
