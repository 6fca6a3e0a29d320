"""Torch models on Ray Train (Train V2 ``TorchTrainer``): DDP on ``train.workers``.

Each worker builds the model from the zoo (:mod:`raypipe.model.zoo`), reads its shard
of the Ray Dataset and runs the epoch math of :mod:`raypipe.train.loop` (mixed
precision, LR schedule, early stopping); gloo on CPU, NCCL on GPU. Every epoch rank 0
writes a checkpoint (:mod:`raypipe.train.checkpoint`: safetensors weights, optimizer /
schedule / scaler state, epoch counter, completion marker written last); after a
worker failure Ray Train restarts the group from the newest complete one. At the end
the workers exchange their pid and a digest of their parameters: equal digests across
different processes prove gradients were synchronised.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from typing import Any

from raypipe.errors import StageFailed
from raypipe.train import checkpoint as ckpt_files
from raypipe.model.formats import model_meta
from raypipe.train.plan import TrainPlan, plan
from raypipe.tasks import TASKS

logger = logging.getLogger(__name__)


def _digest(model: Any) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _reduce(values: list[float], device: Any) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _batches(shard: Any, batch_size: int, dtypes: dict[str, Any], device: Any, shuffle: int = 0,
             seed: int | None = None) -> Any:
    """(x, y) batches of a shard; ``shuffle`` rows are mixed in a local buffer (seeded: reproducible)."""
    extra = {"local_shuffle_buffer_size": shuffle, "local_shuffle_seed": seed} if shuffle else {}
    for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=dtypes, device=device, **extra):
        yield batch["x"], batch["y"]


def train_loop(config: dict[str, Any]) -> None:
    """The per-worker loop (runs inside each Ray Train worker)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from raypipe.train.epochs import Training
    from raypipe.train.loop import ShardCache

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    run = Training(config, device, wrap=ray.train.torch.prepare_model, reduce=lambda v: _reduce(v, device),
                   keep_best=rank == 0)
    restored = ray.train.get_checkpoint()
    restored = ckpt_files.newest_complete(restored) if restored else None
    if restored:
        with restored.as_directory() as d:
            run.restore(ckpt_files.read(d))
    dtypes = {"x": torch.float32, "y": torch.int64 if TASKS[run.cfg.task].has_classes else torch.float32}
    bs = config["batch_size"]
    stopped = run.stopped  # a restart after the stopping epoch's checkpoint
    feed = config.get("feed")
    if feed:  # small materialised splits: this rank's rows straight from their blocks (block_feed)
        world = ctx.get_world_size()
        train_cache = _rank_rows(feed["train"], rank, world, True, dtypes)
        val_cache = _rank_rows(feed["validation"], rank, world, False, dtypes) if "validation" in feed else None
        train_shard = val_shard = None
    else:
        train_shard = ray.train.get_dataset_shard("train")
        val_shard = ray.train.get_dataset_shard("validation") if config["has_validation"] else None
        limit = int(config["cache_shards_mb"] * 2**20)
        train_cache, val_cache = ShardCache(limit), ShardCache(limit) if val_shard is not None else None
    gate = config.get("tune_gate")  # set in a Tune trial under ASHA (raypipe.train.tune.search.LockstepReport)
    for epoch in run.epochs():
        if stopped:
            break
        # Rows arrive in storage order (an image tree is sorted by class): shuffle them, seeded per epoch and rank.
        seed = config["seed"] * 100_003 + epoch * 101 + rank
        if train_cache.ready:
            batches = train_cache.batches(bs, device, seed)
        else:
            batches = train_cache.record(_batches(train_shard, bs, dtypes, device, config["shuffle_buffer"], seed))
        vb = None
        if val_cache is not None:
            vb = val_cache.batches(bs, device) if val_cache.ready else val_cache.record(_batches(val_shard, bs, dtypes, device))
        metrics = run.run_epoch(epoch, batches, vb)
        stopped = run.stopped
        if rank == 0 and config.get("tracking") is not None:  # MLflow, as the epoch ends (raypipe.tracking)
            config["tracking"](metrics, epoch)
        metrics["pid"] = os.getpid()
        t_ckpt = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                run.write_checkpoint(d, epoch, pid=os.getpid())
                checkpoint = ray.train.Checkpoint.from_directory(d)
            if epoch == config["epochs"] - 1 or stopped:
                metrics["ddp"] = _ddp_evidence(run.net, rank, ctx.get_world_size())
            t2 = time.perf_counter()
            ray.train.report(metrics, checkpoint=checkpoint)
            if gate is not None and rank == 0 and not stopped and epoch < config["epochs"] - 1:
                _wait_for_tune(gate, epoch)  # the other ranks wait in the next epoch's first all-reduce
            run.report_s = round(time.perf_counter() - t2, 3)
            run.ckpt_s = round(t2 - t_ckpt, 3)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank_rows(pieces: list[Any], rank: int, world: int, equal: bool, dtypes: dict[str, Any]) -> Any:
    """This rank's contiguous share of a split's rows (:func:`raypipe.train.data.block_rows` pieces), in memory.

    ``equal``: every rank gets ``rows // world`` rows and up to ``world - 1`` are left out, as
    ``streaming_split(equal=True)`` does for the training split; else the shares cover every row.
    """
    import torch

    from raypipe.train.data import read_rows
    from raypipe.train.loop import ShardCache

    n = sum(end - first for _, first, end in pieces)
    lo, hi = (rank * (n // world), (rank + 1) * (n // world)) if equal else (n * rank // world, n * (rank + 1) // world)
    x, y = read_rows(pieces, lo, hi)
    return ShardCache.of(torch.from_numpy(x).to(dtypes["x"]), torch.from_numpy(y).to(dtypes["y"]))


def block_feed(datasets: dict[str, Any], limit_mb: float) -> dict[str, list[Any]] | None:
    """The splits' blocks for the workers to read their rows from, when every split is materialised and
    together they fit a worker's shard cache (``train.cache_shards_mb``); else ``None``: Ray Train's
    streaming split feeds the workers.

    A streaming split starts a coordinator actor per split and a Ray Data execution on the
    workers' first read: about 3.4 s of a small run's first epoch on the 2-core machine, to hand
    out rows that are already in the object store. Each rank reads its share straight from the
    blocks instead (:func:`_rank_rows`) and keeps it in memory, as :class:`ShardCache` would after
    the first epoch.
    """
    from ray.data.dataset import MaterializedDataset

    from raypipe.train.data import block_rows

    if not datasets or not all(isinstance(ds, MaterializedDataset) for ds in datasets.values()):
        return None
    if sum(ds.size_bytes() for ds in datasets.values()) > limit_mb * 2**20:
        return None
    feed = {name: block_rows(ds) for name, ds in datasets.items()}
    if any(end is None for pieces in feed.values() for _, _, end in pieces):
        return None
    return feed


def _wait_for_tune(gate: Any, epoch: int, timeout_s: float = 1800.0) -> None:
    """Block until Tune has let the trial go on past ``epoch`` (a "stop" kills this worker instead)."""
    from ray.util.queue import Empty

    deadline = time.monotonic() + timeout_s
    try:
        while gate.get(timeout=max(1.0, deadline - time.monotonic())) < epoch:
            pass  # a token left by an attempt that failed after its report: already passed
    except Empty:
        logger.warning("no decision from Tune %.0f s after epoch %d's report; training on", timeout_s, epoch)


def _ddp_evidence(net: Any, rank: int, world: int) -> dict[str, Any]:
    import torch.distributed as dist

    mine = {"rank": rank, "pid": os.getpid(), "digest": _digest(net)}
    if not (dist.is_available() and dist.is_initialized()):
        return {"world_size": world, "workers": [mine]}
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    return {"world_size": world, "backend": dist.get_backend(), "workers": everyone}


def train_plan(spec: Any, dims: dict[str, Any]) -> TrainPlan:
    """The epochs and batch size ``spec.train`` resolves to for ``dims["train_rows"]`` (see :mod:`raypipe.train.plan`)."""
    rows = dims.get("train_rows")
    if rows is None:
        if spec.train.epochs is None or spec.train.batch_size is None:
            raise ValueError("loop_config: dims['train_rows'] is needed to resolve train.epochs / train.batch_size")
        rows = spec.train.workers * spec.train.batch_size  # unknown: only the report's step counts use it
    return plan(spec.train, int(rows))


def loop_config(spec: Any, dims: dict[str, Any], has_validation: bool) -> dict[str, Any]:
    """The JSON config each worker's :func:`train_loop` receives (``dims``: see :mod:`raypipe.train.fit`)."""
    from raypipe.model.zoo import TRAIN_PARAMS

    t, params = spec.train, {**TRAIN_PARAMS.get(spec.model.kind, {}), **spec.model.params}
    es = t.early_stopping
    resolved = train_plan(spec, dims)
    scale = dims.get("target_scale")
    return {
        "kind": spec.model.kind, "task": spec.data.task, "input_dim": dims["input_dim"], "n_outputs": dims["n_outputs"],
        "layout": dims["layout"], "params": {k: v for k, v in params.items() if k != "weight_decay"},
        "weight_decay": float(params.get("weight_decay", 0.0)), "lr": t.lr, "epochs": resolved.epochs,
        "batch_size": resolved.batch_size, "target_scale": scale, "target_std": scale["std"] if scale else None, "shuffle_buffer": t.shuffle_buffer, "cache_shards_mb": t.cache_shards_mb, "seed": t.seed, "class_weights": dims["class_weights"], "has_validation": has_validation,
        "precision": t.precision, "lr_schedule": t.lr_schedule, "warmup_epochs": t.warmup_epochs,
        "lr_step_epochs": t.lr_step_epochs, "lr_gamma": t.lr_gamma,
        "early_stopping": None if es is None else {"metric": es.metric, "mode": es.resolved_mode, "patience": es.patience,
                                                   "min_delta": es.min_delta},
    }


def shard_config() -> Any:
    """How Ray Train hands the splits to the workers: every validation row to exactly one worker.

    Ray Train's default ``DataConfig`` splits every dataset with ``streaming_split(equal=True)``,
    which leaves out up to ``workers - 1`` rows per epoch so that every worker gets as many. The
    training split needs that (DDP all-reduces gradients at every step: a worker with one more
    batch would wait forever); the rows it leaves out are counted in the train report. The
    validation split does not: evaluation runs no collective per batch, only one all-reduce of
    its totals at the end, so it is split unequally and its metrics (which early stopping and
    Tune act on) cover every row.
    """
    from ray.train import DataConfig

    class EveryValidationRow(DataConfig):
        def configure(self, datasets: dict[str, Any], world_size: int, worker_handles: Any, worker_node_ids: Any,
                      **kwargs: Any) -> list[dict[str, Any]]:
            equal = {k: v for k, v in datasets.items() if k != "validation"}
            out = super().configure(equal, world_size, worker_handles, worker_node_ids, **kwargs)
            if "validation" in datasets:
                ds = datasets["validation"]
                ds = ds.copy(ds)
                ds.set_name("validation")
                ds.context.execution_options = self._resolve_execution_options("validation")
                for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                    out[i]["validation"] = split
            return out

    return EveryValidationRow()


def make_trainer(spec: Any, config: dict[str, Any], datasets: dict[str, Any], run_config: Any) -> Any:
    """The ``TorchTrainer`` for one configuration: ``train.workers`` workers, NCCL with ``use_gpu``."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = dict(spec.train.resources)
    if spec.train.use_gpu:
        res.setdefault("GPU", 1)
    feed = block_feed(datasets, spec.train.cache_shards_mb)
    return TorchTrainer(
        train_loop,
        train_loop_config={**config, "feed": feed} if feed else config,
        scaling_config=ScalingConfig(num_workers=spec.train.workers, use_gpu=spec.train.use_gpu, resources_per_worker=res),
        torch_config=TorchConfig(backend="nccl" if spec.train.use_gpu else "gloo"),
        run_config=run_config,
        **({} if feed else {"datasets": datasets, "dataset_config": shard_config()}),
    )


def shards_of(trainer: Any) -> str:
    """How ``trainer``'s workers get their rows: ``blocks`` (:func:`block_feed`) or ``streaming_split``."""
    return "blocks" if trainer.train_loop_config.get("feed") else "streaming_split"


def model_from_checkpoint(spec: Any, checkpoint: Any, dims: dict[str, Any], ddp: Any,
                          where: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model metadata, weights, training report) from a Ray Train run's newest complete checkpoint."""
    final = ckpt_files.newest_complete(checkpoint) if checkpoint else None
    if final is None:
        raise StageFailed(f"stage 'train' failed: no complete checkpoint under {where}")
    with final.as_directory() as d:
        return model_from_saved(spec, ckpt_files.read(d), dims, ddp)


def model_from_saved(spec: Any, saved: dict[str, Any], dims: dict[str, Any],
                     ddp: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model metadata, weights, training report) from a checkpoint's contents (:func:`checkpoint.read`).

    The best epoch's weights when ``train.early_stopping.restore_best`` kept them, else the last.
    """
    es = spec.train.early_stopping
    keep_best = es is not None and es.restore_best and saved["best"] is not None
    config = loop_config(spec, dims, True)
    scale = config["target_scale"]
    meta = model_meta(spec.model.kind, spec.data.task, config["n_outputs"], input_dim=config["input_dim"],
                      layout=config["layout"], params=config["params"], **({"target_scale": scale} if scale else {}))
    history = saved["meta"]["history"]
    resolved = train_plan(spec, dims)
    report = {"history": history, "resumes": saved["meta"].get("resumes", []), "ddp": ddp,
              "epochs": resolved.epochs, "epochs_run": len(history), "workers": spec.train.workers,
              "batch_size": resolved.batch_size, "steps_run": len(history) * resolved.steps_per_epoch,
              "plan": resolved.to_dict(), "target_scale": scale, "lr_schedule": spec.train.lr_schedule,
              "warmup_epochs": spec.train.warmup_epochs,
              "precision": spec.train.precision, "kind": spec.model.kind}
    if es is not None:
        report["early_stopping"] = {**saved["state"]["early_stopping"], "metric": es.metric,
                                    "stopped": bool(history and history[-1].get("stopped")),
                                    "weights": "best" if keep_best else "last"}
    return meta, saved["best"] if keep_best else saved["weights"], report


def train_torch(spec: Any, ctx: Any, datasets: dict[str, Any], dims: dict[str, Any],
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Run the TorchTrainer; return (model metadata, final weights, training report)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, TrainingFailedError

    from raypipe.model.zoo import check_layout

    check_layout(spec.model.kind, dims["layout"])  # a spec error on the driver, before any worker starts
    config = {**loop_config(spec, dims, "validation" in datasets), "tracking": dims.get("tracking")}
    store = ckpt_files.work_folder(ctx)  # outlives the stage's artifact folder: a rerun after a driver crash resumes the run
    run_config = RunConfig(
        name="ray_train",
        storage_path=store.path(),
        storage_filesystem=None if store.is_local else store.fs,
        failure_config=FailureConfig(max_failures=spec.train.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
    )
    trainer = make_trainer(spec, config, datasets, run_config)
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageFailed(
            f"stage 'train' failed: Ray Train gave up after train.max_failures={spec.train.max_failures} "
            f"restart(s): {first}\nEvery committed checkpoint is kept under {store.full_uri('ray_train')}; run "
            "again to resume from the newest, or raise train.max_failures to survive more worker failures."
        ) from exc
    meta, weights, report = model_from_checkpoint(spec, result.checkpoint, dims, result.metrics.get("ddp"),
                                                  store.full_uri("ray_train"))
    return meta, weights, {**report, "checkpoints": store.full_uri("ray_train"), "shards": shards_of(trainer)}
