"""The per-epoch training math, in plain PyTorch: no Ray in this module.

Ray Train's worker function (:mod:`raypipe.train.torch_trainer`) drives these pieces
over its dataset shards; the GPU check (``benchmarks/gpu_check.py``) drives the same
pieces over in-memory tensors on a machine without Ray. Batches are ``(x, y)`` tensors
already on the device.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from raypipe.tasks import TASKS

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoopConfig:
    """What the loop needs from ``train`` (and ``model.params``) in the spec."""

    task: str = "classification"
    n_outputs: int = 2
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    precision: str = "fp32"
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    class_weights: list[float] | None = None
    target_std: float | None = None  # regression on the standardised target: the train split's std
    early_stopping: dict[str, Any] | None = field(default=None)  # {metric, mode, patience, min_delta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass (``fp32``: none)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def lr_scheduler(optim: torch.optim.Optimizer, cfg: LoopConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch LR schedule: ``warmup_epochs`` of linear warm-up from ``lr / (warmup_epochs + 1)``,
    then ``lr_schedule`` (constant; cosine to 0 over the remaining epochs; or x ``lr_gamma`` every ``lr_step_epochs``)."""
    sched = torch.optim.lr_scheduler
    warm = cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        main: sched.LRScheduler = sched.CosineAnnealingLR(optim, T_max=max(cfg.epochs - warm, 1))
    elif cfg.lr_schedule == "step":
        main = sched.StepLR(optim, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    else:
        main = sched.ConstantLR(optim, factor=1.0, total_iters=0)
    if not warm:
        return main
    return sched.SequentialLR(optim, [sched.LinearLR(optim, start_factor=1 / (warm + 1), total_iters=warm), main], [warm])


def make_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    """AdamW (decoupled weight decay; the same as Adam at the default ``weight_decay`` 0), its per-epoch
    LR schedule and the gradient scaler (active for fp16 only)."""
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    return optim, lr_scheduler(optim, cfg), scaler


def loss_function(cfg: LoopConfig, device: torch.device) -> torch.nn.Module:
    """Cross-entropy (classification); MSE (regression), divided by the target's variance when the
    model un-scales a standardised output (:class:`raypipe.model.zoo.TargetScale`): the MSE of the
    standardised target, which is what the network learns."""
    if TASKS[cfg.task].has_classes:
        w = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device) if cfg.class_weights else None
        return torch.nn.CrossEntropyLoss(weight=w)
    return StandardisedMSE(cfg.target_std) if cfg.target_std else torch.nn.MSELoss()


