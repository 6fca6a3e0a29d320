"""Torch training in one Ray task: the same loop as Ray Train's workers, without Ray Train.

A ``TorchTrainer`` run starts about eight Ray processes (controller, placement-group
cleaner, sync actor, workers, dataset manager, a split coordinator per dataset) before
its first epoch: ~13 s of a 14.6 s two-epoch train stage on 140k rows on a 2-core machine.
Where several processes buy nothing (no GPU, data that fits one process: see
:func:`choose_path`), the stage runs :class:`raypipe.train.epochs.Training` in one task
with ``train.workers`` x ``resources.CPU`` CPUs and as many torch threads, on the whole
split in memory.

It keeps what the distributed path promises:

- the same plan: each step takes ``workers x batch_size`` rows, the batch DDP averages
  over, so the steps per epoch, epochs and LR schedule are those of the train report;
- a checkpoint after every epoch (:mod:`raypipe.train.checkpoint`: marker written last;
  the newest two kept) in the stage's work folder (:func:`raypipe.train.checkpoint.work_folder`), which outlives
  the stage's artifact folder: a task killed mid-run is retried by Ray
  (``train.max_failures``) and a rerun after a driver crash starts a new task, and both
  continue after the newest complete checkpoint;
- the same metrics history, and the same result for the same seed on this path (the
  epoch's shuffle is a seeded permutation; one process, so no reduction order to vary).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from raypipe.train import checkpoint as ckpt_files
from raypipe.train.data import estimated_mb

KEEP = 2  # complete checkpoints kept (as Ray Train's CheckpointConfig(num_to_keep=2) on the other path)
SINGLE, DISTRIBUTED = "single_process", "ray_train"


def choose_path(train: Any, rows: int, n_features: int) -> tuple[str, str]:
    """(path, why) for ``train`` (the spec's section) on ``rows`` transformed train + validation rows."""
    mb = estimated_mb(rows, n_features)
    if train.distributed == "always":
        return DISTRIBUTED, "train.distributed: always"
    if train.distributed == "never":
        return SINGLE, "train.distributed: never"
    if train.use_gpu:
        return DISTRIBUTED, "auto: train.use_gpu (GPUs train on Ray Train)"
    if mb > train.local_max_mb:
        return DISTRIBUTED, f"auto: the transformed splits ({mb:,.0f} MB) exceed train.local_max_mb={train.local_max_mb:g}"
    return SINGLE, (f"auto: no GPU and the transformed splits ({mb:,.1f} MB) fit one process "
                    f"(train.local_max_mb={train.local_max_mb:g})")


def _arrays(ds: Any) -> tuple[Any, Any]:
    """``x`` and ``y`` of a split: a (materialised) dataset, straight from its blocks, or a
    ``{"source": ..., "rel": ...}`` entry read and transformed here (:func:`_read_source`).

    Not ``iter_batches``: in a fresh worker process its first call set up Ray Data's
    streaming executor for 1.8 s (35,000 x 30 floats; later calls 0.04-0.08 s), against
    0.03 s for fetching the block refs of the materialised dataset.
    """
    import torch

    from raypipe.train.data import block_rows, read_rows

    if isinstance(ds, dict):
        return _read_source(ds["source"], ds["rel"])
    x, y = read_rows(block_rows(ds))
    return torch.from_numpy(x), torch.from_numpy(y)


def _read_source(source: dict[str, Any], rel: str) -> tuple[Any, Any]:
    """Small data (:data:`raypipe.datasets.SMALL_DATA_BYTES`): the validated split read and transformed in
    this process (:func:`raypipe.train.data.xy_table`): no Ray Data execution.
    On the demo (50,000 rows) materialising the two transformed splits first took two executions
    and their streaming executors' start-up."""
    import torch

    from raypipe.train.data import xy_table

    xy = xy_table(source["store"], rel, source["features"], source["schema"], source["context"])
    return torch.from_numpy(xy["x"]), torch.from_numpy(xy["y"])


def train_in_memory(config: dict[str, Any], datasets: dict[str, Any], threads: int, restored: dict[str, Any] | None,
                    save: Callable[[Any, int, dict[str, Any]], None]) -> None:
    """Train ``config`` on ``datasets`` (``{"x", "y"}`` Ray Datasets, or small splits to read: :func:`_arrays`) read
    whole into this process's memory.

    ``restored``: a checkpoint's contents to continue from. ``save(training, epoch, metrics)``
    runs after every epoch (it writes the checkpoint, and in a Tune trial reports it).
    Each step takes ``workers x batch_size`` rows: the batch DDP averages over on the other path.
    """
    import torch

    from raypipe.tasks import TASKS
    from raypipe.train.epochs import Training
    from raypipe.train.loop import ShardCache

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    run = Training(config, device)
    if restored:
        run.restore(restored)
    label = torch.int64 if TASKS[run.cfg.task].has_classes else torch.float32
    train = ShardCache.of(*_cast(_arrays(datasets["train"]), label))
    val = ShardCache.of(*_cast(_arrays(datasets["validation"]), label)) if "validation" in datasets else None
    bs = config["batch_size"] * config["workers"]
    for epoch in run.epochs():
        if run.stopped:
            break
        seed = config["seed"] * 100_003 + epoch * 101
        metrics = run.run_epoch(epoch, train.batches(bs, device, seed), val.batches(bs, device) if val else None)
        if config.get("tracking") is not None:  # MLflow, as the epoch ends (raypipe.tracking.EpochLogger)
            config["tracking"](metrics, epoch)
        t0 = time.perf_counter()
        save(run, epoch, metrics)
        run.ckpt_s = round(time.perf_counter() - t0, 3)


def run_local(config: dict[str, Any], datasets: dict[str, Any], folder: str, threads: int) -> dict[str, Any]:
    """The task's body: train, checkpointing into ``folder`` after every epoch (the newest :data:`KEEP` kept)."""
    import torch

    def save(run: Any, epoch: int, metrics: dict[str, Any]) -> None:
        target = os.path.join(folder, f"epoch_{epoch:06d}")
        shutil.rmtree(target, ignore_errors=True)  # an incomplete one left by a killed attempt
        run.write_checkpoint(target, epoch, pid=os.getpid())
        for old in sorted(n for n in os.listdir(folder) if n.startswith("epoch_"))[:-KEEP]:
            shutil.rmtree(os.path.join(folder, old), ignore_errors=True)

    restored = ckpt_files.newest_in(folder)
    train_in_memory(config, datasets, threads, ckpt_files.read(restored) if restored else None, save)
    return {"pid": os.getpid(), "threads": torch.get_num_threads()}


def _cast(xy: tuple[Any, Any], label: Any) -> tuple[Any, Any]:
    import torch

    return xy[0].to(torch.float32), xy[1].to(label)


def train_single(spec: Any, ctx: Any, datasets: dict[str, Any], dims: dict[str, Any],
                 why: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Train in one Ray task; return (model metadata, final weights, training report)."""
    import ray

    from raypipe.errors import StageFailed
    from raypipe.model.zoo import check_layout
    from raypipe.train.torch_trainer import loop_config, model_from_saved

    check_layout(spec.model.kind, dims["layout"])
    store = ckpt_files.work_folder(ctx)
    if not store.is_local:
        raise StageFailed(f"train: the single-process path checkpoints to a local or shared filesystem; storage "
                          f"{ctx.root.full_uri('')!r} is remote. Set train.distributed: always to train on Ray Train")
    folder = store.path("single")
    os.makedirs(folder, exist_ok=True)
    if dims.get("source"):
        from ray.data import DataContext

        source = {**dims["source"], "context": DataContext.get_current()}
        datasets = {s: {"source": source, "rel": rel} for s, rel in source.pop("rels").items()}
    config = {**loop_config(spec, dims, "validation" in datasets), "workers": spec.train.workers,
              "tracking": dims.get("tracking")}
    cpus = spec.train.workers * float(spec.train.resources.get("CPU", 1))
    task = ray.remote(run_local).options(num_cpus=cpus, max_retries=spec.train.max_failures, retry_exceptions=False,
                                         name="raypipe-train")
    try:
        done = ray.get(task.remote(config, datasets, folder, max(1, int(cpus))))
    except ray.exceptions.WorkerCrashedError as exc:  # the task's process died more often than max_failures
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageFailed(
            f"stage 'train' failed after train.max_failures={spec.train.max_failures} restart(s): {first}\n"
            f"Every complete checkpoint is kept under {store.full_uri('single')}; run again to resume from it, or "
            "raise train.max_failures to survive more worker failures.") from exc
    final = ckpt_files.newest_in(folder)
    if final is None:
        raise StageFailed(f"stage 'train' failed: no complete checkpoint under {store.full_uri('single')}")
    meta, weights, report = model_from_saved(spec, ckpt_files.read(final), dims, None)
    report.update(path=SINGLE, path_reason=why, checkpoints=store.full_uri("single"),
                  process={**done, "cpus": cpus, "batch_rows": config["batch_size"] * spec.train.workers})
    return meta, weights, report
