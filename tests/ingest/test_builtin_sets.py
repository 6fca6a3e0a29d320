"""Tests for scikit-learn's bundled sets, the synthetic ``sensors`` set and the dispatcher."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.ingest.builtin import (
    BUILTIN_GENERATOR_VERSION,
    BUILTIN_ID_COLUMNS,
    BUILTIN_TARGETS,
    BUILTIN_TASKS,
    builtin_dataset,
)
from raypipe.ingest.builtin.sensors import (
    CHUNK_ROWS,
    HORIZON,
    SCHEMA_DOC,
    SENSOR_COLUMNS,
    generate_chunk,
    generate_sensors,
    sensors_dataset,
)
from raypipe.ingest.builtin.sklearn_sets import (
    SKLEARN_SETS,
    TARGET_COLUMN,
    default_task,
    load_frame,
    sanitize_column,
    sklearn_dataset,
)
from raypipe.spec import BUILTIN_DATASETS, BuiltinSource

SKLEARN_EXPECTED = {  # rows, feature count, target dtype, a few target values
    "breast_cancer": (569, 30, "object", {"malignant", "benign"}),
    "digits": (1797, 64, "int64", set(range(10))),
    "wine": (178, 13, "object", {"class_0", "class_1", "class_2"}),
    "iris": (150, 4, "object", {"setosa", "versicolor", "virginica"}),
    "diabetes": (442, 10, "float64", None),
}
SENSOR_DTYPES = {
    "machine_id": "object", "cycle": "int64", "model": "object",
    "setting_load": "float64", "setting_speed_rpm": "float64", "setting_ambient_c": "float64",
    **{c: "float64" for c in SENSOR_COLUMNS},
    "failure_soon": "int64",
}


# --- scikit-learn sets -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SKLEARN_EXPECTED))
def test_sklearn_frame(name: str) -> None:
    rows, n_features, target_dtype, values = SKLEARN_EXPECTED[name]
    df = load_frame(name)
    assert df.shape == (rows, n_features + 1)
    assert df.columns[-1] == TARGET_COLUMN
    assert all(c.isidentifier() and c == c.lower() for c in df.columns)
    assert df.columns.is_unique
    assert (df.drop(columns=TARGET_COLUMN).dtypes == "float64").all()
    assert str(df[TARGET_COLUMN].dtype) == target_dtype
    assert df.notna().all().all()
    if values is not None:
        assert set(df[TARGET_COLUMN]) == values
    assert SKLEARN_SETS[name].rows == rows
    assert isinstance(df.index, pd.RangeIndex)


def test_sklearn_names_and_labels() -> None:
    iris = load_frame("iris")
    assert list(iris.columns) == [
        "sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm", "target",
    ]
    assert iris["target"].iloc[0] == "setosa" and isinstance(iris["target"].iloc[0], str)
    assert iris["target"].value_counts().tolist() == [50, 50, 50]
    assert load_frame("breast_cancer").columns[0] == "mean_radius"
    assert load_frame("breast_cancer")["target"].value_counts().to_dict() == {"benign": 357, "malignant": 212}
    assert "od280_od315_of_diluted_wines" in load_frame("wine").columns
    digits = load_frame("digits")
    assert list(digits.columns[:2]) == ["pixel_0_0", "pixel_0_1"] and digits.columns[63] == "pixel_7_7"
    assert digits["target"].iloc[:3].tolist() == [0, 1, 2]


def test_sanitize_column() -> None:
    assert sanitize_column("mean radius") == "mean_radius"
    assert sanitize_column("sepal length (cm)") == "sepal_length_cm"
    assert sanitize_column("od280/od315_of_diluted_wines") == "od280_od315_of_diluted_wines"
    assert sanitize_column("3rd Value") == "f_3rd_value"
    assert sanitize_column("()") == "col"


def test_default_task_and_unknown_name() -> None:
    assert {n: default_task(n) for n in SKLEARN_SETS} == {
        "breast_cancer": "classification", "digits": "classification", "wine": "classification",
        "iris": "classification", "diabetes": "regression",
    }
    with pytest.raises(ValueError, match="unknown scikit-learn dataset 'mnist'"):
        load_frame("mnist")


def test_registry_covers_every_builtin_name() -> None:
    for table in (BUILTIN_GENERATOR_VERSION, BUILTIN_TARGETS, BUILTIN_TASKS, BUILTIN_ID_COLUMNS):
        assert set(table) == set(BUILTIN_DATASETS)
    assert BUILTIN_TARGETS["sensors"] == "failure_soon" and BUILTIN_TARGETS["iris"] == "target"


# --- sensors -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sensors() -> pd.DataFrame:
    return generate_sensors(20_000, seed=0)


def test_sensors_columns_and_dtypes(sensors: pd.DataFrame) -> None:
    assert list(sensors.columns) == list(SENSOR_DTYPES) == list(SCHEMA_DOC)
    assert {c: str(t) for c, t in sensors.dtypes.items()} == SENSOR_DTYPES
    assert sensors.notna().all().all()
    assert set(sensors["model"]) == {"A100", "B200", "C300"}
    assert set(sensors["setting_speed_rpm"]) == {1200.0, 1500.0, 1800.0}
    assert sensors["setting_load"].between(0.2, 1.0).all()
    assert all(isinstance(v, str) for v in sensors["machine_id"].iloc[:5])


@pytest.mark.parametrize("rows", [0, 1, 100, 20_000, CHUNK_ROWS + 7])
def test_sensors_row_count(rows: int) -> None:
    df = generate_sensors(rows, seed=1)
    assert len(df) == rows
    assert list(df.columns) == list(SENSOR_DTYPES)


def test_sensors_machines_run_until_failure(sensors: pd.DataFrame) -> None:
    assert 70 <= sensors["machine_id"].nunique() <= 140  # about rows / 200 machines
    for _, g in sensors.groupby("machine_id", sort=False):
        assert g["cycle"].tolist() == list(range(1, len(g) + 1))
        assert g["model"].nunique() == 1
    last = sensors["machine_id"].iloc[-1]
    finished = sensors[sensors["machine_id"] != last]  # the last machine may still be running
    tail = finished.groupby("machine_id")["failure_soon"].apply(lambda s: s.tolist())
    assert all(t[-HORIZON:] == [1] * HORIZON and sum(t) == HORIZON for t in tail)


def test_sensors_deterministic(sensors: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(generate_sensors(20_000, seed=0), sensors)
    pd.testing.assert_frame_equal(generate_sensors(20_000, seed=0, drift=0.0), sensors)
    other = generate_sensors(20_000, seed=1)
    assert not other["temperature_c"].equals(sensors["temperature_c"])
    assert not other["failure_soon"].equals(sensors["failure_soon"])


def test_sensors_positive_rate(sensors: pd.DataFrame) -> None:
    assert 0.07 <= sensors["failure_soon"].mean() <= 0.13
    big = generate_sensors(2 * CHUNK_ROWS, seed=4, drift=0.5)
    assert 0.08 <= big["failure_soon"].mean() <= 0.12


def test_sensors_chunks_are_independent() -> None:
    df = generate_sensors(CHUNK_ROWS + 1_000, seed=5)
    pd.testing.assert_frame_equal(df.iloc[:CHUNK_ROWS], generate_chunk(0, CHUNK_ROWS, seed=5))
    pd.testing.assert_frame_equal(df.iloc[CHUNK_ROWS:].reset_index(drop=True), generate_chunk(1, 1_000, seed=5))
    assert df["machine_id"].iloc[CHUNK_ROWS] == "M0001-0000"
    with pytest.raises(ValueError):
        generate_chunk(0, CHUNK_ROWS + 1, seed=0)
    with pytest.raises(ValueError):
        generate_sensors(10, drift=-1.0)


def test_sensors_signal_learnable(sensors: pd.DataFrame) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    y = sensors["failure_soon"]
    x = sensors.drop(columns=["machine_id", "failure_soon"]).assign(model=lambda d: d["model"].astype("category"))
    machines = sensors["machine_id"].unique()
    test = sensors["machine_id"].isin(machines[::4])  # whole machines held out
    clf = HistGradientBoostingClassifier(max_iter=100, categorical_features="from_dtype", random_state=0)
    with threadpool_limits(1):  # OpenMP threads crawl on a loaded 2-core host
        clf.fit(x[~test], y[~test])
    auc = roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1])
    assert auc > 0.85
    assert roc_auc_score(y[test], np.full(test.sum(), y[~test].mean())) == 0.5
    # Uninformative sensors carry no signal on their own; vibration does.
    assert abs(roc_auc_score(y, sensors["voltage_v"]) - 0.5) < 0.05
    assert roc_auc_score(y, sensors["vibration_mm_s"]) > 0.75


def test_sensors_drift_shifts_distributions(sensors: pd.DataFrame) -> None:
    drifted = generate_sensors(20_000, seed=0, drift=1.0)
    for col, sign in (("temperature_c", 1), ("vibration_mm_s", 1), ("voltage_v", -1), ("setting_ambient_c", 1)):
        shift = (drifted[col].mean() - sensors[col].mean()) / sensors[col].std()
        assert sign * shift > 0.3, col
    assert (drifted["model"] == "C300").mean() > (sensors["model"] == "C300").mean() + 0.08
    assert abs(drifted["failure_soon"].mean() - sensors["failure_soon"].mean()) < 0.03


# --- as Ray Datasets ----------------------------------------------------------------------


def _plain(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Arrow round trip to numpy/object dtypes, sorted by ``keys``."""
    out = pa.Table.from_pandas(df, preserve_index=False).to_pandas(ignore_metadata=True)
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype).startswith(("string", "large_string")):
            out[col] = out[col].astype(object)
    return out.sort_values(keys).reset_index(drop=True)


