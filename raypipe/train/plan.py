"""How long a torch model trains: the batch size and epochs ``train`` resolves to for the data at hand.

Plain arithmetic on the train split's row count (no Ray, no torch), run on the driver
before the workers start, so every worker, the train report and the evaluate stage's
findings see the same numbers.

- ``train.batch_size`` unset: the power of two nearest below ``rows per worker / 32``,
  within [:data:`MIN_AUTO_BATCH`, :data:`MAX_AUTO_BATCH`], so that a small data set still
  takes about 32 optimiser steps per epoch (1,800 digits: 32 rows a batch, not one batch
  of 1,024) and a large one keeps batches of 1,024.
- ``train.epochs`` unset: enough epochs for ``train.min_steps`` optimiser steps, at
  least :data:`MIN_AUTO_EPOCHS` (the old default) and at most :data:`MAX_AUTO_EPOCHS`
  (a 20-row data set would otherwise take 500 epochs, each with a checkpoint).
- ``train.epochs`` set: exactly that many (early stopping may still stop sooner);
  ``min_steps`` does not apply.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MIN_AUTO_BATCH = 16
MAX_AUTO_BATCH = 1024
ROWS_PER_STEP_DIVISOR = 32  # auto batch: rows per worker / 32, i.e. ~32 steps per epoch on small data
MIN_AUTO_EPOCHS = 10
MAX_AUTO_EPOCHS = 200


@dataclass(frozen=True)
class TrainPlan:
    """What the loop runs: ``epochs`` of ``steps_per_epoch`` batches of ``batch_size`` rows per worker."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    train_rows: int
    workers: int
    min_steps: int | None
    epochs_reason: str
    batch_size_reason: str

    @property
    def planned_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "planned_steps": self.planned_steps}


def auto_batch_size(rows_per_worker: int) -> int:
    """The power of two at most ``rows_per_worker / 32``, clamped to [16, 1024]."""
    target = max(rows_per_worker // ROWS_PER_STEP_DIVISOR, 1)
    return min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, 1 << (target.bit_length() - 1)))


def steps_per_epoch(train_rows: int, workers: int, batch_size: int) -> int:
    """Optimiser steps per epoch: every worker gets ``train_rows // workers`` rows (Ray Train's equal split)."""
    return max(math.ceil((train_rows // max(workers, 1)) / batch_size), 1)


def plan(train: Any, train_rows: int) -> TrainPlan:
    """Resolve ``train`` (the spec's :class:`~raypipe.spec.TrainSection`) for ``train_rows`` training rows."""
    workers = train.workers
    per_worker = max(train_rows // workers, 1)
    if train.batch_size is None:
        bs = auto_batch_size(per_worker)
        bs_reason = f"auto: {train_rows:,} train rows / {workers} worker(s) / {ROWS_PER_STEP_DIVISOR}, " \
                    f"as a power of two in [{MIN_AUTO_BATCH}, {MAX_AUTO_BATCH}]"
    else:
        bs, bs_reason = train.batch_size, "train.batch_size"
    steps = steps_per_epoch(train_rows, workers, bs)
    if train.epochs is not None:
        return TrainPlan(train.epochs, bs, steps, train_rows, workers, None, "train.epochs (min_steps does not apply)",
                         bs_reason)
    needed = math.ceil(train.min_steps / steps) if train.min_steps else 0
    epochs = min(max(needed, MIN_AUTO_EPOCHS), MAX_AUTO_EPOCHS)
    if needed > MAX_AUTO_EPOCHS:
        reason = (f"train.min_steps={train.min_steps} needs {needed} epochs of {steps} steps; capped at "
                  f"{MAX_AUTO_EPOCHS} epochs")
    elif needed > MIN_AUTO_EPOCHS:
        reason = f"raised to reach train.min_steps={train.min_steps} at {steps} steps per epoch"
    else:
        reason = f"the default {MIN_AUTO_EPOCHS} epochs already take >= train.min_steps={train.min_steps} steps"
    return TrainPlan(epochs, bs, steps, train_rows, workers, train.min_steps, reason, bs_reason)
