"""The plain-PyTorch epoch math that every Ray Train worker runs."""
from __future__ import annotations

import math

import pytest
import torch

from raypipe.train.loop import (
    EarlyStopping,
    LoopConfig,
    epoch_metrics,
    evaluate,
    loss_function,
    make_optimizer,
    train_epoch,
)
from raypipe.model.zoo import build_model

CPU = torch.device("cpu")


def _lrs(cfg: LoopConfig, epochs: int, state: dict | None = None) -> tuple[list[float], dict]:
    """The LR each of ``epochs`` trains with (stepped as torch_trainer does), from a fresh or a saved state."""
    model = build_model("torch.mlp", input_dim=3, n_outputs=2, params={"hidden": [4]})
    optim, sched, _ = make_optimizer(model, cfg)
    if state is not None:  # in torch_trainer's order: the optimizer, then the schedule
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    lrs = []
    for _ in range(epochs):
        lrs.append(optim.param_groups[0]["lr"])
        optim.step()
        sched.step()
    return lrs, {"optimizer": optim.state_dict(), "scheduler": sched.state_dict()}


def _expected(cfg: LoopConfig) -> list[float]:
    """The schedules written out in closed form, independently of torch."""
    out = []
    for epoch in range(cfg.epochs):
        e, warm = epoch - cfg.warmup_epochs, cfg.warmup_epochs
        if e < 0:
            f = (epoch + 1) / (warm + 1)
        elif cfg.lr_schedule == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * e / max(cfg.epochs - warm, 1)))
        elif cfg.lr_schedule == "step":
            f = cfg.lr_gamma ** (e // cfg.lr_step_epochs)
        else:
            f = 1.0
        out.append(cfg.lr * f)
    return out


SCHEDULES = [
    LoopConfig(epochs=8, lr=0.002),  # constant, no warm-up
    LoopConfig(epochs=6, lr=0.01, warmup_epochs=3),
    LoopConfig(epochs=10, lr=0.1, lr_schedule="cosine", warmup_epochs=2),
    LoopConfig(epochs=12, lr=0.005, lr_schedule="cosine", warmup_epochs=1),  # tests/e2e/test_torch_zoo.py's
    LoopConfig(epochs=8, lr=0.001, lr_schedule="cosine"),
    LoopConfig(epochs=10, lr=0.1, lr_schedule="step", lr_step_epochs=3, lr_gamma=0.5),
    LoopConfig(epochs=12, lr=0.002, lr_schedule="step", warmup_epochs=2, lr_step_epochs=2, lr_gamma=0.3),
]
IDS = [f"{c.lr_schedule}-warmup{c.warmup_epochs}-{c.epochs}ep" for c in SCHEDULES]


@pytest.mark.parametrize("cfg", SCHEDULES, ids=IDS)
def test_lr_schedule_per_epoch(cfg: LoopConfig) -> None:
    lrs, _ = _lrs(cfg, cfg.epochs)
    # torch's cosine and step schedules update the rate recursively: off the closed form by up to 4e-16 (relative) here.
    assert lrs == pytest.approx(_expected(cfg), rel=1e-14, abs=0)
    if cfg.lr_schedule == "constant":
        assert lrs == _expected(cfg)  # bit for bit, warm-up included
    if cfg.lr_schedule == "cosine":
        assert lrs[cfg.warmup_epochs] == cfg.lr and lrs[-1] < 0.05 * cfg.lr


def test_the_demo_trains_with_the_default_warm_up_and_cosine_schedule() -> None:
    from raypipe.spec import demo_spec_path, load_spec
    from raypipe.train.torch_trainer import loop_config

    spec = load_spec(demo_spec_path())  # epochs, batch size and rate at their defaults: planned from the data
    dims = {"input_dim": 4, "n_outputs": 2, "class_weights": None, "layout": [], "train_rows": 35_000}
    planned = loop_config(spec, dims, True)
    cfg = LoopConfig.from_dict(planned)
    assert spec.train.epochs is None and (cfg.lr_schedule, cfg.warmup_epochs) == ("cosine", 1)
    assert cfg.epochs * -(-35_000 // (planned["batch_size"] * spec.train.workers)) >= spec.train.min_steps
    lrs = _lrs(cfg, cfg.epochs)[0]
    assert lrs == pytest.approx(_expected(cfg), rel=1e-14, abs=0)
    assert lrs[0] == spec.train.lr / 2 and lrs[1] == spec.train.lr and lrs[-1] < 0.05 * spec.train.lr


def test_the_optimizer_is_adamw_with_the_models_weight_decay() -> None:
    model = build_model("torch.mlp", input_dim=3, n_outputs=2, params={"hidden": [4]})
    optim, _, _ = make_optimizer(model, LoopConfig(weight_decay=0.01))
    assert isinstance(optim, torch.optim.AdamW) and optim.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("cfg", SCHEDULES, ids=IDS)
def test_a_resumed_run_continues_the_same_lr_sequence(cfg: LoopConfig, tmp_path) -> None:
    from raypipe.train import checkpoint

    whole, _ = _lrs(cfg, cfg.epochs)
    for cut in range(1, cfg.epochs):
        first, state = _lrs(cfg, cut)
        folder = tmp_path / str(cut)
        folder.mkdir()
        checkpoint.write(str(folder), weights={}, state=state, meta={"epoch": cut - 1})  # torch.save, read back weights_only
        rest, _ = _lrs(cfg, cfg.epochs - cut, checkpoint.read(str(folder))["state"])
        assert first + rest == whole, cut


def _data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_lowers_the_loss(precision: str) -> None:
    torch.manual_seed(0)
    x, y = _data()
    cfg = LoopConfig(epochs=8, lr=0.05, precision=precision)
    model = build_model("torch.mlp", input_dim=4, n_outputs=2, params={"hidden": [16]})
    optim, sched, scaler = make_optimizer(model, cfg)
    loss_fn = loss_function(cfg, CPU)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
    first = evaluate(model, batches, loss_fn, cfg, CPU)
    assert len(first) == 3 + 3 * 2
    for _ in range(cfg.epochs):
        total, n = train_epoch(model, batches, optim, scaler, loss_fn, cfg, CPU)
        sched.step()
    last = evaluate(model, batches, loss_fn, cfg, CPU)
    assert n == len(x) and last[0] < first[0] / 3
    m = epoch_metrics((total, n), last, "classification")
    assert m["val_accuracy"] > 0.9 and m["train_loss"] == pytest.approx(total / n)
    from sklearn.metrics import f1_score

    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    assert m["val_f1"] == pytest.approx(f1_score(y.numpy(), pred.numpy()))  # class 1's F1, as scikit-learn's binary F1


def test_class_weights_reach_the_loss() -> None:
    loss = loss_function(LoopConfig(class_weights=[1.0, 9.0]), CPU)
    assert loss.weight.tolist() == [1.0, 9.0]
    assert isinstance(loss_function(LoopConfig(task="regression"), CPU), torch.nn.MSELoss)


def test_early_stopping_patience_modes_and_state() -> None:
    es = EarlyStopping("val_loss", "min", patience=2, min_delta=0.01)
    seen = [es.update({"val_loss": v}, e) for e, v in enumerate([1.0, 0.8, 0.795, 0.9])]
    assert seen == [True, True, False, False] and es.should_stop
    assert (es.best, es.best_epoch) == (0.8, 1)
    again = EarlyStopping("val_loss", "min", patience=2, min_delta=0.01)
    again.load_state_dict(es.state_dict())
    assert again.should_stop and again.best_epoch == 1
    acc = EarlyStopping("val_accuracy", "max", patience=1)
    assert acc.update({"val_accuracy": 0.7}, 0) and acc.update({"val_accuracy": 0.8}, 1)
    assert not acc.update({"val_accuracy": 0.75}, 2) and acc.should_stop
    with pytest.raises(KeyError, match="'val_loss' is not reported"):
        EarlyStopping().update({"train_loss": 1.0}, 0)


def test_shard_cache_replays_the_first_pass_and_respects_its_limit() -> None:
    from raypipe.train.loop import ShardCache

    x, y = _data(100)
    stream = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 100, 32)]
    cache = ShardCache(limit_bytes=1 << 20)
    assert not cache.ready
    passed = list(cache.record(iter(stream)))
    assert all(a[0] is b[0] for a, b in zip(passed, stream)) and cache.ready  # the first pass is unchanged
    again = list(cache.batches(32, CPU))
    assert torch.equal(torch.cat([b[0] for b in again]), x) and [len(b[1]) for b in again] == [32, 32, 32, 4]
    shuffled = list(cache.batches(32, CPU, seed=7))
    xs = torch.cat([b[0] for b in shuffled])
    assert not torch.equal(xs, x) and torch.allclose(xs.sum(0), x.sum(0))  # same rows, another order
    assert torch.equal(xs, torch.cat([b[0] for b in cache.batches(32, CPU, seed=7)]))  # seeded: reproducible
    small = ShardCache(limit_bytes=1000)  # 100 rows x 4 floats + labels is over 1000 bytes
    assert len(list(small.record(iter(stream)))) == 4 and not small.ready
    assert ShardCache(0).overflow  # 0 turns caching off
