"""Synthetic multi-sensor telemetry for predictive maintenance (the built-in ``sensors`` set).

Machines run cycle after cycle until they fail. A hidden wear level rises slowly, then
faster, towards the failure cycle; most sensors follow it (temperature, vibration, oil
temperature, current and noise up; pressure, flow and rpm down) on top of the operating
settings, the machine model and noise, and a few sensors carry no signal at all. The
label ``failure_soon`` is 1 on a machine's last :data:`HORIZON` cycles before failure
(about 10 % of rows: machines live about 200 cycles).

Rows are generated in chunks of :data:`CHUNK_ROWS`, each holding whole machines (the
last one of a chunk may still be running, its failure after the data ends). Chunk ``i``
draws all of its randomness from ``np.random.default_rng([seed, i])``, so chunks are
generated independently, in Ray tasks, with the same rows as on the driver. ``drift``
shifts the sensor and setting distributions (recalibrated, hotter, busier fleet) while the
label rule stays the same.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from raypipe.ingest.builtin.chunks import CHUNK_ROWS, PARALLEL_THRESHOLD, chunk_rng, chunked_dataset, drift_weight, generate_frame  # noqa: F401 (CHUNK_ROWS re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import ray.data


"""Rows per generation chunk; machine ids of chunk ``i`` are ``M<i:04d>-<k:04d>``."""

HORIZON = 20
"""``failure_soon`` is 1 when the machine fails within this many cycles."""

MODELS = ("A100", "B200", "C300")
_MODEL_P = np.array([0.5, 0.3, 0.2])
_MODEL_P_DRIFT = np.array([0.2, 0.3, 0.5])
_MODEL_LIFE = np.array([210.0, 190.0, 200.0])  # mean cycles to failure, by model
_MIN_LIFE, _MAX_LIFE = 60, 450
_SPEEDS = np.array([1200.0, 1500.0, 1800.0])  # setting_speed_rpm levels

SENSOR_COLUMNS = (
    "temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "oil_temp_c",
    "current_a", "flow_rate_l_min", "acoustic_db", "humidity_pct", "voltage_v",
)

SCHEMA_DOC: dict[str, str] = {
    "machine_id": "str; the machine, unique across the dataset (an id, not a feature).",
    "cycle": "int64; operating cycle of the machine, 1, 2, ... in row order.",
    "model": "str; machine type, one of A100, B200, C300.",
    "setting_load": "float64; load fraction 0.2-1.0 during the cycle.",
    "setting_speed_rpm": "float64; speed set point, 1200, 1500 or 1800.",
    "setting_ambient_c": "float64; ambient temperature in deg C.",
    "temperature_c": "float64; housing temperature, rises with wear.",
    "vibration_mm_s": "float64; vibration velocity, rises sharply with wear.",
    "pressure_bar": "float64; hydraulic pressure, falls with wear.",
    "rpm": "float64; measured speed, sags below the set point with wear.",
    "oil_temp_c": "float64; oil temperature, rises with wear.",
    "current_a": "float64; motor current, rises with wear.",
    "flow_rate_l_min": "float64; coolant flow, falls slightly with wear.",
    "acoustic_db": "float64; noise level, weak wear signal.",
    "humidity_pct": "float64; ambient humidity, no wear signal.",
    "voltage_v": "float64; supply voltage, no wear signal.",
    "failure_soon": f"int64; label, 1 if the machine fails within the next {HORIZON} cycles (~10 %).",
}


def _machines(rng: np.random.Generator, rows: int, drift: float) -> dict[str, np.ndarray]:
    """Whole machines covering ``rows`` rows: model, life (failure cycle), wear profile."""
    k = rows // _MIN_LIFE + 1  # enough machines to cover the chunk whatever lives come out
    w = drift_weight(drift)
    p = (1 - w) * _MODEL_P + w * _MODEL_P_DRIFT
    model = np.minimum(np.searchsorted(np.cumsum(p), rng.random(k), side="right"), len(MODELS) - 1)
    life = np.clip(np.round(rng.normal(_MODEL_LIFE[model], 60.0)), _MIN_LIFE, _MAX_LIFE).astype(np.int64)
    steep = rng.uniform(3.0, 6.0, k)  # how late the wear accelerates
    severity = rng.uniform(0.7, 1.3, k)  # how strongly wear shows in the sensors
    used = int(np.searchsorted(np.cumsum(life), rows) + 1) if rows else 0
    return {"model": model[:used], "life": life[:used], "steep": steep[:used], "severity": severity[:used]}


def _rows(m: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Per-row machine index, cycle, wear in [0, 1] and label (the last machine cut at ``rows``)."""
    life = m["life"]
    idx = np.repeat(np.arange(len(life)), life)[:rows]
    starts = np.concatenate([[0], np.cumsum(life)[:-1]])
    cycle = np.arange(rows, dtype=np.int64) - starts[idx] + 1
    frac = cycle / life[idx]
    steep = m["steep"][idx]
    wear = np.expm1(steep * frac) / np.expm1(steep) * m["severity"][idx]
    label = (life[idx] - cycle < HORIZON).astype(np.int64)
    return {"idx": idx, "cycle": cycle, "wear": wear, "label": label}


