"""Unit tests for ``raypipe.tracking``: the run opened before training, the per-epoch logger (no Ray)."""
from __future__ import annotations

import pickle

import pytest

import raypipe
from raypipe.tracking import EpochLogger, close_run, open_run
from tests.conftest import small_spec

pytest.importorskip("mlflow")


def _spec(tmp_path, uri):
    return raypipe.load_spec(small_spec(tmp_path / "store", name="t-track", tracking={"mlflow_uri": uri}))


def test_open_run_is_reused_and_the_logger_logs_steps(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec(tmp_path, uri)
    run = open_run(spec, "r1")
    assert open_run(spec, "r1") == run  # the RUNNING run of r1 is found again, not made twice
    logger = pickle.loads(pickle.dumps(EpochLogger.of(spec, run)))  # travels to a worker
    for epoch in range(3):
        logger({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "pid": 7, "stopped": False, "val_f1": float("nan")}, epoch)
    client = MlflowClient(tracking_uri=uri)
    assert [p.step for p in client.get_metric_history(run, "train_loss")] == [0, 1, 2]
    assert set(client.get_run(run).data.metrics) == {"train_loss"}  # bookkeeping and NaN left out
    close_run(spec, "r1", "FAILED")
    assert client.get_run(run).info.status == "FAILED"
    assert open_run(spec, "r1") != run  # a finished run is not reopened


def test_a_tracking_failure_warns_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    from raypipe.runtime import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert open_run(_spec(tmp_path, uri), "r1") is None
    logger = EpochLogger(uri, "0123")
    with pytest.warns(RuntimeWarning, match="per-epoch logging"):
        logger({"train_loss": 1.0}, 0)
    assert logger.off
    logger({"train_loss": 0.5}, 1)  # off: no second attempt, no second warning
