"""``torch.mlp`` on Ray Train (Train V2 ``TorchTrainer``): DDP on ``train.workers``.

Each worker reads its shard of the Ray Dataset, gloo on CPU and NCCL on GPU. Every
epoch rank 0 writes a checkpoint (safetensors weights, optimizer state, epoch
counter); after a worker failure Ray Train restarts the group from the latest one.
At the end the workers exchange their pid and a digest of their parameters: equal
digests across different processes prove gradients were synchronised.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

from raypipe.errors import StageFailed
from raypipe.train.models import build_mlp, model_meta

CKPT_WEIGHTS, CKPT_OPTIM, CKPT_META = "model.safetensors", "optimizer.pt", "meta.json"


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


def train_loop(config: dict[str, Any]) -> None:
    """The per-worker loop (runs inside each Ray Train worker)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    task = config["task"]
    net = build_mlp(config["input_dim"], config["hidden"], config["n_outputs"], config["dropout"])
    model = ray.train.torch.prepare_model(net)
    device = ray.train.torch.get_device()
    optim = torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    weights = torch.tensor(config["class_weights"], dtype=torch.float32, device=device) if config["class_weights"] else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights) if task == "classification" else torch.nn.MSELoss()
    start_epoch, history, resumes = 0, [], []
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            meta = json.load(open(os.path.join(d, CKPT_META)))
            with open(os.path.join(d, CKPT_WEIGHTS), "rb") as f:
                net.load_state_dict(st_load(f.read()))
            optim.load_state_dict(torch.load(os.path.join(d, CKPT_OPTIM), weights_only=True))
            start_epoch, history = meta["epoch"] + 1, meta["history"]
            # A restart after a failure: record where training picked up again.
            resumes = meta.get("resumes", []) + [{"from_checkpoint_epoch": meta["epoch"], "first_epoch": start_epoch}]
    y_dtype = torch.int64 if task == "classification" else torch.float32
    dtypes = {"x": torch.float32, "y": y_dtype}
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation") if config["has_validation"] else None
    for epoch in range(start_epoch, config["epochs"]):
        model.train()
        loss_sum, n = 0.0, 0
        for batch in train_shard.iter_torch_batches(batch_size=config["batch_size"], dtypes=dtypes, device=device):
            x, y = batch["x"], batch["y"]
            optim.zero_grad()
            out = model(x)
            loss = loss_fn(out, y) if task == "classification" else loss_fn(out[:, 0], y)
            loss.backward()
            optim.step()
            loss_sum += float(loss) * len(y)
            n += len(y)
        tot_loss, tot_n = _reduce([loss_sum, n], device)
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": tot_loss / max(tot_n, 1)}
        if val_shard is not None:
            metrics.update(_validate(model, val_shard, loss_fn, task, config["batch_size"], dtypes, device))
        metrics["pid"] = os.getpid()
        history.append({k: v for k, v in metrics.items() if k != "pid"})
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                with open(os.path.join(d, CKPT_WEIGHTS), "wb") as f:
                    f.write(st_save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}))
                torch.save(optim.state_dict(), os.path.join(d, CKPT_OPTIM))
                json.dump({"epoch": epoch, "history": history, "resumes": resumes, "pid": os.getpid()},
                          open(os.path.join(d, CKPT_META), "w"))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            if epoch == config["epochs"] - 1:
                metrics["ddp"] = _ddp_evidence(net, rank, ctx.get_world_size())
            ray.train.report(metrics, checkpoint=checkpoint)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _validate(model: Any, shard: Any, loss_fn: Any, task: str, batch_size: int, dtypes: dict[str, Any], device: Any) -> dict[str, float]:
    import torch

    model.eval()
    loss_sum, correct, n = 0.0, 0.0, 0.0
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=dtypes, device=device):
            out = model(batch["x"])
            y = batch["y"]
            if task == "classification":
                loss_sum += float(loss_fn(out, y)) * len(y)
                correct += float((out.argmax(dim=1) == y).sum())
            else:
                loss_sum += float(loss_fn(out[:, 0], y)) * len(y)
            n += len(y)
    loss_sum, correct, n = _reduce([loss_sum, correct, n], device)
    out = {"val_loss": loss_sum / max(n, 1)}
    if task == "classification":
        out["val_accuracy"] = correct / max(n, 1)
    return out


def _ddp_evidence(net: Any, rank: int, world: int) -> dict[str, Any]:
    import torch.distributed as dist

    mine = {"rank": rank, "pid": os.getpid(), "digest": _digest(net)}
    if not (dist.is_available() and dist.is_initialized()):
        return {"world_size": world, "workers": [mine]}
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    return {"world_size": world, "backend": dist.get_backend(), "workers": everyone}


def train_torch(spec: Any, ctx: Any, datasets: dict[str, Any], input_dim: int, n_outputs: int,
                class_weights: list[float] | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Run the TorchTrainer; return (model metadata, final weights, training report)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer
    from safetensors.torch import load as st_load

    params = spec.model.params
    hidden = list(params.get("hidden", [128, 64]))
    config = {
        "task": spec.data.task, "input_dim": input_dim, "n_outputs": n_outputs, "hidden": hidden,
        "dropout": float(params.get("dropout", 0.0)), "weight_decay": float(params.get("weight_decay", 0.0)),
        "lr": spec.train.lr, "epochs": spec.train.epochs, "batch_size": spec.train.batch_size,
        "seed": spec.train.seed, "class_weights": class_weights, "has_validation": "validation" in datasets,
    }
    store = ctx.artifact
    run_config = RunConfig(
        name="ray_train",
        storage_path=store.path(),
        storage_filesystem=None if store.is_local else store.fs,
        failure_config=FailureConfig(max_failures=spec.train.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
    )
    res = dict(spec.train.resources)
    if spec.train.use_gpu:
        res.setdefault("GPU", 1)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=spec.train.workers, use_gpu=spec.train.use_gpu, resources_per_worker=res),
        torch_config=TorchConfig(backend="nccl" if spec.train.use_gpu else "gloo"),
        run_config=run_config,
        datasets=datasets,
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageFailed(
            f"stage 'train' failed: Ray Train gave up after train.max_failures={spec.train.max_failures} "
            f"restart(s): {first}\nEvery committed checkpoint is kept under {store.full_uri('ray_train')}; "
            "raise train.max_failures to survive more worker failures."
        ) from exc
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, CKPT_WEIGHTS), "rb") as f:
            state = st_load(f.read())
        meta_ck = json.load(open(os.path.join(d, CKPT_META)))
    meta = model_meta("torch.mlp", spec.data.task, n_outputs, input_dim=input_dim, hidden=hidden, dropout=config["dropout"])
    report = {"history": meta_ck["history"], "resumes": meta_ck.get("resumes", []),
              "ddp": result.metrics.get("ddp"), "epochs": spec.train.epochs,
              "workers": spec.train.workers}
    return meta, state, report
