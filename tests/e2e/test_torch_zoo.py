"""The torch zoo through the whole pipeline on Ray Train (2 DDP workers, gloo):
``torch.cnn`` on scikit-learn's digits as PNG files, ``torch.text`` with early stopping,
and a user's ``torch:<factory>`` trained twice with one seed to the same metrics."""
from __future__ import annotations

import numpy as np
import pytest

import raypipe
from raypipe.errors import ArtifactError
from raypipe.datasets import read_parquet
from raypipe.progress import Progress
from raypipe.serve.request_model import request_model
from tests.conftest import champion_predictor, small_spec

quiet = Progress(quiet=True)


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo") / "store"


def test_cnn_on_digits_png(ray_session, storage, tmp_path):
    from raypipe.ingest.unstructured import write_digits_png

    write_digits_png(tmp_path / "png", per_class=100)
    result = raypipe.run({
        "name": "t-cnn", "storage": str(storage),
        "data": {"source": {"type": "images", "path": str(tmp_path / "png"), "size": [8, 8]}, "target": "label"},
        "features": {"image": {"normalize": "standard"}},
        "model": {"kind": "torch.cnn", "params": {"channels": [16, 32], "hidden": [64]}},
        "train": {"workers": 2, "epochs": 12, "batch_size": 32, "lr": 0.005, "lr_schedule": "cosine",
                  "warmup_epochs": 1, "materialize_mb": 0,  # the workers stream the splits from storage
                  "distributed": "always"},
        "evaluate": {"metrics": ["accuracy", "f1_macro"], "gate": {"min": {"accuracy": 0.85}}},
    }, progress=quiet)
    assert result.status == "ok" and result.metrics["accuracy"] >= 0.85
    train = result.outputs["train"]
    meta = train.store.read_json("model", "model.json")
    assert meta["kind"] == "torch.cnn" and meta["layout"] == [
        {"kind": "image", "columns": ["image"], "start": 0, "stop": 64, "shape": [8, 8, 1]}]
    report = train.store.read_json("train_report.json")
    assert report["materialized_mb"] is None and report["shards"] == "streaming_split"
    val_rows = result.outputs["validate"].outputs.counts["validation"]["valid"]
    assert all(h["val_rows"] == val_rows for h in report["history"])  # every validation row, split unequally
    lrs = [h["lr"] for h in report["history"]]
    assert lrs[0] < lrs[1] and lrs[1] > lrs[-1]  # warm-up, then the cosine decay
    assert result.outputs["train"].outputs.ddp["world_size"] == 2
    # One request (the image as nested lists) scores as the batch path does.
    val = result.outputs["validate"]
    rows = read_parquet(val.store, val.outputs.splits["test"]).to_pandas().head(10)
    predictor = champion_predictor(storage, "t-cnn")
    batch = predictor.predict_records(rows)
    Row = request_model(val.store.read_json("schema.json"))
    for i in range(len(rows)):
        one = predictor.predict_records([Row(image=np.asarray(rows["image"].iloc[i]).tolist()).model_dump()])[0]
        assert one["prediction"] == batch[i]["prediction"]
        assert one["scores"] == pytest.approx(batch[i]["scores"], rel=1e-4, abs=1e-6)


