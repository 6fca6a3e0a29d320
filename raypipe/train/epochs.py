"""One configuration's training state, epoch by epoch: the part every torch path shares.

:class:`Training` holds the model, optimiser, LR schedule, gradient scaler, early stopping,
history and restarts of one run, and turns one epoch's batches into that epoch's metrics.
Three drivers feed it: Ray Train's workers (:mod:`raypipe.train.torch_trainer`, with an
all-reduce across ranks), the single-process task (:mod:`raypipe.train.local`) and a Tune
trial (:mod:`raypipe.train.tune.search`). No Ray in this module.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from raypipe.train import checkpoint as ckpt_files
from raypipe.train.loop import (EarlyStopping, LoopConfig, epoch_metrics, evaluate, loss_function, make_optimizer,
                                train_epoch)


def _same(values: list[float]) -> list[float]:
    return values


class Training:
    """The model of ``config`` (a :func:`raypipe.train.torch_trainer.loop_config`) and its optimiser state.

    Args:
        config: the loop config (model kind, dims, optimiser and schedule settings, seed).
        device: where the model lives.
        wrap: applied to the built module before the optimiser sees it (Ray Train's ``prepare_model``).
        reduce: sums a list of per-process totals across processes (DDP's all-reduce); identity alone.
        keep_best: keep a CPU copy of the best epoch's weights (rank 0 only under DDP).
    """

    def __init__(self, config: dict[str, Any], device: torch.device, *, wrap: Callable[[Any], Any] | None = None,
                 reduce: Callable[[list[float]], list[float]] | None = None, keep_best: bool = True) -> None:
        from raypipe.model.zoo import build_model

        torch.manual_seed(config["seed"])
        self.config, self.cfg, self.device = config, LoopConfig.from_dict(config), device
        self.net = build_model(config["kind"], input_dim=config["input_dim"], n_outputs=config["n_outputs"],
                               layout=config["layout"], params=config["params"], target_scale=config.get("target_scale"))
        self.model = wrap(self.net) if wrap else self.net
        self.optim, self.sched, self.scaler = make_optimizer(self.model, self.cfg)
        self.stopper = EarlyStopping.from_config(self.cfg.early_stopping)
        self.loss_fn = loss_function(self.cfg, device)
        self.reduce, self.keep_best = reduce or _same, keep_best
        self.start_epoch, self.history, self.resumes = 0, [], []
        self.best: dict[str, Any] | None = None
        self.report_s = self.ckpt_s = 0.0  # the previous epoch's report and checkpoint write, set by the driver

    @property
    def stopped(self) -> bool:
        """Early stopping has decided (also true right after a restart from the stopping epoch's checkpoint)."""
        return self.stopper is not None and self.stopper.should_stop

    def epochs(self) -> range:
        """The epochs still to train."""
        return range(self.start_epoch, self.config["epochs"])

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's contents (:func:`raypipe.train.checkpoint.read`); the restart is recorded."""
        meta, state = saved["meta"], saved["state"]
        self.net.load_state_dict(saved["weights"])
        self.optim.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.stopper is not None and state.get("early_stopping"):
            self.stopper.load_state_dict(state["early_stopping"])
        self.best = saved["best"]
        self.start_epoch, self.history = meta["epoch"] + 1, meta["history"]
        self.resumes = meta.get("resumes", []) + [{"from_checkpoint_epoch": meta["epoch"], "first_epoch": self.start_epoch}]

    def run_epoch(self, epoch: int, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None) -> dict[str, Any]:
        """Train one epoch, evaluate, step the schedule and early stopping; the epoch's metrics (also in ``history``)."""
        t0 = time.perf_counter()
        train_sums = self.reduce(list(train_epoch(self.model, batches, self.optim, self.scaler, self.loss_fn, self.cfg,
                                                  self.device)))
        t1 = time.perf_counter()
        val_sums = None
        if val_batches is not None:
            val_sums = self.reduce(evaluate(self.model, val_batches, self.loss_fn, self.cfg, self.device))
        metrics: dict[str, Any] = {"epoch": epoch, "lr": self.optim.param_groups[0]["lr"],
                                   **epoch_metrics(train_sums, val_sums, self.cfg.task, self.cfg.target_std),
                                   "train_rows": int(train_sums[1]), **({"val_rows": int(val_sums[2])} if val_sums else {}),
                                   "train_s": round(t1 - t0, 3), "val_s": round(time.perf_counter() - t1, 3),
                                   "report_s": self.report_s, "ckpt_s": self.ckpt_s}
        self.sched.step()
        if self.stopper is not None:
            # Under DDP every rank holds the same all-reduced metrics, so every rank stops at the same epoch.
            if self.stopper.update(metrics, epoch) and self.keep_best:
                self.best = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
            metrics["stopped"] = self.stopper.should_stop
        self.history.append(dict(metrics))
        return metrics

    def write_checkpoint(self, folder: str, epoch: int, **meta: Any) -> None:
        """This state as a complete checkpoint in ``folder`` (:mod:`raypipe.train.checkpoint`)."""
        state = {"optimizer": self.optim.state_dict(), "scheduler": self.sched.state_dict(),
                 "scaler": self.scaler.state_dict(), "early_stopping": self.stopper.state_dict() if self.stopper else None}
        ckpt_files.write(folder, weights=self.net.state_dict(), state=state, best=self.best,
                         meta={"epoch": epoch, "history": self.history, "resumes": self.resumes, **meta})
