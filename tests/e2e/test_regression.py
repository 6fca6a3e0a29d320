"""A regression pipeline end to end on the bundled diabetes data (442 rows), on the shared local Ray.

One storage and one pipeline name for the module: a scikit-learn ``Ridge`` becomes the
champion and is served over HTTP; then ``torch.mlp`` is gated against the baselines on
the same test split: at default settings (the target standardised for training, enough
steps) it beats the mean; with the target left unscaled and 20 steps (the defaults
before issue 19) it scores R² far below 0: the gate must refuse it, and a finding must
say why.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import httpx
import pyarrow.dataset as pads
import pytest

import raypipe
from raypipe.errors import GateFailed
from raypipe.model.predictor import Predictor
from raypipe.progress import Progress
from raypipe.registry import Registry
from tests.conftest import free_port

quiet = Progress(quiet=True)
NAME = "t-diabetes"


def diabetes_spec(storage, **sections) -> dict:
    spec = {
        "name": NAME,
        "storage": str(storage),
        # stratify: false — stratifying on a continuous target makes every distinct value a stratum, and strata
        # of 1-3 rows round to no test rows (29 test rows of 442 instead of ~66).
        "data": {"source": {"type": "builtin", "name": "diabetes"}, "target": "target", "task": "regression",
                 "split": {"stratify": False}},
        "model": {"kind": "sklearn:sklearn.linear_model:Ridge", "params": {"alpha": 1.0}},
        "deploy": {"port": free_port()},
    }
    return {**spec, **sections}


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("regression") / "store"


@pytest.fixture(scope="module")
def ridge(ray_session, storage):
    return raypipe.run(diabetes_spec(storage), progress=quiet)


@pytest.fixture(scope="module")
def doc_of(storage):
    return lambda version: Registry(str(storage), NAME).version_store(version).read_json("metrics.json")


def test_sklearn_regressor_reports_rmse_mae_r2_and_beats_the_trivial_baseline(ridge, doc_of):
    assert ridge.status == "ok" and ridge.alias == "champion"
    assert set(ridge.metrics) == {"rmse", "mae", "r2"}
    doc = doc_of(ridge.version)
    assert doc["test"]["rows"] > 50 and doc["test"]["r2"] > 0.3  # a linear model reaches ~0.45 on diabetes
    trivial = doc["baselines"]["trivial"]
    assert trivial["model"] == "DummyRegressor"
    assert trivial["test"]["r2"] <= 0.0  # the train mean, scored on test: never above 0
    assert doc["test"]["rmse"] < trivial["test"]["rmse"] and doc["test"]["mae"] < trivial["test"]["mae"]
    checks = {c["check"]: c for c in doc["gate"]["checks"]}
    assert checks["r2 >= trivial baseline (DummyRegressor)"]["passed"]


def test_linear_baseline_is_fitted_on_the_models_own_features(ridge, doc_of):
    """A Ridge model and the Ridge baseline see the same fitted features of the same train rows: same scores."""
    doc = doc_of(ridge.version)
    linear = doc["baselines"]["linear"]
    assert linear["model"] == "Ridge" and linear["train_rows"] == doc["train_split_rows"]  # 442 rows: no sample
    for m in ("rmse", "mae", "r2"):
        assert linear["test"][m] == pytest.approx(doc["test"][m], rel=1e-6)
    # No lift over the linear baseline: the findings say so in plain words.
    assert any(f.startswith("No better than a linear model: rmse") for f in doc["findings"])
    # ... and the run summary carries both baselines beside the model's metrics.
    assert set(ridge.summary()["baselines"]) == {"trivial", "linear"}
    assert ridge.summary()["baselines"]["linear"]["metrics"]["r2"] == pytest.approx(ridge.metrics["r2"], rel=1e-6)


def test_runs_show_lists_the_baselines_beside_the_model(ridge, storage, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(json.dumps(diabetes_spec(storage)))
    out = subprocess.run([sys.executable, "-m", "raypipe", "runs", "show", str(spec), ridge.run_id],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}, check=False)
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if "metric" in line and "test" in line)
    assert "trivial baseline (test)" in header and "linear baseline (test)" in header
    assert "No better than a linear model" in out.stdout


def test_min_lift_over_baseline_gates_on_the_linear_model(ridge, storage, doc_of):
    spec = diabetes_spec(storage, evaluate={"gate": {"min_lift_over_baseline": 0.5}})
    with pytest.raises(GateFailed) as info:
        raypipe.run(spec, progress=quiet)
    assert any(f.startswith("rmse lift over linear baseline (Ridge) >= +0.5") for f in info.value.failures)
    assert Registry(str(storage), NAME).alias("champion") == ridge.version


def test_served_predictions_equal_the_offline_predictor(ridge, storage):
    from ray import serve

    spec = raypipe.load_spec(diabetes_spec(storage))
    val = ridge.outputs["validate"]
    schema = val.store.read_json("schema.json")
    columns = schema["features"]["numeric"]
    table = pads.dataset(val.store.path(val.outputs.splits["test"]), format="parquet").head(25, columns=columns)
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in table.to_pylist()]
    endpoint = raypipe.serve(spec)
    try:
        assert endpoint.version == ridge.version
        online = httpx.post(f"{endpoint.url}/predict", json=rows, timeout=60).json()
    finally:
        serve.delete(spec.name)
    reg = Registry(str(storage), NAME)
    offline = Predictor.from_version(reg.version_store(ridge.version), ridge.version).predict_records(rows)
    assert online["version"] == ridge.version
    assert [p["prediction"] for p in online["predictions"]] == pytest.approx([p["prediction"] for p in offline],
                                                                           rel=1e-9)
    assert len({round(p["prediction"], 6) for p in offline}) > 1  # real predictions, not one constant


def test_torch_mlp_at_defaults_beats_the_mean_in_the_targets_units(ridge, storage, doc_of):
    spec = diabetes_spec(storage, model={"kind": "torch.mlp"}, train={"workers": 1})  # otherwise default settings
    result = raypipe.run(spec, progress=quiet)  # passes the gate: R² above the mean's
    doc = doc_of(result.version)
    assert doc["test"]["r2"] > 0.2, doc["findings"]  # before issue 19: -3.5; Ridge ~0.45
    scale = Registry(str(storage), NAME).version_store(result.version).read_json("model", "model.json")["target_scale"]
    assert 140 < scale["mean"] < 165 and 70 < scale["std"] < 85  # the train split's, in the target's units
    report = result.outputs["train"].store.read_json("train_report.json")
    assert report["target_scale"] == scale and report["steps_run"] >= 200 and report["plan"]["min_steps"] == 1000
    best = report["history"][report["early_stopping"]["best_epoch"]]
    assert 35 < best["val_rmse"] < 90  # reported in the target's units, as the test rmse (~55)
    assert not any("target is not scaled" in f for f in doc["findings"])


def test_torch_mlp_is_never_promoted_when_worse_than_the_mean(ridge, storage, doc_of):
    reg = Registry(str(storage), NAME)
    champion = reg.alias("champion")
    # The defaults before issue 19: the target not scaled, 20 epochs of one batch.
    spec = diabetes_spec(storage, model={"kind": "torch.mlp"},
                         train={"workers": 1, "scale_target": False, "epochs": 20, "batch_size": 1024})
    with pytest.raises(GateFailed) as info:  # worse than predicting the mean: refused, whatever the other checks say
        raypipe.run(spec, progress=quiet)
    refused, version = info.value, info.value.version
    doc = doc_of(version)
    assert {"trivial", "linear"} <= set(doc["baselines"])
    assert doc["test"]["r2"] < 0  # 20 steps cannot reach a target of mean 150
    assert any(f.startswith("r2 >= trivial baseline") for f in refused.failures)
    assert reg.status(version) == "rejected" and reg.alias("champion") == champion
    assert any(f.startswith("Worse than the trivial baseline: r2") for f in doc["findings"])
    # The finding names the cause raypipe can see: the target (mean ~150, std ~77) is not scaled.
    assert any("target is not scaled" in f for f in doc["findings"]), doc["findings"]
    assert not any("more epochs" in f for f in doc["findings"])
