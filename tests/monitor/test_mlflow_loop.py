"""The loop in MLflow (`tracking.mlflow_uri`): each checked window is an MLflow run in the pipeline's
experiment, a tracking store that cannot be reached does not fail the check, and a retrain's run
carries its trigger and parent champion.

One version (1,500 rows of the built-in transactions, logistic regression) is trained once for the
module, with a real MLflow sqlite store; the windows and the fresh data are `drift: 0.5`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import raypipe
from raypipe.ingest.builtin.transactions import generate_transactions
from raypipe.monitor.retrain import Trigger, retrain
from raypipe.progress import Progress
from raypipe.store import Store
from tests.conftest import free_port, small_spec


@pytest.fixture(scope="module")
def tracked(ray_session, tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-loop")
    fresh = d / "fresh"
    fresh.mkdir()
    generate_transactions(3000, seed=1, drift=0.5, concept=1.0).to_parquet(fresh / "part-0.parquet", index=False)
    window = d / "window.parquet"
    generate_transactions(1500, seed=2, drift=0.5).to_parquet(window, index=False)  # labelled: measured performance
    uri = f"sqlite:///{d / 'mlflow.db'}"
    spec = small_spec(d / "store", name="t-mlf", rows=1500, tracking={"mlflow_uri": uri},
                      monitor={"drift": {"min_rows": 500},
                               "retrain": {"on": ["drift"], "data": {"type": "parquet", "path": str(fresh)},
                                           "cooldown_s": 0, "min_rows": 1000, "vs_champion_metric": "roc_auc"}})
    first = raypipe.run(spec, progress=Progress(quiet=True))
    assert first.alias == "champion"
    return spec, uri, window, first


def test_a_checked_window_is_an_mlflow_run(tracked, tmp_path):
    from mlflow.tracking import MlflowClient

    spec, uri, window, first = tracked
    report = raypipe.monitor(spec, input=str(window))
    assert report.status == "drift" and "mlflow_run_id" in report.tracking, report.tracking
    assert report.summary()["tracking"] == report.tracking
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(report.tracking["mlflow_run_id"])
    exp = client.get_experiment_by_name("t-mlf")
    assert run.info.experiment_id == exp.experiment_id and run.info.status == "FINISHED"
    assert run.info.run_name == f"monitor {report.window_id}"
    tags = run.data.tags
    assert tags["raypipe.kind"] == "monitor" and tags["raypipe.window_id"] == report.window_id
    assert tags["raypipe.pipeline"] == "t-mlf" and tags["raypipe.version"] == str(first.version)
    assert tags["raypipe.status"] == "drift" and tags["raypipe.input"] == str(window)
    assert set(report.drifted) == set(tags["raypipe.drifted"].split(",")) and report.drifted
    m = run.data.metrics
    assert m["rows"] == report.rows and m["valid_rows"] == report.valid_rows
    for column, entry in report.columns.items():
        assert m[f"drift.{column}"] == pytest.approx(entry.value)
    assert m["multivariate_auc"] == pytest.approx(report.multivariate["auc"])
    assert set(report.prediction_drift["parts"]) == {k.split(".", 1)[1] for k in m if k.startswith("prediction_drift.")}
    assert report.performance["kind"] == "measured"
    assert m["perf.measured.roc_auc"] == pytest.approx(report.performance["metrics"]["roc_auc"])
    assert run.data.params["drift.method"] == "psi"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"drift.html", "report.json"} <= names
    html = Path(client.download_artifacts(run.info.run_id, "drift.html", str(tmp_path))).read_text()
    assert report.window_id in html or "amount" in html
    # the window's folder keeps the MLflow run id; the version's own run is tagged as a run
    stored = Store(spec["storage"]).read_json("monitor", "t-mlf", report.window_id, "report.json")
    assert stored["tracking"] == report.tracking
    manifest = json.loads(open(first.manifest_path).read())
    assert client.get_run(manifest["tracking"]["mlflow_run_id"]).data.tags["raypipe.kind"] == "run"


def test_an_unreachable_tracking_server_does_not_fail_the_check(tracked, monkeypatch, caplog):
    spec, _, window, _ = tracked
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = {**spec, "tracking": {"mlflow_uri": f"http://127.0.0.1:{free_port()}"}}
    with caplog.at_level("WARNING", logger="raypipe"):
        report = raypipe.monitor(down, input=str(window))
    assert report.status == "drift" and report.drifted
    assert set(report.tracking) == {"mlflow_uri", "error"} and report.tracking["mlflow_uri"].startswith("http://")
    assert "MLflow logging" in caplog.text
    stored = Store(spec["storage"]).read_json("monitor", "t-mlf", report.window_id, "report.json")
    assert stored["tracking"]["error"] == report.tracking["error"]
    assert Store(spec["storage"]).is_complete(f"monitor/t-mlf/{report.window_id}")


def test_a_retrains_mlflow_run_carries_its_trigger_and_parent_champion(tracked):
    from mlflow.tracking import MlflowClient

    spec, uri, _, first = tracked
    out = retrain(raypipe.load_spec(spec), Trigger("drift", "drift on amount: psi 0.41 > 0.1 (test)"),
                  progress=Progress(quiet=True), swap=False)
    assert out.status in ("promoted", "rejected") and out.run_id and out.parent == first.version, out
    manifest = Store(spec["storage"]).read_json("runs", out.run_id, "manifest.json")
    tags = MlflowClient(tracking_uri=uri).get_run(manifest["tracking"]["mlflow_run_id"]).data.tags
    assert tags["raypipe.kind"] == "retrain" and tags["raypipe.run_id"] == out.run_id
    assert tags["raypipe.trigger.kind"] == "drift"
    assert tags["raypipe.trigger.reason"] == "drift on amount: psi 0.41 > 0.1 (test)"
    assert tags["raypipe.parent_champion"] == str(first.version)
    assert tags["raypipe.retrain_attempt"] == out.attempt and int(tags["raypipe.fresh_rows"]) == 3000
