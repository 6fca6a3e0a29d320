"""GPU check through Ray Train: raypipe's worker loop in a ``TorchTrainer`` on CUDA.

``use_gpu=True``, the NCCL backend and ``train.precision`` fp32 vs bf16, with the very
``train_loop`` the train stage runs (Ray Data shards, per-epoch checkpoints with their
completion marker, shard cache). The data are generated inside Ray Data: a tabular
set for ``torch.mlp`` and scikit-learn's digits upscaled to 32x32 for ``torch.cnn``.
One GPU here, so one worker (NCCL world size 1). samples/s are the training rows over
the median ``train_s`` of epochs 2.. (the first epoch streams and caches the shard).

Run on a GPU machine with Ray installed (see benchmarks/RESULTS.md for how it got
there); ``--cpu`` checks the script on a machine without a GPU (gloo, tiny data).

    python3 benchmarks/gpu_ray_check.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Only raypipe.train.* is needed, not raypipe/__init__ (the CLI, Serve, pydantic specs ...):
# a shim package whose parts link to the repository's, for this process and Ray's workers.
SHIM = Path(tempfile.gettempdir()) / "raypipe_shim"


def _shim() -> str:
    pkg = SHIM / "raypipe"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for part in ("train", "tune", "errors.py", "store.py"):
        link = pkg / part
        if not link.exists():
            link.symlink_to(ROOT / "raypipe" / part)
    sys.path.insert(0, str(SHIM))
    return str(SHIM)


def tabular(batch: dict[str, np.ndarray], d: int = 64) -> dict[str, np.ndarray]:
    ids = batch["id"].astype(np.float64)
    freqs = np.linspace(0.001, 0.7, d)
    x = np.sin(np.outer(ids, freqs) + np.arange(d)).astype(np.float32)
    y = ((x[:, :8].sum(axis=1) + np.sin(3 * x[:, 8])) > 0).astype(np.int64)
    return {"x": x, "y": y}


def digits32(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    ids = batch["id"]
    img = np.kron(d.images[ids % len(d.images)] / 16.0, np.ones((4, 4)))
    img += 0.1 * np.sin(ids[:, None, None] * 0.37 + np.arange(32)[None, :, None])
    return {"x": img.reshape(len(ids), -1).astype(np.float32), "y": d.target[ids % len(d.images)].astype(np.int64)}


def run(case: str, precision: str, rows: int, epochs: int, use_gpu: bool, storage: str) -> dict:
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raypipe.train import checkpoint as ck
    from raypipe.train.torch_trainer import train_loop

    if case == "torch.mlp":
        fn, d, k, layout, params, bs = tabular, 64, 2, None, {"hidden": [1024, 1024, 512]}, 4096
    else:
        fn, d, k, bs = digits32, 1024, 10, 1024
        layout, params = [{"kind": "image", "start": 0, "stop": d, "shape": [32, 32, 1]}], {"channels": [32, 64, 128], "hidden": [128]}
    train = ray.data.range(rows, override_num_blocks=8).map_batches(fn, batch_format="numpy")
    val = ray.data.range(rows // 10, override_num_blocks=2).map_batches(lambda b: fn({"id": b["id"] + 10**7}), batch_format="numpy")
    config = {"kind": case, "task": "classification", "input_dim": d, "n_outputs": k, "layout": layout, "params": params,
              "weight_decay": 0.0, "lr": 1e-3, "epochs": epochs, "batch_size": bs, "shuffle_buffer": 0,
              "cache_shards_mb": 8192, "seed": 0, "class_weights": None, "has_validation": True, "precision": precision,
              "lr_schedule": "cosine", "warmup_epochs": 0, "lr_step_epochs": 10, "lr_gamma": 0.1, "early_stopping": None}
    result = TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"{case}-{precision}", storage_path=storage),
        datasets={"train": train, "validation": val},
    ).fit()
    with result.checkpoint.as_directory() as folder:
        saved, complete = ck.read(folder), ck.is_complete(folder)
    history = saved["meta"]["history"]
    steady = float(np.median([h["train_s"] for h in history[1:]]))
    return {"model": case, "precision": precision, "rows": rows, "batch_size": bs, "epochs": epochs,
            "samples_per_s": round(rows / steady), "first_epoch_train_s": history[0]["train_s"], "epoch_train_s": round(steady, 3),
            "val_accuracy": round(history[-1]["val_accuracy"], 4), "val_f1": round(history[-1]["val_f1"], 4),
            "ddp": result.metrics.get("ddp"), "checkpoint_complete": complete}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    import ray
    import torch

    use_gpu = not args.cpu
    import os

    shim = _shim()
    path = os.pathsep.join([shim] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    ray.init(num_cpus=4 if args.cpu else 12, num_gpus=0 if args.cpu else 1, include_dashboard=False,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "PYTHONPATH": path}})
    info = {"device": torch.cuda.get_device_name(0) if use_gpu else "cpu (script check)", "torch": torch.__version__,
            "ray": ray.__version__}
    print(info, flush=True)
    rows = {"torch.mlp": 400_000, "torch.cnn": 100_000} if use_gpu else {"torch.mlp": 4000, "torch.cnn": 2000}
    runs = []
    with tempfile.TemporaryDirectory() as storage:
        for case in ("torch.mlp", "torch.cnn"):
            for precision in (("fp32", "bf16") if use_gpu else ("fp32",)):
                runs.append(run(case, precision, rows[case], args.epochs, use_gpu, storage))
                print(runs[-1], flush=True)
    ray.shutdown()
    print(f"\n{'model':10s} {'precision':9s} {'samples/s':>11s} {'val acc':>8s}  backend")
    for r in runs:
        print(f"{r['model']:10s} {r['precision']:9s} {r['samples_per_s']:>11,d} {r['val_accuracy']:>8.4f}  "
              f"{(r['ddp'] or {}).get('backend')}")
    out = {**info, "runs": runs}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gpu_ray_check.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
