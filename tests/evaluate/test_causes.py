"""Likely causes of a poorly trained network, read from the training history (no Ray)."""
from __future__ import annotations

import numpy as np

from raypipe.evaluate.causes import MIN_STEPS, optimiser_steps, training_causes


def _report(losses, workers=1):
    return {"history": [{"epoch": i, "train_loss": v} for i, v in enumerate(losses)], "workers": workers}


def _diabetes_like_target(n=309):
    return np.random.default_rng(0).normal(152.0, 77.0, n)


def test_the_issues_case_unscaled_target_and_too_few_steps():
    """torch.mlp on diabetes at defaults: 20 epochs × 1 batch, train MSE 2.96e4 on a target of std ~77."""
    out = training_causes("regression", _report(np.linspace(2.99e4, 2.96e4, 20)), y_train=_diabetes_like_target(),
                          train_rows=309, batch_size=1024, lr=1e-3)
    assert len(out) == 2
    assert out[0].startswith("Likely cause: the regression target is not scaled") and "standard deviation" in out[0]
    assert out[1].startswith("Likely cause: too few optimiser steps — 20 (20 epochs × 1 batch of up to 1024 rows")


def test_a_scaled_target_or_a_well_fitted_loss_is_not_blamed():
    y = np.random.default_rng(0).normal(0.0, 1.0, 5000)
    assert training_causes("regression", _report([1.2, 0.6, 0.4]), y_train=y, train_rows=5000, batch_size=8,
                           lr=1e-3) == []
    # A large target the network did fit (loss far below its variance): no "unscaled" finding.
    big = _diabetes_like_target(5000)
    assert training_causes("regression", _report([3e4, 900.0, 400.0]), y_train=big, train_rows=5000, batch_size=8,
                           lr=1e-3) == []


def test_diverging_learning_rate():
    nan = training_causes("classification", _report([0.7, 3.2, float("nan")]), y_train=None, train_rows=100_000,
                          batch_size=64, lr=0.5)
    assert nan[0].startswith("Likely cause: the learning rate diverged — the train loss became nan at epoch 2")
    assert "Lower train.lr (now 0.5)" in nan[0]
    rising = training_causes("classification", _report([0.69, 0.5, 0.9, 2.5]), y_train=None, train_rows=100_000,
                             batch_size=64, lr=0.1)
    assert len(rising) == 1 and "rose from 0.69 (epoch 0) to 2.5 (epoch 3)" in rising[0]
    # Noise around a falling loss is not divergence.
    assert training_causes("classification", _report([0.69, 0.4, 0.42, 0.38]), y_train=None, train_rows=100_000,
                           batch_size=64, lr=0.1) == []


def test_steps_count_each_workers_share_of_the_rows():
    assert optimiser_steps(_report([1.0] * 8, workers=2), train_rows=35_000, batch_size=512) == 8 * 35
    assert optimiser_steps(_report([1.0] * 10), train_rows=309, batch_size=1024) == 10
    enough = training_causes("classification", _report([0.5] * 10), y_train=None, train_rows=MIN_STEPS * 64,
                             batch_size=64, lr=1e-3)
    assert enough == []


def test_no_history_no_cause():
    assert training_causes("regression", {"kind": "sklearn:sklearn.linear_model:Ridge"}, y_train=np.arange(10.0),
                           train_rows=10, batch_size=1024, lr=1e-3) == []
    assert training_causes("regression", None, y_train=None, train_rows=10, batch_size=1, lr=1.0) == []
