"""Epoch time of raypipe's Ray Train path vs. plain PyTorch DDP, same MLP, data and epochs.

  (a) plain PyTorch DDP: 2 processes (torch.multiprocessing), gloo, DistributedSampler
      over in-memory tensors, one thread each; every epoch a validation pass and a
      rank-0 checkpoint, as raypipe does.
  (b) raypipe: the train stage on the Ray Train path (`train.distributed: always`:
      `TorchTrainer`, 2 workers with 1 CPU each; the splits transformed by the fitted
      features and materialised, each rank reading its rows from their blocks).
  (c) Ray Train's own floor, in the same Ray as (b): a `TorchTrainer` with the same 2
      workers whose loop returns at once (no data, no model), and one whose loop only
      wraps a one-layer model in DDP (``torch.nn.parallel.DistributedDataParallel``).
      Beside them, (b)'s fixed cost: the short stage minus its epochs.

Both train on the same rows (the validated train split of the built-in transactions,
transformed by the same fitted feature pipeline), same MLP, batch size, optimiser and
learning rate. Steady-state epoch time, the median over epochs 2..E-1, timed inside
rank 0 in both: (a) training + validation + checkpoint; (b) the same from the train
report (``train_s + val_s`` of the epoch, plus the checkpoint write and
``ray.train.report`` the next record carries). The whole-stage difference
``(T(E_long) - T(E_short)) / (E_long - E_short)`` is printed too (it includes Ray's
per-run costs that grow with epochs, but is noisy). Ray's own release test fails above
a ratio of 1.15.

Prints a table and, last, one JSON line. Not a test: timings depend on the machine.

    .venv/bin/python benchmarks/train_bench.py --rows 200000
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN, BATCH, LR, WORKERS = [64, 32], 512, 0.002, 2


def _spec(storage: Path, rows: int, epochs: int) -> dict[str, Any]:
    return {
        "name": "train-bench", "storage": str(storage),
        "data": {"source": {"type": "builtin", "name": "transactions", "rows": rows, "seed": 7},
                 "target": "is_fraud", "id_columns": ["transaction_id"]},
        "features": {"balance": "none"},
        "model": {"kind": "torch.mlp", "params": {"hidden": HIDDEN}},
        "train": {"workers": WORKERS, "epochs": epochs, "batch_size": BATCH, "lr": LR, "max_failures": 0,
                  "distributed": "always"},  # the Ray Train path (auto would train in one process: too small)
        "deploy": {"enabled": False},
    }


def raypipe_epochs(storage: Path, rows: int, short: int, long: int) -> dict[str, Any]:
    import raypipe
    from raypipe.progress import Progress

    quiet = Progress(quiet=True)
    first = raypipe.run(_spec(storage, rows, short), until="train", progress=quiet)  # cold: ray.init, ingest, ...
    times = {}
    for epochs in (short, long):
        result = raypipe.run(_spec(storage, rows, epochs), until="train", force="train", progress=quiet)
        times[epochs] = next(s["seconds"] for s in result.stages if s["name"] == "train")
        report = result.outputs["train"].store.read_json("train_report.json")
    h = report["history"]
    epochs = [h[i]["train_s"] + h[i]["val_s"] + h[i + 1]["ckpt_s"] + h[i + 1]["report_s"] for i in range(1, len(h) - 1)]
    return {"first": first, "train_s": times, "epoch_s": float(np.median(epochs)), "epoch_times": epochs,
            "stage_diff_epoch_s": (times[long] - times[short]) / (long - short), "val_loss": h[-1].get("val_loss")}


def _empty_loop(config: dict[str, Any]) -> None:
    if config.get("ddp"):
        import torch
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel(torch.nn.Linear(4, 1))


def ray_train_floor(storage: Path, ddp: bool, runs: int = 2) -> list[float]:
    """(c): the wall time of ``TorchTrainer.fit()`` for a loop that does nothing (or only wraps a model in DDP)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        TorchTrainer(_empty_loop, train_loop_config={"ddp": ddp}, scaling_config=ScalingConfig(num_workers=WORKERS),
                     run_config=RunConfig(storage_path=str(storage), name=f"floor-{int(ddp)}-{i}")).fit()
        out.append(time.perf_counter() - t0)
    return out


def arrays(first: Any) -> dict[str, np.ndarray]:
    """The validated train/validation splits through the fitted feature pipeline, as raypipe trains on them."""
    import pyarrow.dataset as pads

    from raypipe.model.features.pipeline import FeaturePipeline
    from raypipe.tasks import TASKS

    val, feats = first.outputs["validate"], first.outputs["features"]
    schema = val.store.read_json(val.outputs.schema)
    pipeline = FeaturePipeline.from_dict(feats.store.read_json(feats.outputs.features))
    out = {}
    for split in ("train", "validation"):
        df = pads.dataset(val.store.path(val.outputs.splits[split]), format="parquet").to_table().to_pandas()
        out[f"x_{split}"] = pipeline.transform(df)
        out[f"y_{split}"] = TASKS["classification"].encode_labels(df[schema["target"]["name"]], schema["target"]["classes"])
    return out