class StandardisedMSE(torch.nn.Module):
    """``MSE(out, y) / std**2``: the MSE of ``(out - mean) / std`` against ``(y - mean) / std``."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.inv_var = 1.0 / float(std) ** 2

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(out, y) * self.inv_var


def _loss(out: torch.Tensor, y: torch.Tensor, loss_fn: torch.nn.Module, task: str) -> torch.Tensor:
    out = out.float()  # the loss in fp32 under autocast
    return loss_fn(out, y) if TASKS[task].has_classes else loss_fn(out[:, 0], y)


def train_epoch(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], optim: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, loss_fn: torch.nn.Module, cfg: LoopConfig,
                device: torch.device) -> tuple[float, int]:
    """One pass over ``batches``; returns (sum of per-row loss, rows)."""
    model.train()
    loss_sum, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in batches:
        optim.zero_grad(set_to_none=True)
        with autocast(device, cfg.precision):
            out = model(x)
        loss = _loss(out, y, loss_fn, cfg.task)
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
        loss_sum += loss.detach().double() * len(y)  # no host sync per step
        n += len(y)
    return float(loss_sum), n


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: torch.nn.Module,
             cfg: LoopConfig, device: torch.device) -> list[float]:
    """Summed validation statistics, to be all-reduced across workers before :func:`epoch_metrics`.

    ``[loss_sum, correct, rows]``, then for classification the per-class counts of true
    positives, predictions and labels (for F1).
    """
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    counts: torch.Tensor | None = None
    n = 0
    for x, y in batches:
        with autocast(device, cfg.precision):
            out = model(x)
        loss_sum += _loss(out, y, loss_fn, cfg.task).double() * len(y)
        if TASKS[cfg.task].has_classes:
            k = out.shape[1]
            pred = out.argmax(dim=1)
            hit = pred == y
            correct += hit.sum().double()
            batch_counts = torch.cat([torch.bincount(y[hit], minlength=k), torch.bincount(pred, minlength=k),
                                      torch.bincount(y, minlength=k)]).double()
            counts = batch_counts if counts is None else counts + batch_counts
        n += len(y)
    out_sums = [float(loss_sum), float(correct), float(n)]
    if TASKS[cfg.task].has_classes:
        k = cfg.n_outputs
        out_sums += counts.tolist() if counts is not None else [0.0] * (3 * k)
    return out_sums


def epoch_metrics(train: Sequence[float], val: Sequence[float] | None, task: str,
                  target_std: float | None = None) -> dict[str, float]:
    """Per-row averages (and F1 / RMSE) of summed, all-reduced epoch totals.

    With ``target_std`` (regression on the standardised target) the losses are multiplied
    back by its variance: ``train_loss`` / ``val_loss`` are MSEs and ``val_rmse`` an RMSE in
    the target's own units, as without scaling.
    """
    unit = float(target_std) ** 2 if target_std and not TASKS[task].has_classes else 1.0
    out = {"train_loss": train[0] / max(train[1], 1) * unit}
    if val is not None:
        rows = max(val[2], 1)
        out["val_loss"] = val[0] / rows * unit
        if TASKS[task].has_classes:
            from raypipe.train.metrics import f1_from_counts

            k = (len(val) - 3) // 3
            out["val_accuracy"] = val[1] / rows
            out["val_f1"] = f1_from_counts(val[3:3 + k], val[3 + k:3 + 2 * k], val[3 + 2 * k:])
        else:
            out["val_rmse"] = math.sqrt(out["val_loss"])
    return out


class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement of ``metric`` by more than ``min_delta``."""

    def __init__(self, metric: str = "val_loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0) -> None:
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Record ``epoch``'s metrics; True when they are the best so far."""
        if self.metric not in metrics:
            raise KeyError(f"train.early_stopping.metric: {self.metric!r} is not reported; "
                           f"the epoch reports {sorted(metrics)}")
        value = metrics[self.metric]
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]

    @classmethod
    def from_config(cls, d: dict[str, Any] | None) -> EarlyStopping | None:
        return cls(**d) if d else None


class ShardCache:
    """A worker's data shard, kept in memory after the first pass when it fits in ``limit_bytes``.

    The first epoch streams the shard from Ray Data and records its batches on the
    side; later epochs iterate the recorded tensors (shuffled by a seeded permutation)
    instead of executing the Ray Data pipeline again, as a plain PyTorch loop over
    in-memory tensors would. A shard over the limit is never cached: every epoch streams.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.size = 0
        self.overflow = limit_bytes <= 0
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor) -> ShardCache:
        """A cache already holding ``x`` and ``y`` (a whole split read into memory)."""
        cache = cls(x.element_size() * x.nelement() + y.element_size() * y.nelement())
        cache.x, cache.y = x, y
        return cache

    @property
    def ready(self) -> bool:
        return self.x is not None

    def record(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``batches`` unchanged, keeping a CPU copy of each while under the limit."""
        for x, y in batches:
            if not self.overflow:
                self.size += x.element_size() * x.nelement() + y.element_size() * y.nelement()
                if self.size > self.limit:
                    self.overflow, self._parts = True, []
                else:
                    self._parts.append((x.detach().to("cpu"), y.detach().to("cpu")))
            yield x, y
        if not self.overflow and self._parts:
            self.x = torch.cat([p[0] for p in self._parts])
            self.y = torch.cat([p[1] for p in self._parts])
            self._parts = []

    def batches(self, batch_size: int, device: torch.device, seed: int | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The cached rows in batches (a seeded permutation when ``seed`` is given)."""
        assert self.x is not None and self.y is not None
        n = len(self.x)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if seed is not None else None
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
            yield self.x[idx].to(device, non_blocking=True), self.y[idx].to(device, non_blocking=True)