def test_sensors_dataset_matches_pandas(ray_session) -> None:
    rows = CHUNK_ROWS + 5_000
    parallel = sensors_dataset(rows, seed=7, drift=0.3, parallel_threshold=0)
    assert parallel.schema().names == list(SENSOR_DTYPES)
    got = _plain(parallel.to_pandas(), ["machine_id", "cycle"])
    expected = _plain(generate_sensors(rows, seed=7, drift=0.3), ["machine_id", "cycle"])
    pd.testing.assert_frame_equal(got, expected)
    assert builtin_dataset(BuiltinSource(type="builtin", name="sensors", rows=3_000, seed=2)).count() == 3_000


@pytest.mark.parametrize("name", sorted(SKLEARN_EXPECTED))
def test_sklearn_dataset(ray_session, name: str) -> None:
    ds = sklearn_dataset(name)
    assert ds.count() == SKLEARN_EXPECTED[name][0]
    assert ds.schema().names == list(load_frame(name).columns)
    assert ds.materialize().num_blocks() == 4
    via_spec = builtin_dataset(BuiltinSource(type="builtin", name=name))
    got = _plain(via_spec.to_pandas(), list(load_frame(name).columns[:3]))
    pd.testing.assert_frame_equal(got, _plain(load_frame(name), list(load_frame(name).columns[:3])))