def _ddp_worker(rank: int, world: int, data: dict[str, np.ndarray], epochs: int, port: int, ckpt_dir: str, q: Any) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from raypipe.model.formats import build_mlp

    torch.set_num_threads(1)  # as a 1-CPU Ray Train worker (OMP_NUM_THREADS=1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    xv, yv = torch.from_numpy(data["x_validation"]), torch.from_numpy(data["y_validation"])
    train = TensorDataset(x, y)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=False)
    loader = DataLoader(train, batch_size=BATCH, sampler=sampler)
    val_loader = DataLoader(TensorDataset(xv, yv), batch_size=BATCH,
                            sampler=DistributedSampler(TensorDataset(xv, yv), num_replicas=world, rank=rank, shuffle=False))
    net = build_mlp(x.shape[1], HIDDEN, 2)
    model = DistributedDataParallel(net)
    optim = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    times, val_loss = [], None
    for epoch in range(epochs):
        dist.barrier()
        t0 = time.perf_counter()
        model.train()
        for xb, yb in loader:
            optim.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optim.step()
        model.eval()
        tot = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for xb, yb in val_loader:
                tot += torch.tensor([float(loss_fn(model(xb), yb)) * len(yb), len(yb)], dtype=torch.float64)
        dist.all_reduce(tot)
        val_loss = float(tot[0] / tot[1])
        if rank == 0:
            torch.save(net.state_dict(), os.path.join(ckpt_dir, f"epoch-{epoch}.pt"))
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        q.put({"epoch_times": times, "val_loss": val_loss})
    dist.destroy_process_group()


def plain_ddp_epochs(data: dict[str, np.ndarray], epochs: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as ckpt:
        mp.start_processes(_ddp_worker, args=(WORKERS, data, epochs, port, ckpt, q), nprocs=WORKERS,
                           start_method="spawn", join=True)
        out = q.get()
    steady = out["epoch_times"][1:]  # the first epoch warms up allocators and gloo
    return {"epoch_s": float(np.median(steady)), "epoch_times": out["epoch_times"], "val_loss": out["val_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--short", type=int, default=2)
    ap.add_argument("--long", type=int, default=6)
    args = ap.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        b = raypipe_epochs(Path(tmp) / "store", args.rows, args.short, args.long)
        floor = ray_train_floor(Path(tmp) / "floor", ddp=False)
        floor_ddp = ray_train_floor(Path(tmp) / "floor", ddp=True)
        data = arrays(b["first"])
        ray.shutdown()  # plain DDP gets the whole machine, as a user's script would
        a = plain_ddp_epochs(data, args.long)
    ratio = b["epoch_s"] / a["epoch_s"]
    n_train = len(data["y_train"])
    print(f"{args.rows:,} rows ({n_train:,} train), MLP {HIDDEN}, batch {BATCH}, {WORKERS} workers, CPU")
    print(f"{'setup':44s} {'s/epoch':>8s} {'ratio':>6s} {'val_loss':>9s}")
    print(f"{'(a) plain PyTorch DDP, 2 processes':44s} {a['epoch_s']:8.2f} {1.0:6.2f} {a['val_loss']:9.4f}")
    print(f"{'(b) raypipe TorchTrainer, 2 workers':44s} {b['epoch_s']:8.2f} {ratio:6.2f} {b['val_loss']:9.4f}")
    print(f"raypipe train stage: {b['train_s']} s for {args.short} and {args.long} epochs "
          f"(difference per epoch {b['stage_diff_epoch_s']:.2f} s); raypipe epochs: "
          + ", ".join(f"{t:.2f}" for t in b["epoch_times"]) + "; plain epochs: " + ", ".join(f"{t:.2f}" for t in a["epoch_times"]))
    fixed = b["train_s"][args.short] - args.short * b["epoch_s"]
    print(f"fixed cost: raypipe's {args.short}-epoch stage minus its epochs {fixed:.1f} s; Ray Train's floor "
          f"(an empty loop) {', '.join(f'{t:.1f}' for t in floor)} s; with DDP wrapping a model "
          f"{', '.join(f'{t:.1f}' for t in floor_ddp)} s")
    print(json.dumps({
        "bench": "train", "rows": args.rows, "train_rows": n_train, "plain_epoch_s": round(a["epoch_s"], 3),
        "raypipe_epoch_s": round(b["epoch_s"], 3), "ratio": round(ratio, 3),
        "raypipe_train_stage_s": b["train_s"], "stage_diff_epoch_s": round(b["stage_diff_epoch_s"], 3), "plain_val_loss": round(a["val_loss"], 5),
        "raypipe_val_loss": b["val_loss"], "raypipe_fixed_s": round(fixed, 2),
        "ray_train_floor_s": [round(t, 2) for t in floor], "ray_train_floor_ddp_s": [round(t, 2) for t in floor_ddp],
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