def _settings(rng: np.random.Generator, n: int, w: float) -> dict[str, np.ndarray]:
    """Operating settings per cycle: load, speed set point, ambient temperature."""
    load = np.clip(rng.beta(4.0 + 4.0 * w, 3.0, n) * 0.8 + 0.2, 0.2, 1.0)
    speed = _SPEEDS[rng.integers(0, len(_SPEEDS), n)]
    ambient = rng.normal(22.0 + 8.0 * w, 5.0, n)
    return {"setting_load": load, "setting_speed_rpm": speed, "setting_ambient_c": ambient}


def _sensors(
    rng: np.random.Generator, s: dict[str, np.ndarray], wear: np.ndarray, model: np.ndarray, w: float
) -> dict[str, np.ndarray]:
    """Sensor readings: operating point + model offset + wear effect + noise (+ drift)."""
    n = wear.shape[0]
    load, speed, amb = s["setting_load"], s["setting_speed_rpm"], s["setting_ambient_c"]
    noise = rng.standard_normal((len(SENSOR_COLUMNS), n))
    offset = np.array([0.0, 3.0, -2.0])[model]
    out = {
        "temperature_c": 55 + 20 * load + 0.5 * amb + offset + 9 * wear + 3.0 * noise[0] + 4 * w,
        "vibration_mm_s": np.exp(0.6 + 0.4 * load + 0.7 * wear + 0.3 * noise[1]) * (1 + 0.5 * w),
        "pressure_bar": 30 + 6 * load - 0.5 * offset - 3.5 * wear + 1.4 * noise[2] - 2 * w,
        "rpm": speed * (1 - 0.015 * wear) + 6.0 * noise[3],
        "oil_temp_c": 60 + 15 * load + 0.4 * amb + 7 * wear + 3.5 * noise[4] + 3 * w,
        "current_a": 10 + 25 * load * speed / 1500 + 3 * wear + 1.5 * noise[5],
        "flow_rate_l_min": 40 - 5 * load - 2.0 * wear + 1.5 * noise[6] + 2 * w,
        "acoustic_db": 70 + 5 * load + 1.0 * wear + 2.5 * noise[7],
        "humidity_pct": np.clip(50 + 12 * noise[8] + 10 * w, 5, 100),
        "voltage_v": 400 + 4 * noise[9] - 5 * w,
    }
    return {k: np.round(v, 3) for k, v in out.items()}


def generate_chunk(chunk_index: int, rows: int, seed: int, drift: float = 0.0) -> pd.DataFrame:
    """Generates one chunk: whole machines from cycle 1, ``rows`` rows in all.

    Args:
        chunk_index: Index of the chunk; names its machines ``M<chunk_index>-<k>``.
        rows: Number of rows, at most :data:`CHUNK_ROWS`.
        seed: Dataset seed; the chunk uses ``np.random.default_rng([seed, chunk_index])``.
        drift: Distribution shift, ``0`` for the reference distribution.

    Returns:
        A frame with the columns of :data:`SCHEMA_DOC`, ordered by machine then cycle.
    """
    rng = chunk_rng(chunk_index, rows, seed, drift)
    w = drift_weight(drift)
    m = _machines(rng, rows, drift)
    r = _rows(m, rows)
    model = m["model"][r["idx"]]
    settings = _settings(rng, rows, w)
    ids = np.array([f"M{chunk_index:04d}-{k:04d}" for k in range(len(m["life"]))], dtype=object)
    return pd.DataFrame({
        "machine_id": pd.Series(ids[r["idx"]], dtype=object),
        "cycle": r["cycle"],
        "model": pd.Series(np.asarray(MODELS, dtype=object)[model], dtype=object),
        **settings,
        **_sensors(rng, settings, r["wear"], model, w),
        "failure_soon": r["label"],
    })


def generate_sensors(rows: int, seed: int = 0, drift: float = 0.0) -> pd.DataFrame:
    """Generates the dataset in-process: chunks ``0 .. ceil(rows / CHUNK_ROWS) - 1``."""
    return generate_frame(generate_chunk, rows, seed, drift)


def sensors_dataset(
    rows: int, seed: int = 0, drift: float = 0.0, *, parallel_threshold: int = PARALLEL_THRESHOLD
) -> ray.data.Dataset:
    """The dataset as a ``ray.data.Dataset``; one Ray task per chunk above ``parallel_threshold`` rows.

    Both paths give identical rows (up to block order).
    """
    return chunked_dataset(generate_chunk, rows, seed, drift, parallel_threshold)
