"""Regression on the standardised target: trained on (y - mean) / std, predicting in the target's units."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.model.formats import load_model, model_meta, save_model
from raypipe.model.predictor import Predictor
from raypipe.model.zoo import TargetScale, build_model
from raypipe.store import Store
from raypipe.train.loop import (
    LoopConfig,
    StandardisedMSE,
    epoch_metrics,
    loss_function,
    make_optimizer,
    train_epoch,
)

CPU = torch.device("cpu")
MEAN, STD = 150.0, 77.0  # about the diabetes target's


def test_wrapper_un_scales_the_output_and_keeps_the_weights_file_unchanged() -> None:
    torch.manual_seed(0)
    scaled = build_model("torch.mlp", input_dim=3, n_outputs=1, params={"hidden": [4]},
                         target_scale={"mean": MEAN, "std": STD})
    assert isinstance(scaled, TargetScale)
    plain = build_model("torch.mlp", input_dim=3, n_outputs=1, params={"hidden": [4]})
    plain.load_state_dict({k.removeprefix("net."): v for k, v in scaled.state_dict().items()})
    assert all(k.startswith("net.") for k in scaled.state_dict())  # mean/std live in model.json, not the weights
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(scaled(x), plain(x) * STD + MEAN)
    with pytest.raises(ValueError, match="std must be > 0"):
        TargetScale(plain, 0.0, 0.0)


def test_standardised_loss_is_the_mse_of_the_standardised_target_and_metrics_come_back_in_units() -> None:
    out, y = torch.tensor([160.0, 120.0, 300.0]), torch.tensor([150.0, 100.0, 250.0])
    loss = loss_function(LoopConfig(task="regression", target_std=STD), CPU)
    assert isinstance(loss, StandardisedMSE)
    expected = torch.mean(((out - MEAN) / STD - (y - MEAN) / STD) ** 2)
    assert float(loss(out, y)) == pytest.approx(float(expected), rel=1e-6)
    # Summed standardised losses, reported as MSE / RMSE in the target's units.
    m = epoch_metrics([2.0, 4.0], [1.0, 0.0, 2.0], "regression", target_std=STD)
    assert m["train_loss"] == pytest.approx(0.5 * STD**2) and m["val_loss"] == pytest.approx(0.5 * STD**2)
    assert m["val_rmse"] == pytest.approx(np.sqrt(0.5) * STD)
    assert epoch_metrics([2.0, 4.0], None, "regression")["train_loss"] == 0.5  # unscaled: as before


def _train_tiny(x: np.ndarray, y: np.ndarray, target_scale: dict | None, epochs: int = 10) -> torch.nn.Module:
    """``epochs`` of 8 steps (80 in all, at lr 0.01) on the standardised or the raw target."""
    torch.manual_seed(0)
    cfg = LoopConfig(task="regression", n_outputs=1, epochs=epochs, lr=0.01,
                     target_std=target_scale["std"] if target_scale else None)
    net = build_model("torch.mlp", input_dim=x.shape[1], n_outputs=1, params={"hidden": [16]}, target_scale=target_scale)
    optim, _, scaler = make_optimizer(net, cfg)
    loss_fn = loss_function(cfg, CPU)
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))
    batches = [(xt[i:i + 32], yt[i:i + 32]) for i in range(0, len(x), 32)]
    for _ in range(epochs):
        train_epoch(net, batches, optim, scaler, loss_fn, cfg, CPU)
    return net


def test_predictor_on_a_tiny_regression_model_answers_in_the_targets_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=256), "b": rng.normal(size=256)})
    y = (MEAN + STD * (0.8 * frame["a"] - 0.5 * frame["b"]) + rng.normal(scale=5, size=256)).astype(np.float32)
    features = FeaturePipeline(numeric=["a", "b"]).fit(frame)
    x = features.transform(frame)
    scale = {"mean": float(y.mean()), "std": float(y.std())}
    net = _train_tiny(x, y.to_numpy(), scale)
    store = Store(tmp_path)
    save_model(store, model_meta("torch.mlp", "regression", 1, input_dim=2, params={"hidden": [16]}, target_scale=scale),
               torch_state=net.state_dict())
    schema = {"target": {"name": "y", "type": "number", "task": "regression"}}
    predictor = Predictor.load(store, features.to_dict(), schema)
    pred = np.array([r["prediction"] for r in predictor.predict_records(frame)])
    r2 = 1 - np.mean((pred - y) ** 2) / np.var(y)
    assert r2 > 0.95 and abs(pred.mean() - MEAN) < 15  # in the target's units, not standardised ones
    # The same weights without the stored scale answer standardised values: the scale is what un-scales them.
    raw = load_model(_without_scale(store, tmp_path / "raw")).predict_scores(x)
    assert np.allclose(raw * scale["std"] + scale["mean"], pred, rtol=1e-5, atol=1e-3)
    # Trained on the raw target instead, the same net and steps are worse than the mean (the bug this fixes).
    unscaled = _train_tiny(x, y.to_numpy(), None)
    with torch.no_grad():
        far = unscaled(torch.from_numpy(np.array(x)))[:, 0].numpy()
    assert 1 - np.mean((far - y) ** 2) / np.var(y) < 0


def _without_scale(store: Store, where: Path) -> Store:
    from raypipe.model.formats import MODEL_JSON, TORCH_WEIGHTS

    meta = store.read_json(MODEL_JSON)
    meta.pop("target_scale")
    out = Store(where)
    weights = {k.removeprefix("net."): v for k, v in __import__("safetensors.torch").torch.load(
        store.read_bytes(TORCH_WEIGHTS)).items()}
    save_model(out, meta, torch_state=weights)
    return out