def test_text_bag_with_early_stopping(ray_session, storage, tmp_path):
    rng = np.random.default_rng(0)
    words = {"billing": ["invoice", "refund", "charge", "payment", "card"],
             "outage": ["down", "error", "timeout", "server", "unreachable"]}
    common = ["please", "help", "today", "account", "thanks", "team", "card", "error"]
    for label, vocab in words.items():
        (tmp_path / "tickets" / label).mkdir(parents=True)
        for i in range(200):
            text = " ".join(rng.choice(vocab, 2).tolist() + rng.choice(common, 6).tolist())
            (tmp_path / "tickets" / label / f"{i:04d}.txt").write_text(text)
    epochs = 40
    result = raypipe.run({
        "name": "t-textbag", "storage": str(storage),
        "data": {"source": {"type": "text", "path": str(tmp_path / "tickets")}, "target": "label"},
        "features": {"text": {"method": "tfidf", "max_features": 64, "min_df": 2}},
        "model": {"kind": "torch.text", "params": {"embed_dim": 16, "hidden": [16]}},
        "train": {"workers": 2, "epochs": epochs, "batch_size": 32, "lr": 0.01,
                  "early_stopping": {"metric": "val_loss", "patience": 2, "min_delta": 0.002}},
        "evaluate": {"metrics": ["accuracy"], "gate": {"min": {"accuracy": 0.9}}},
    }, progress=quiet)
    assert result.status == "ok"
    report = result.outputs["train"].store.read_json("train_report.json")
    history, es = report["history"], report["early_stopping"]
    assert es["stopped"] and report["epochs_run"] == len(history) < epochs
    losses = [h["val_loss"] for h in history]
    best = es["best_epoch"]
    assert best == len(history) - 1 - 2  # stopped patience (2) epochs after the best
    # The reported losses, replayed through the same rule (min_delta 0.002), pick the same best epoch and stop last.
    from raypipe.train.loop import EarlyStopping

    replay = EarlyStopping("val_loss", "min", patience=2, min_delta=0.002)
    stops = [replay.update({"val_loss": v}, e) is not None and replay.should_stop for e, v in enumerate(losses)]
    assert replay.best_epoch == best and stops.index(True) == len(history) - 1
    assert es["weights"] == "best"
    answer = champion_predictor(storage, "t-textbag").predict_records([{"text": "my card payment needs a refund"}])[0]
    assert answer["prediction"] == "billing"


def test_user_factory_same_seed_same_metrics(ray_session, storage):
    """Two fresh pipelines (own storage, every stage run) train the same model bit for bit."""
    def run(name: str):
        spec = small_spec(storage / name, name=name, rows=4000,
                          model={"kind": "torch:tests.train.factories:tiny", "params": {"width": 8}},
                          train={"workers": 2, "epochs": 3, "batch_size": 64, "lr": 0.01, "seed": 5})
        return raypipe.run(spec, progress=quiet)

    first, second = run("t-factory-a"), run("t-factory-b")
    assert all(s["status"] == "ran" for r in (first, second) for s in r.stages)  # nothing shared or cached
    splits = [sorted(r.outputs["validate"].store.walk_files("valid/train")) for r in (first, second)]
    assert [f.split("-")[0] for f in splits[0]] == [f.split("-")[0] for f in splits[1]]  # content-named files
    timings = ("train_s", "val_s", "ckpt_s", "report_s")
    histories = [[{k: v for k, v in h.items() if k not in timings}
                  for h in r.outputs["train"].store.read_json("train_report.json")["history"]] for r in (first, second)]
    assert len(histories[0]) == 3 and histories[0] == histories[1]  # bit for bit, on CPU
    assert first.metrics == second.metrics
    meta = first.outputs["train"].store.read_json("model", "model.json")
    assert meta["kind"] == "torch:tests.train.factories:tiny" and meta["params"] == {"width": 8}
    rows = [{"amount": 2500.0, "merchant_category": "jewelry", "country": "NG", "hour": 3, "device": "desktop",
             "card_present": False, "customer_age": 23.0, "account_age_days": 5, "distance_from_home_km": 4000.0,
             "transactions_last_24h": 14, "avg_amount_30d": 40.0}]
    trusted = ("torch:tests.train.factories:tiny",)  # the spec's own kind, as a deploying process trusts it
    with pytest.raises(ArtifactError, match="does not trust"):  # a process that does not trust it refuses it
        champion_predictor(storage / "t-factory-a", "t-factory-a")
    assert (champion_predictor(storage / "t-factory-a", "t-factory-a", trusted).predict_records(rows)
            == champion_predictor(storage / "t-factory-b", "t-factory-b", trusted).predict_records(rows))
