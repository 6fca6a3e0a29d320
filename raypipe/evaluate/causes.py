"""The likely cause of a poorly trained network, named from what raypipe can see.

Read from the training report (``train_report.json``: the per-epoch ``history`` of a
torch run) and the train split's labels, only when the model falls short (worse than a
baseline, or underfitting), so a good model gets no advice it does not need:

- the learning rate diverged: the train loss became NaN/inf, or ended well above where it started;
- the regression target is not scaled: its standard deviation is far above 1 and the
  final train loss (MSE) is still of the order of the target's variance or larger (a
  network starts near 0 and cannot reach a target of mean 150 in a few steps);
- too few optimiser steps: epochs × batches per worker below :data:`MIN_STEPS`.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

MIN_STEPS = 500  # fewer optimiser steps than this rarely train a network from scratch
UNSCALED_STD = 10.0  # a regression target whose standard deviation exceeds this is "not scaled"
LOSS_VS_VARIANCE = 0.5  # ... when the final train MSE is still above this share of its variance
DIVERGED_RISE = 1.5  # the final train loss this many times its lowest, and above its first: diverged


def optimiser_steps(report: dict[str, Any], train_rows: int, batch_size: int) -> int:
    """Optimiser steps one worker took: the report's ``steps_run``, else epochs run × its batches per
    epoch (its share of the train rows)."""
    if report.get("steps_run") is not None:
        return int(report["steps_run"])
    workers = max(int(report.get("workers") or 1), 1)
    per_epoch = math.ceil(math.ceil(train_rows / workers) / max(batch_size, 1))
    return len(report.get("history") or []) * per_epoch


def training_causes(task: str, report: dict[str, Any] | None, *, y_train: np.ndarray | None, train_rows: int,
                    batch_size: int, lr: float) -> list[str]:
    """Findings naming the likely cause, most specific first; empty without a training history (scikit-learn)."""
    history = (report or {}).get("history") or []
    losses = [h.get("train_loss") for h in history if h.get("train_loss") is not None]
    if not losses:
        return []
    out: list[str] = []
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None:
        out.append(f"Likely cause: the learning rate diverged — the train loss became {losses[bad]} at epoch {bad}. "
                   f"Lower train.lr (now {lr:g}), e.g. by 10×.")
    elif len(losses) > 1 and losses[-1] > losses[0] and losses[-1] > DIVERGED_RISE * min(losses):
        out.append(f"Likely cause: the learning rate is too high — the train loss rose from {losses[0]:.4g} "
                   f"(epoch 0) to {losses[-1]:.4g} (epoch {len(losses) - 1}), its lowest being {min(losses):.4g}. "
                   f"Lower train.lr (now {lr:g}), e.g. by 10×.")
    scaled = bool((report or {}).get("target_scale"))  # trained on the standardised target already
    if task == "regression" and not scaled and bad is None and y_train is not None and len(y_train) > 1:
        y = y_train[np.isfinite(y_train)]
        std, var = float(np.std(y)), float(np.var(y))
        if std > UNSCALED_STD and losses[-1] > LOSS_VS_VARIANCE * var:
            out.append(f"Likely cause: the regression target is not scaled — it has mean {float(np.mean(y)):.4g} and "
                       f"standard deviation {std:.4g}, and the final train loss (MSE {losses[-1]:.4g}) is "
                       f"{losses[-1] / var:.2g}× its variance: the network's outputs start near 0 and never reach "
                       "the target's scale. Standardise the target (train on (y − mean) / std and undo it on the "
                       "predictions), or use a scikit-learn model, which does not need it.")
    steps = optimiser_steps(report or {}, train_rows, batch_size)
    if steps < MIN_STEPS:
        per_epoch = steps // max(len(history), 1)
        out.append(f"Likely cause: too few optimiser steps — {steps} ({len(history)} epochs × {per_epoch} "
                   f"batch{'es' if per_epoch != 1 else ''} of up to {batch_size} rows per worker); networks "
                   f"usually need {MIN_STEPS} or more. Raise train.epochs (or train.min_steps with epochs "
                   "unset) or lower train.batch_size.")
    return out
