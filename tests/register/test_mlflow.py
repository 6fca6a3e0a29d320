"""Unit tests for ``raypipe.register.mlflow``: export a run to a local MLflow store (no Ray)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from raypipe.errors import SpecError
from raypipe.register.mlflow import export_run


PARAMS = {"model": "sklearn", "train": {"lr": 0.01, "epochs": 3, "opt": {"name": "adam"}},
          "features": ["a", "b"], "long": "x" * 7000}
METRICS = {"auc": 0.91, "rows": 3000, "missing": None, "bad": float("nan"), "flag": True,
           "hist": [1, 2], "test": {"f1": 0.8, "inf": math.inf}}
TAGS = {"raypipe.model_uri": "models:/fraud/3", "raypipe.version": "3", "raypipe.status": "ok"}
ARTIFACTS = {"report.html": b"<html>hi</html>", "metrics.json": b'{"auc": 0.91}',
             "plots/roc.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256))}


@pytest.fixture(scope="module", params=["sqlite", "file"])
def store(request, tmp_path_factory):
    """One store per scheme for the whole module (a fresh sqlite db costs ~2 s of migrations)."""
    root = tmp_path_factory.mktemp(f"mlflow-{request.param}")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "sqlite":
            yield f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
        else:
            mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x: file store is opt-in
            yield (root / "mlruns").as_uri(), None


def export(store, experiment: str, run_id: str = "run-1", **over) -> str:
    uri, artifact_location = store
    kwargs = {"experiment": experiment, "run_id": run_id, "params": PARAMS, "metrics": METRICS,
              "tags": TAGS, "artifacts": ARTIFACTS, "artifact_location": artifact_location}
    kwargs.update(over)
    return export_run(uri, **kwargs)


def test_export_round_trip_and_idempotence(store, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    mlflow_id = export(store, "roundtrip")
    client = MlflowClient(tracking_uri=store[0])
    run = client.get_run(mlflow_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run-1"

    params = run.data.params
    assert params["model"] == "sklearn"
    assert params["train.lr"] == "0.01" and params["train.epochs"] == "3"
    assert params["train.opt.name"] == "adam"
    assert params["features"] == "['a', 'b']"
    assert params["long"] == "x" * 6000

    assert run.data.metrics == {"auc": 0.91, "rows": 3000.0, "test.f1": 0.8}

    tags = run.data.tags
    assert tags["raypipe.run_id"] == "run-1"
    assert {k: tags[k] for k in TAGS} == TAGS

    assert sorted(a.path for a in client.list_artifacts(mlflow_id)) == [
        "metrics.json", "plots", "report.html"]
    assert [a.path for a in client.list_artifacts(mlflow_id, "plots")] == ["plots/roc.png"]
    for name, data in ARTIFACTS.items():
        local = client.download_artifacts(mlflow_id, name, str(tmp_path))
        assert Path(local).read_bytes() == data
    if store[1] is not None:  # artifacts went where asked, not under ./mlruns
        assert run.info.artifact_uri.startswith(store[1])

    assert export(store, "roundtrip") == mlflow_id
    exp = client.get_experiment_by_name("roundtrip")
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_failure_marks_run_failed_and_retry_creates_new_run(store) -> None:
    from mlflow.tracking import MlflowClient

    with pytest.raises(ValueError, match="relative path"):
        export(store, "failing", artifacts={"ok.txt": b"1", "../escape.txt": b"2"})
    client = MlflowClient(tracking_uri=store[0])
    exp_id = client.get_experiment_by_name("failing").experiment_id
    (failed,) = client.search_runs([exp_id])
    assert failed.info.status == "FAILED"

    mlflow_id = export(store, "failing", artifacts={"ok.txt": b"1"})
    assert mlflow_id != failed.info.run_id
    assert client.get_run(mlflow_id).info.status == "FINISHED"
    assert export(store, "failing", artifacts={}) == mlflow_id


def test_file_store_without_opt_in_is_a_spec_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(SpecError, match="tracking.mlflow_uri"):
        export_run((tmp_path / "mlruns").as_uri(), experiment="e", run_id="r", params={},
                   metrics={}, tags={}, artifacts={})


def test_missing_mlflow_is_a_spec_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    with pytest.raises(SpecError) as info:
        export_run("sqlite:///x.db", experiment="e", run_id="r", params={}, metrics={},
                   tags={}, artifacts={})
    message = str(info.value)
    assert "tracking.mlflow_uri" in message
    assert "pip install 'raypipe[mlflow]'" in message
    assert info.value.exit_code == 2
