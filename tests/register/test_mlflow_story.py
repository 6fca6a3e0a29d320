"""The whole run in MLflow (issue 25), against real stores: a sqlite store, and ``mlflow server`` on loopback.

- a torch run (3 epochs, one process): per-epoch curves logged live (step = epoch), the data and
  evaluation reports, the version as a pyfunc model in MLflow's registry that loads through raypipe
  and predicts what raypipe's Predictor predicts, its champion alias mirrored (also on promote);
- the same on Ray Train (2 workers): rank 0 logs the epochs;
- a Tune search (2 trials): one nested run per trial with its config and curve;
- a scikit-learn run tracked by an ``mlflow server`` this test starts on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import raypipe
from raypipe.progress import Progress
from tests.conftest import champion_predictor, free_port, small_spec

pytest.importorskip("mlflow")

quiet = Progress(quiet=True)
CANCER = {"source": {"type": "builtin", "name": "breast_cancer"}, "target": "target"}
CURVES = ("train_loss", "val_loss", "val_f1", "lr")


def _torch_spec(storage: Path, name: str, uri: str, **train) -> dict:
    return {"name": name, "storage": str(storage), "data": CANCER,
            "model": {"kind": "torch.mlp", "params": {"hidden": [16]}},
            "train": {"workers": 2, "epochs": 3, "batch_size": 32, "lr": 0.01, "early_stopping": None, **train},
            "evaluate": {"metrics": ["accuracy", "f1"], "gate": {"min": {"accuracy": 0.5}}},
            "tracking": {"mlflow_uri": uri, "register_model": True}}


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def torch_run(ray_session, storage, uri):
    return raypipe.run(_torch_spec(storage, "t-mlflow-torch", uri), progress=quiet)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _mlflow_run(result) -> str:
    return json.loads(Path(result.manifest_path).read_text())["tracking"]["mlflow_run_id"]


def _assert_live_curves(client, run_id: str, epochs: int) -> None:
    for name in CURVES:
        points = client.get_metric_history(run_id, name)
        assert sorted(p.step for p in points) == list(range(epochs)), name  # one point per epoch
    stamps = [p.timestamp for p in sorted(client.get_metric_history(run_id, "train_loss"), key=lambda p: p.step)]
    assert stamps == sorted(stamps) and len(set(stamps)) == epochs  # logged as each epoch ended, not at once


def test_torch_epochs_are_logged_live_with_the_reports(torch_run, uri, tmp_path):
    assert torch_run.status == "ok"
    client = _client(uri)
    run = client.get_run(_mlflow_run(torch_run))
    assert run.info.status == "FINISHED" and run.info.run_name == torch_run.run_id
    assert run.data.tags["raypipe.run_id"] == torch_run.run_id
    _assert_live_curves(client, run.info.run_id, 3)
    assert run.data.params["model.kind"] == "torch.mlp" and "test.accuracy" in run.data.metrics
    exp = client.get_experiment_by_name("t-mlflow-torch")
    assert len(client.search_runs([exp.experiment_id])) == 1  # the export completed the train stage's run
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"data", "report.html", "plots", "metrics.json", "lineage.json", "train_report.json", "raypipe_model"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} == {"data/report.html", "data/report.json"}
    assert client.list_artifacts(run.info.run_id, "plots")
    html = Path(client.download_artifacts(run.info.run_id, "data/report.html", str(tmp_path))).read_text()
    assert "<html" in html.lower()


def test_registered_pyfunc_loads_through_raypipe_and_predicts_the_same(torch_run, storage, uri, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    client = _client(uri)
    mv = client.get_model_version_by_alias("t-mlflow-torch", "champion")
    assert mv.tags["raypipe.version"] == str(torch_run.version) and mv.run_id == _mlflow_run(torch_run)
    model = mlflow.pyfunc.load_model("models:/t-mlflow-torch@champion")
    val = torch_run.outputs["validate"]
    rows = pd.read_parquet(val.store.path(val.outputs.splits["test"])).drop(columns=["target"]).head(8)
    got = model.predict(rows)
    want = pd.DataFrame(champion_predictor(storage, "t-mlflow-torch").predict_records(rows))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)
    # nothing pickled: the model is its code file, the version's files and a config
    files = {p.name for p in Path(mlflow.artifacts.download_artifacts(f"models:/t-mlflow-torch/{mv.version}")).rglob("*")}
    assert "mlflow_model.py" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    assert {"model.json", "features.json", "_COMPLETE.json"} <= files


def test_a_second_version_and_promote_move_the_mlflow_alias(torch_run, storage, uri, tmp_path):
    second = raypipe.run(_torch_spec(storage, "t-mlflow-torch", uri, lr=0.02), progress=quiet)
    assert second.version != torch_run.version
    client = _client(uri)
    alias = lambda: client.get_model_version_by_alias("t-mlflow-torch", "champion").tags["raypipe.version"]  # noqa: E731
    assert alias() == str(second.version)
    spec = tmp_path / "p.yaml"
    spec.write_text(json.dumps(_torch_spec(storage, "t-mlflow-torch", uri, lr=0.02)))
    out = subprocess.run([sys.executable, "-m", "raypipe", "registry", "promote", str(spec), str(torch_run.version)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert alias() == str(torch_run.version)
    assert len(client.search_model_versions("name = 't-mlflow-torch'")) == 2


def test_ray_train_rank_0_logs_the_epochs(ray_session, tmp_path, uri):
    result = raypipe.run(_torch_spec(tmp_path / "store", "t-mlflow-ddp", uri, epochs=2, distributed="always"),
                         progress=quiet)
    assert result.status == "ok"
    assert result.outputs["train"].store.read_json("train_report.json")["path"] == "ray_train"
    _assert_live_curves(_client(uri), _mlflow_run(result), 2)


def test_tune_trials_are_nested_runs_with_config_and_curve(ray_session, tmp_path, uri):
    spec = _torch_spec(tmp_path / "store", "t-mlflow-tune", uri, epochs=2)
    spec["tracking"]["register_model"] = False
    spec["tune"] = {"space": {"train.lr": {"grid": [0.01, 0.03]}}, "num_samples": 1, "scheduler": "fifo",
                    "max_concurrent_trials": 1, "seed": 0}
    result = raypipe.run(spec, progress=quiet)
    assert result.status == "ok"
    client = _client(uri)
    parent = client.get_run(_mlflow_run(result))
    assert parent.info.status == "FINISHED"
    trials = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) == 2
    assert sorted(t.data.params["train.lr"] for t in trials) == ["0.01", "0.03"]
    table = result.outputs["train"].store.read_json("tune_trials.json")
    assert {t.data.tags["raypipe.trial_id"] for t in trials} == {r["trial_id"] for r in table["trials"]}
    for t in trials:
        assert t.info.status == "FINISHED" and t.data.tags["raypipe.trial_status"] == "ok"
        assert sorted(p.step for p in client.get_metric_history(t.info.run_id, "val_f1")) == [0, 1]
        assert "training_iteration" not in t.data.metrics and "time_total_s" not in t.data.metrics
    assert not client.search_registered_models("name = 't-mlflow-tune'")  # register_model: false


@pytest.fixture
def mlflow_server(tmp_path):
    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("no mlflow command")
    port = free_port()
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", (tmp_path / "server-artifacts").as_uri()],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("mlflow server did not start here: " + (tmp_path / "server.log").read_text()[-500:])
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this test started (the server and its workers)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_a_run_tracked_by_mlflow_server_on_loopback(ray_session, tmp_path, mlflow_server, monkeypatch):
    import mlflow.pyfunc

    result = raypipe.run(small_spec(tmp_path / "store", name="t-mlflow-server",
                                    tracking={"mlflow_uri": mlflow_server, "register_model": True}), progress=quiet)
    assert result.status == "ok"
    manifest = json.loads(Path(result.manifest_path).read_text())
    assert "error" not in manifest["tracking"], manifest["tracking"]
    client = _client(mlflow_server)
    run = client.get_run(manifest["tracking"]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "test.roc_auc" in run.data.metrics
    assert {"data", "report.html", "raypipe_model"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    model = mlflow.pyfunc.load_model("models:/t-mlflow-server@champion")
    val = result.outputs["validate"]
    import pandas as pd

    rows = pd.read_parquet(val.store.path(val.outputs.splits["test"])).drop(columns=["is_fraud"]).head(5)
    want = champion_predictor(tmp_path / "store", "t-mlflow-server").predict_records(rows)
    assert model.predict(rows).to_dict("records") == want


def test_a_run_stopped_after_train_ends_its_mlflow_run_and_a_cached_train_is_backfilled(ray_session, tmp_path, uri):
    spec = _torch_spec(tmp_path / "store", "t-mlflow-until", uri, epochs=2)
    spec["tracking"]["register_model"] = False
    first = raypipe.run(spec, until="train", progress=quiet)
    client = _client(uri)
    exp = client.get_experiment_by_name("t-mlflow-until")
    (opened,) = client.search_runs([exp.experiment_id])
    assert opened.info.status == "FINISHED" and opened.data.tags["raypipe.run_id"] == first.run_id  # not left RUNNING
    _assert_live_curves(client, opened.info.run_id, 2)
    second = raypipe.run(spec, progress=quiet)  # train is a cache hit: its epochs come from the train report
    assert [s["status"] for s in second.stages if s["name"] == "train"] == ["cached"]
    run = client.get_run(_mlflow_run(second))
    assert run.info.run_id != opened.info.run_id and run.info.status == "FINISHED"
    points = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(p.step for p in points) == [0, 1]
    report = second.outputs["train"].store.read_json("train_report.json")
    assert [p.value for p in sorted(points, key=lambda p: p.step)] == [h["val_loss"] for h in report["history"]]


def test_an_orchestrated_run_fills_one_mlflow_run(ray_session, tmp_path, uri):
    """Stage by stage with one --run-key (an Airflow or KFP run): train's live curve and register's export land
    in one MLflow run, left open between the two and finished by register."""
    spec = _torch_spec(tmp_path / "store", "t-mlflow-only", uri, workers=1, epochs=2)
    spec["tracking"]["register_model"] = False
    key = "scheduled__2026-12-07T00:00:00+00:00"
    client = _client(uri)
    for stage in ("ingest", "validate", "features", "train"):
        raypipe.run(spec, only=stage, run_key=key, progress=quiet)
    exp = client.get_experiment_by_name("t-mlflow-only")
    (open_run,) = client.search_runs([exp.experiment_id])
    assert open_run.info.status == "RUNNING" and open_run.data.tags["raypipe.run_id"] == key
    raypipe.run(spec, only="evaluate", run_key=key, progress=quiet)
    done = raypipe.run(spec, only="register", run_key=key, progress=quiet)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == open_run.info.run_id == _mlflow_run(done) and run.info.status == "FINISHED"
    assert sorted(p.step for p in client.get_metric_history(run.info.run_id, "train_loss")) == [0, 1]
    assert "test.accuracy" in run.data.metrics
