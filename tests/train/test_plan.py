"""The training plan: the batch size and epochs ``train`` resolves to, and the spec's new defaults."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from raypipe.spec import TrainSection, load_spec
from raypipe.train.plan import (
    MAX_AUTO_EPOCHS,
    MIN_AUTO_EPOCHS,
    auto_batch_size,
    plan,
    steps_per_epoch,
)
from raypipe.train.torch_trainer import loop_config


@pytest.mark.parametrize("rows_per_worker, batch", [
    (124, 16),        # wine's train split: the floor
    (1257, 32),       # 1,797 digits x 0.7
    (17_500, 512),    # the demo: 35,000 train rows on 2 workers
    (1_000_000, 1024),  # large data keeps the old default
])
def test_auto_batch_size_keeps_about_32_steps_per_epoch_on_small_data(rows_per_worker: int, batch: int) -> None:
    assert auto_batch_size(rows_per_worker) == batch


def test_epochs_are_raised_to_reach_min_steps_and_the_reason_is_recorded() -> None:
    p = plan(TrainSection(workers=1), 1257)
    assert (p.batch_size, p.steps_per_epoch) == (32, 40)
    assert p.epochs == 25 and p.planned_steps >= 1000 > (p.epochs - 1) * p.steps_per_epoch
    assert "min_steps=1000" in p.epochs_reason and p.to_dict()["planned_steps"] == 1000
    # Two workers halve each worker's rows: the same batch size gives half the steps, so twice the epochs.
    two = plan(TrainSection(workers=2, batch_size=32), 1257)
    assert two.steps_per_epoch == steps_per_epoch(1257, 2, 32) == 20 and two.epochs == 50


def test_explicit_epochs_are_kept_exactly() -> None:
    for epochs in (1, 5, 40):
        p = plan(TrainSection(epochs=epochs, batch_size=1024), 1257)
        assert p.epochs == epochs and p.min_steps is None and p.epochs_reason.startswith("train.epochs")


def test_auto_epochs_have_a_floor_and_a_cap() -> None:
    big = plan(TrainSection(workers=2), 2_000_000)  # 977 steps per epoch: min_steps is reached in 2
    assert big.epochs == MIN_AUTO_EPOCHS and big.batch_size == 1024
    tiny = plan(TrainSection(workers=1), 20)  # 2 steps per epoch would need 500 epochs
    assert tiny.epochs == MAX_AUTO_EPOCHS and "capped" in tiny.epochs_reason
    assert plan(TrainSection(workers=1, min_steps=0), 1257).epochs == MIN_AUTO_EPOCHS


def test_epochs_and_min_steps_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="min_steps=500 applies only when train.epochs is unset"):
        TrainSection(epochs=5, min_steps=500)


def _spec(tmp_path, **train):
    raw = {"name": "t-plan", "storage": str(tmp_path), "data": {"source": {"type": "builtin", "name": "wine"},
                                                                 "target": "target"}}
    if train:
        raw["train"] = train
    return load_spec(raw)


def test_default_schedule_and_early_stopping(tmp_path) -> None:
    t = _spec(tmp_path).train
    assert t.epochs is None and t.batch_size is None and t.min_steps == 1000
    assert (t.lr, t.lr_schedule, t.warmup_epochs) == (1e-3, "cosine", 1)
    es = t.early_stopping
    assert (es.metric, es.resolved_mode, es.patience, es.restore_best) == ("val_loss", "min", 10, True)
    assert _spec(tmp_path, early_stopping=None).train.early_stopping is None  # null turns it off


def test_default_early_stopping_is_off_without_a_validation_split(tmp_path) -> None:
    raw = {"name": "t-plan", "storage": str(tmp_path), "data": {
        "source": {"type": "builtin", "name": "wine"}, "target": "target", "split": {"validation": 0.0, "test": 0.2}}}
    assert load_spec(raw).train.early_stopping is None  # no error: the default does not apply
    raw["train"] = {"early_stopping": {"patience": 3}}
    with pytest.raises(Exception, match="needs a validation split"):
        load_spec(raw)  # asked for explicitly: still a spec error


def test_loop_config_carries_the_resolved_plan_and_the_target_scale(tmp_path) -> None:
    spec = _spec(tmp_path, workers=1)
    dims = {"input_dim": 13, "n_outputs": 3, "class_weights": None, "layout": None, "train_rows": 124,
            "target_scale": {"mean": 150.0, "std": 77.0}}
    cfg = loop_config(spec, dims, True)
    assert (cfg["batch_size"], cfg["epochs"]) == (16, 125)  # 8 steps per epoch x 125 = 1,000 steps
    assert cfg["target_scale"] == {"mean": 150.0, "std": 77.0} and cfg["target_std"] == 77.0
    assert cfg["lr_schedule"] == "cosine" and cfg["early_stopping"]["patience"] == 10
    explicit = loop_config(_spec(tmp_path, workers=1, epochs=3, batch_size=64), {**dims, "target_scale": None}, True)
    assert (explicit["epochs"], explicit["batch_size"], explicit["target_std"]) == (3, 64, None)


def test_a_new_cnn_gets_the_grid_pool_unless_the_spec_sets_one(tmp_path) -> None:
    dims = {"input_dim": 64, "n_outputs": 10, "class_weights": None, "layout": None, "train_rows": 1257}
    spec = _spec(tmp_path, workers=1)
    cnn = spec.model_copy(update={"model": spec.model.model_copy(update={"kind": "torch.cnn", "params": {}})})
    assert loop_config(cnn, dims, True)["params"] == {"pool": 4}
    cnn.model.params = {"pool": 1, "channels": [8]}
    assert loop_config(cnn, dims, True)["params"] == {"pool": 1, "channels": [8]}
    assert loop_config(spec, dims, True)["params"] == {}  # torch.mlp: nothing added
