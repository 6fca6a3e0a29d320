"""GPU check through Ray itself: a pipeline trained on CUDA, then ``raypipe predict`` on a GPU actor.

The built-in transactions, ``torch.mlp``, ``train.use_gpu: true``: the whole pipeline
through ``raypipe.run`` (Ray Train: one worker holding the GPU, NCCL), then
``raypipe.predict`` over ``--rows`` rows of new data twice with the registered version:

- ``use_gpu: true``: one Ray Data actor per GPU (``num_gpus=1``), the model on CUDA
  (the actor refuses to start where CUDA is missing, so a finished run proves the GPU path);
- ``use_gpu: false``: ``raypipe predict``'s default two CPU actors.

Reported: each stage's seconds, each predict's seconds and rows/s (start-up of the
actors included), the share of equal predictions and the largest score difference
between the two. Last line: one JSON object.

    python3 benchmarks/gpu_batch_check.py [--rows 1000000] [--train-rows 200000] [--out DIR]
    python3 benchmarks/gpu_batch_check.py --cpu --rows 20000 --train-rows 20000   # the script itself, no GPU
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def spec_dict(storage: Path, train_rows: int, use_gpu: bool) -> dict:
    return {
        "name": "gpu-check", "storage": str(storage),
        "data": {"source": {"type": "builtin", "name": "transactions", "rows": train_rows, "seed": 7},
                 "target": "is_fraud", "id_columns": ["transaction_id"]},
        "features": {"numeric": {"impute": "median", "scale": "standard"},
                     "categorical": {"encode": "onehot", "max_categories": 16}},
        "model": {"kind": "torch.mlp", "params": {"hidden": [256, 128]}},
        "train": {"workers": 1, "epochs": 4, "batch_size": 1024, "lr": 0.002, "use_gpu": use_gpu},
        "evaluate": {"gate": {"min": {"roc_auc": 0.5}}},
        "deploy": {"enabled": False},
    }


def write_input(path: Path, rows: int) -> None:
    """New rows (another seed than training) as 8 parquet files, without the label."""
    from raypipe.ingest.builtin.transactions import generate_transactions

    path.mkdir(parents=True)
    frame = generate_transactions(rows, seed=11).drop(columns=["is_fraud"])
    for i, part in enumerate(np.array_split(np.arange(rows), 8)):
        frame.iloc[part].to_parquet(path / f"part-{i}.parquet", index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--cpu", action="store_true", help="no GPU: train and predict on CPUs (checks the script)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON result")
    args = ap.parse_args()

    import ray

    import raypipe
    from raypipe.progress import Progress

    tmp = Path(tempfile.mkdtemp(prefix="rp-gpu-"))
    gpu = not args.cpu
    spec = raypipe.load_spec(spec_dict(tmp / "store", args.train_rows, use_gpu=gpu))
    t0 = time.perf_counter()
    result = raypipe.run(spec, progress=Progress(quiet=True))
    run_s = time.perf_counter() - t0
    stages = {s["name"]: round(s["seconds"], 2) for s in result.stages}
    print(f"pipeline ({'GPU' if gpu else 'CPU'} training): {run_s:.1f} s {stages}; "
          f"cluster {ray.cluster_resources()}", flush=True)

    src = tmp / "input"
    write_input(src, args.rows)
    out: dict = {"bench": "gpu_batch", "rows": args.rows, "train_rows": args.train_rows, "gpu": gpu,
                 "stages_s": stages, "pipeline_s": round(run_s, 2),
                 "test_metrics": {k: round(v, 4) for k, v in result.outputs["evaluate"].outputs.metrics.items()
                                  if isinstance(v, float)}}
    if gpu:
        import torch

        out["device"] = torch.cuda.get_device_name(0)
    preds = {}
    for name, use_gpu in (("gpu", gpu), ("cpu", False)):
        s = spec.model_copy(update={"train": spec.train.model_copy(update={"use_gpu": use_gpu})})
        summary = raypipe.predict(s, str(src), str(tmp / f"pred-{name}"))
        assert summary["rows"] == args.rows, summary
        out[f"predict_{name}_s"] = summary["seconds"]
        out[f"predict_{name}_rows_per_s"] = round(args.rows / summary["seconds"])
        print(f"predict ({name}, use_gpu={use_gpu}): {summary['seconds']:.1f} s, "
              f"{args.rows / summary['seconds']:,.0f} rows/s", flush=True)
        preds[name] = pd.read_parquet(tmp / f"pred-{name}").sort_values("transaction_id").reset_index(drop=True)
    a, b = preds["gpu"], preds["cpu"]
    out["same_prediction"] = float((a["prediction"] == b["prediction"]).mean())
    out["max_abs_score_diff"] = float(np.abs(a["score_1"].to_numpy() - b["score_1"].to_numpy()).max())
    print(f"GPU vs CPU actors: {out['same_prediction']:.4%} equal predictions, "
          f"max |score difference| {out['max_abs_score_diff']:.2e}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_batch_check.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
