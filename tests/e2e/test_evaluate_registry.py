"""Evaluation, gate, registry and lineage through real pipeline runs on a shared local Ray.

One storage for the module: run 1 makes a champion (exported to a real MLflow sqlite
store), run 2 is a challenger that fails the champion comparison and the slice-gap
limit, run 3 goes to the ``challenger`` alias. Reproducibility and the data
fingerprint are checked with fresh storages.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import raypipe
from raypipe.errors import GateFailed
from raypipe.model.predictor import Predictor
from raypipe.progress import Progress
from raypipe.registry import Registry
from tests.conftest import small_spec, statuses

quiet = Progress(quiet=True)
SLICES = ["device", "amount"]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("evalreg") / "store"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def first(ray_session, storage, mlflow_uri):
    spec = small_spec(storage, evaluate={
        "slices": SLICES, "threshold": {"strategy": "target_recall", "target_recall": 0.6},
        "gate": {"min": {"roc_auc": 0.6}, "max_slice_gap": {"max": 1.0}, "max_overfit_gap": 0.3},
    }, tracking={"mlflow_uri": mlflow_uri})
    return raypipe.run(spec, progress=quiet)


def _version_doc(storage, version: int, name: str = "metrics.json") -> dict:
    return Registry(str(storage), "t-fraud").version_store(version).read_json(name)


def test_metrics_by_split_slices_findings_and_threshold(first, storage):
    assert first.status == "ok" and first.alias == "champion"
    doc = _version_doc(storage, first.version)
    for split in ("train", "validation", "test"):
        assert {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "pr_auc", "log_loss", "brier",
                "confusion_matrix", "per_class"} <= set(doc[split])
    cm = np.array(doc["test"]["confusion_matrix"])
    assert cm.sum() == doc["test"]["rows"] and doc["test"]["per_class"]["1"]["support"] == cm[1].sum()
    assert doc["threshold_strategy"] == "target_recall" and doc["validation"]["recall"] >= 0.6
    for column in SLICES:
        s = doc["slices"][column]
        assert sum(v["rows"] for v in s["values"].values()) == doc["test"]["rows"]
        assert s["metric"] == "f1" and s["gap"] is not None
    assert len(doc["slices"]["amount"]["values"]) == 4  # quartiles of a continuous column
    assert any(f.startswith("Slices of 'device'") for f in doc["findings"])
    assert any("Decision threshold" in f for f in doc["findings"])
    checks = {c["check"]: c for c in doc["gate"]["checks"]}
    assert "train vs validation f1 gap <= 0.3" in checks
    assert "f1 gap across 'device' slices <= 1" in checks and checks["roc_auc >= 0.6"]["passed"]


def test_threshold_travels_with_the_version_to_serving(first, storage):
    reg = Registry(str(storage), "t-fraud")
    doc = _version_doc(storage, first.version)
    assert reg.info(first.version)["threshold"] == doc["threshold"] != 0.5
    predictor = Predictor.from_version(reg.version_store(first.version))
    assert predictor.threshold == doc["threshold"]


def test_report_is_stored_with_the_version(first, storage):
    vs = Registry(str(storage), "t-fraud").version_store(first.version)
    html = vs.read_bytes("report", "report.html").decode()
    plots = vs.walk_files("report", "plots")
    assert {"confusion_matrix.png", "roc.png", "precision_recall.png", "calibration.png", "slice_device.png"} <= set(plots)
    assert all(f"plots/{p}" in html for p in plots) and "PASSED" in html
    vs.verify_artifact("")  # the report is covered by the sha256 manifest


def test_lineage_links_data_spec_code_seeds_run_and_stages(first, storage):
    lineage = _version_doc(storage, first.version, "lineage.json")
    manifest = json.loads(open(first.manifest_path).read())
    assert lineage["run_id"] == first.run_id and lineage["data_fingerprint"] == manifest["data_fingerprint"]
    assert lineage["stages"] == {s["name"]: s["fingerprint"] for s in manifest["stages"][:5]}
    assert lineage["register_fingerprint"] == manifest["stages"][5]["fingerprint"]
    assert lineage["seeds"] == {"split": 42, "train": 0, "data": 3}
    assert {"python", "raypipe", "ray", "torch", "scikit-learn", "pyarrow"} <= set(lineage["versions"])
    assert len(lineage["spec_hash"]) == len(lineage["code_hash"]) == len(lineage["schema_sha256"]) == 64
    assert lineage["parent_champion"] is None


def test_run_is_exported_to_mlflow(first, storage, mlflow_uri):
    from mlflow.tracking import MlflowClient

    manifest = json.loads(open(first.manifest_path).read())
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(manifest["tracking"]["mlflow_run_id"])
    doc = _version_doc(storage, first.version)
    assert run.data.metrics["test.roc_auc"] == pytest.approx(doc["test"]["roc_auc"])
    assert run.data.params["model.kind"] == "sklearn:sklearn.linear_model:LogisticRegression"
    assert run.data.tags["raypipe.version"] == str(first.version) and run.data.tags["raypipe.gate"] == "passed"
    assert run.data.tags["raypipe.model_uri"].endswith(f"versions/{first.version:06d}")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.html", "metrics.json", "lineage.json", "plots"}


def test_runs_show_prints_the_key_figures(first, storage, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(json.dumps(small_spec(storage)))
    out = subprocess.run([sys.executable, "-m", "raypipe", "runs", "show", str(spec), first.run_id],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for text in ("roc_auc", "validation", "threshold", "gate: passed", "report.html", "Slices of 'device'"):
        assert text in out.stdout


def test_challenger_scored_on_the_same_test_split_and_gated(first, storage, mlflow_uri):
    reg = Registry(str(storage), "t-fraud")
    spec = small_spec(storage, model={"kind": "sklearn:sklearn.ensemble:RandomForestClassifier",
                                      "params": {"n_estimators": 30, "random_state": 0}},
                      evaluate={"slices": ["device"], "gate": {"max_slice_gap": {"max": 0.0},
                                                               "vs_champion": {"metric": "roc_auc", "min_delta": 0.5}}},
                      tracking={"mlflow_uri": mlflow_uri})
    with pytest.raises(GateFailed) as info:
        raypipe.run(spec, progress=quiet)
    failures = "\n".join(info.value.failures)
    assert "roc_auc vs champion v1 >= +0.5" in failures and "gap across 'device' slices <= 0" in failures
    doc = _version_doc(storage, info.value.version)
    champion_doc = _version_doc(storage, first.version)
    # The champion was re-scored on this run's test split: the very rows it was tested on in run 1.
    assert doc["champion"]["version"] == first.version
    assert doc["champion"]["roc_auc"] == pytest.approx(champion_doc["test"]["roc_auc"], abs=1e-12)
    assert doc["champion"]["rows"] == champion_doc["test"]["rows"]
    assert reg.status(info.value.version) == "rejected" and reg.alias("champion") == first.version
    assert _version_doc(storage, info.value.version, "lineage.json")["parent_champion"] == first.version


def test_promote_to_challenger(first, storage):
    spec = small_spec(storage, model={"params": {"max_iter": 400, "C": 0.5}}, registry={"promote_to": "challenger"})
    result = raypipe.run(spec, progress=quiet)
    reg = Registry(str(storage), "t-fraud")
    assert result.alias == "challenger" and reg.alias("challenger") == result.version
    assert reg.alias("champion") == first.version and reg.status(result.version) == "ready"


def test_same_seed_and_data_give_same_fingerprints_and_metrics(first, tmp_path):
    spec = small_spec(tmp_path / "other", evaluate={
        "slices": SLICES, "threshold": {"strategy": "target_recall", "target_recall": 0.6},
        "gate": {"min": {"roc_auc": 0.6}, "max_slice_gap": {"max": 1.0}, "max_overfit_gap": 0.3}})
    again = raypipe.run(spec, progress=quiet)
    assert statuses(again) == {s: "ran" for s in statuses(first)}
    fps = lambda r: [s["fingerprint"] for s in r.stages]  # noqa: E731
    assert fps(again)[:5] == fps(first)[:5]
    assert again.metrics == first.metrics  # identical on CPU, not merely close


def test_one_changed_byte_of_input_is_a_new_fingerprint_and_invalidates_the_cache(ray_session, tmp_path):
    from raypipe.ingest.builtin.transactions import generate_transactions

    data = tmp_path / "tx.csv"
    generate_transactions(2000, seed=5).to_csv(data, index=False)
    spec = small_spec(tmp_path / "store", data={"source": {"type": "csv", "path": str(data)}})
    first = raypipe.run(spec, until="validate", progress=quiet)
    assert raypipe.run(spec, until="validate", progress=quiet).stages[0]["status"] == "cached"
    raw = bytearray(data.read_bytes())
    i = raw.index(b"\n") + 3  # a digit inside the first data row
    raw[i] = ord("7") if raw[i] != ord("7") else ord("8")
    data.write_bytes(bytes(raw))
    changed = raypipe.run(spec, until="validate", progress=quiet)
    m1, m2 = (json.loads(open(r.manifest_path).read()) for r in (first, changed))
    assert m1["data_fingerprint"] != m2["data_fingerprint"]
    assert statuses(changed) == {"ingest": "ran", "validate": "ran"}
