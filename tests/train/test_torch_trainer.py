"""torch.mlp on Ray Train: real DDP with 2 worker processes, per-epoch checkpoints, a sensible model."""
from __future__ import annotations

import json
import os

import pytest

import raypipe
from raypipe.model.predictor import Predictor
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.store import Store
from tests.conftest import small_spec

EPOCHS = 6


@pytest.fixture(scope="module")
def torch_run(ray_session, tmp_path_factory):
    storage = tmp_path_factory.mktemp("torch") / "store"
    spec = raypipe.load_spec(small_spec(
        storage, name="t-torch", rows=12007,
        data={"split": {"stratify": False}},  # an odd validation split: 1,801 rows
        model={"kind": "torch.mlp", "params": {"hidden": [32, 16]}},
        train={"workers": 2, "epochs": EPOCHS, "batch_size": 128, "lr": 0.005, "distributed": "always"},
    ))
    return spec, raypipe.run(spec, progress=Progress(quiet=True))


def test_two_worker_processes_with_synchronised_gradients(torch_run):
    _, result = torch_run
    ddp = result.outputs["train"].outputs.ddp
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    workers = ddp["workers"]
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert len({w["pid"] for w in workers}) == 2 and os.getpid() not in {w["pid"] for w in workers}
    # Each rank trained on its own shard; equal parameters after training mean DDP
    # averaged the gradients at every step.
    assert len({w["digest"] for w in workers}) == 1


def test_checkpoint_each_epoch_and_history(torch_run):
    _, result = torch_run
    train = result.outputs["train"]
    report = train.store.read_json("train_report.json")
    assert [h["epoch"] for h in report["history"]] == list(range(EPOCHS))
    counts = result.outputs["validate"].outputs.counts
    rows = counts["train"]["valid"] + counts["validation"]["valid"]
    n = result.outputs["features"].outputs.n_features
    assert report["materialized_mb"] == pytest.approx(rows * (4 * n + 8) / 2**20, abs=0.05)  # small: materialised
    assert all(h["val_loss"] > 0 and 0 <= h["val_accuracy"] <= 1 for h in report["history"])
    assert report["path"] == "ray_train" and report["path_reason"] == "train.distributed: always"
    assert report["shards"] == "blocks"  # small materialised splits: each rank reads its rows from their blocks
    ckpt_store = Store(report["checkpoints"])  # the stage's work folder, which outlives a crashed run
    ckpts = [p for p in ckpt_store.walk_files() if p.endswith("meta.json")]
    epochs = sorted(json.loads(ckpt_store.read_bytes(p))["epoch"] for p in ckpts)
    assert epochs[-1] == EPOCHS - 1 and len(epochs) == 2  # CheckpointConfig(num_to_keep=2)
    assert train.store.exists("model", "model.safetensors") and not any(
        f.endswith((".pkl", ".pickle")) for f in train.store.walk_files())


def test_sensible_test_metric_and_served_model_matches(torch_run):
    spec, result = torch_run
    assert result.metrics["roc_auc"] > 0.8
    assert 0.5 < result.metrics["accuracy"] <= 1.0
    reg = Registry(spec.storage, spec.name)
    pred = Predictor.from_version(reg.version_store(result.version))
    row = {"amount": 2500.0, "merchant_category": "jewelry", "country": "NG", "hour": 3, "device": "desktop",
           "card_present": False, "customer_age": 23.0, "account_age_days": 5, "distance_from_home_km": 4000.0,
           "transactions_last_24h": 14, "avg_amount_30d": 40.0}
    out = pred.predict_records([row])[0]
    assert out["scores"]["1"] > 0.5  # an obviously fraudulent transaction


def test_validation_metrics_cover_every_row_and_left_out_training_rows_are_counted(torch_run):
    """Ray Train's default equal split drops up to workers - 1 rows of every split per epoch."""
    _, result = torch_run
    report = result.outputs["train"].store.read_json("train_report.json")
    counts = result.outputs["validate"].outputs.counts
    val_rows = counts["validation"]["valid"]
    assert val_rows % 2 == 1  # an odd count: an equal split over 2 workers would leave one row out
    assert all(h["val_rows"] == val_rows for h in report["history"])
    seen = report["rows_per_epoch"]
    assert seen["validation"] == {"rows": val_rows, "seen": val_rows, "left_out": 0}
    train_rows = counts["train"]["valid"]
    assert seen["train"]["rows"] == train_rows and 0 <= seen["train"]["left_out"] <= 1
    assert all(h["train_rows"] == train_rows - seen["train"]["left_out"] for h in report["history"])
