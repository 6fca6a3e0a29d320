"""``features.windows`` in the pipeline: computed over every split on validated rows, the same as online."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

import raypipe
from raypipe.ingest.builtin.sensors import generate_sensors
from raypipe.model.features.windows import OnlineWindows, window_column
from raypipe.progress import Progress

COLUMNS = ["vibration_mm_s", "temperature_c"]
STATS = ["mean", "std", "min", "max", "slope"]


def _messy_csv(path: Path) -> Path:
    """Sensor readings the way a plant historian exports them: stray text, empty cells, rows out of order."""
    df = generate_sensors(rows=2500, seed=4)
    rng = np.random.default_rng(4)
    vib = df["vibration_mm_s"].round(3).astype(object)
    vib[rng.random(len(df)) < 0.03] = "n/a"
    vib[rng.random(len(df)) < 0.03] = ""
    df["vibration_mm_s"] = vib
    df = df.sample(frac=1.0, random_state=4)  # an export is not in time order
    out = path / "sensors.csv"
    df.to_csv(out, index=False)
    return out


def _spec(storage: Path, csv: Path, columns: list[str]) -> dict:
    return {"name": "t-windows", "storage": str(storage),
            "data": {"source": {"type": "csv", "path": str(csv)}, "target": "failure_soon", "id_columns": ["machine_id"]},
            "features": {"windows": {"by": "machine_id", "order": "cycle", "columns": columns, "size": 6}},
            "model": {"kind": "sklearn:sklearn.linear_model:LogisticRegression"}}


def test_offline_windows_over_all_splits_equal_the_online_scorer_s(ray_session, tmp_path: Path) -> None:
    result = raypipe.run(_spec(tmp_path / "store", _messy_csv(tmp_path), COLUMNS), until="validate",
                         progress=Progress(quiet=True))
    val = result.outputs["validate"]
    schema = val.read_json(val.outputs.schema)
    added = [window_column(c, 6, s) for c in COLUMNS for s in STATS]
    assert set(added) <= set(schema["features"]["numeric"])
    assert all(schema["columns"][c]["window"]["of"] in COLUMNS for c in added)
    frames = [pads.dataset(val.store.path(rel), filesystem=val.store.fs, format="parquet").to_table().to_pandas()
              .assign(split=name) for name, rel in val.outputs.splits.items()]
    offline = pd.concat(frames, ignore_index=True)
    assert len(offline) == sum(c["valid"] for c in val.outputs.counts.values())
    assert {"train", "validation", "test"} <= set(offline["split"])
    assert offline["vibration_mm_s"].isna().sum() > 0  # the stray text became missing readings, not lost rows
    # online: the same validated readings arrive in time order, interleaved across machines, in micro-batches
    arrival = offline.drop(columns=added).sort_values(["cycle", "machine_id"], kind="stable").reset_index()
    online = OnlineWindows(by="machine_id", order="cycle", columns=COLUMNS, size=6, stats=STATS)
    got = pd.concat([online.update(arrival.iloc[i:i + 37]) for i in range(0, len(arrival), 37)])
    got = got.set_index("index").sort_index()
    assert np.array_equal(got[added].to_numpy(), offline[added].to_numpy(), equal_nan=True)
    # a window only looks back: a machine's first reading's window is that reading alone
    first = offline.sort_values("cycle").groupby("machine_id").head(1)
    has = first["vibration_mm_s"].notna()
    assert (first.loc[has, "vibration_mm_s_w6_mean"] == first.loc[has, "vibration_mm_s"]).all()
    assert (first.loc[has, "vibration_mm_s_w6_std"] == 0).all()


def test_a_window_of_a_text_column_is_refused_naming_it(ray_session, tmp_path: Path) -> None:
    with pytest.raises(raypipe.DataValidationError, match="'model' is string, not a number"):
        raypipe.run(_spec(tmp_path / "store", _messy_csv(tmp_path), ["model"]), until="validate",
                    progress=Progress(quiet=True))
