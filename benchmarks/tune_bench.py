"""Ray Tune through raypipe: a 16-configuration space, full-budget search vs ASHA.

The same space (4 learning rates x 4 MLP shapes, a grid), data (scikit-learn's bundled
digits, 10 classes), epochs and seed, run twice through raypipe's train stage:

  (a) ``scheduler: fifo``: every trial trains all epochs (the full search);
  (b) ``scheduler: asha`` (grace period 1, reduction factor 3): poor trials stop early.

Reports each search's trial-epochs as Tune counts them (results reported, summed over
trials), the epochs the workers actually trained (complete checkpoints on disk: one per
epoch, so epochs trained past a "stop" would show), its best validation macro-F1 and
wall time. Target (issue 4): ASHA within 1 % of the full
search's best score with at most 30 % of its trial-epochs. Prints a table and, last,
one JSON line. Not a test: timings depend on the machine.

    .venv/bin/python benchmarks/tune_bench.py [--epochs 16] [--reduction-factor 3]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

LRS = [3e-4, 1e-3, 3e-3, 1e-2]
SHAPES = [[8], [32], [64, 32], [128, 64]]


def spec(storage: Path, scheduler: str, epochs: int, rf: float) -> dict[str, Any]:
    return {
        "name": "tune-bench", "storage": str(storage),
        "data": {"source": {"type": "builtin", "name": "digits"}, "target": "target"},
        "model": {"kind": "torch.mlp"},
        "train": {"workers": 1, "epochs": epochs, "batch_size": 64, "seed": 0, "max_failures": 0},
        "tune": {"space": {"train.lr": {"grid": LRS}, "model.params.hidden": {"grid": SHAPES}}, "num_samples": 1,
                 "scheduler": scheduler, "grace_period": 1, "reduction_factor": rf, "max_concurrent_trials": 2},
        "deploy": {"enabled": False},
    }


def trained_epochs(storage: Path, trial_ids: list[str]) -> int:
    """Complete checkpoints written by the trials: one per epoch trained (a one-process trial's are in its Tune
    trial folder, a TorchTrainer trial's in its Ray Train run)."""
    work = storage / "work" / "tune" / "*"
    return sum(len(glob.glob(str(work / "train" / t / "*" / "_COMPLETE.json")))
               + len(glob.glob(str(work / "tune" / f"*{t}*" / "checkpoint_*" / "_COMPLETE.json"))) for t in trial_ids)


def search(storage: Path, scheduler: str, epochs: int, rf: float) -> dict[str, Any]:
    import raypipe
    from raypipe.progress import Progress

    t0 = time.perf_counter()
    result = raypipe.run(spec(storage, scheduler, epochs, rf), until="train", progress=Progress(quiet=True))
    train_s = next(s["seconds"] for s in result.stages if s["name"] == "train")
    table = result.outputs["train"].store.read_json("tune_trials.json")
    tune = result.outputs["train"].outputs.tune
    return {"scheduler": scheduler, "trials": len(table["trials"]), "trial_epochs": table["trial_epochs"],
            "epochs_trained": trained_epochs(storage, [r["trial_id"] for r in table["trials"]]),
            "epochs_by_trial": sorted(r["epochs"] for r in table["trials"]),
            "best_val_f1": tune["best_score"], "best_config": tune["best_config"], "train_stage_s": round(train_s, 1),
            "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--reduction-factor", type=float, default=3)
    args = ap.parse_args()
    from raypipe.runtime import connect

    import ray

    with tempfile.TemporaryDirectory(dir="/tmp", ignore_cleanup_errors=True) as tmp:
        connect(temp_dir=str(Path(tmp) / "ray"))
        storage = Path(tmp) / "store"
        full = search(storage, "fifo", args.epochs, args.reduction_factor)
        print("full search:", json.dumps(full), flush=True)
        asha = search(storage, "asha", args.epochs, args.reduction_factor)
        print("ASHA:", json.dumps(asha), flush=True)
        ray.shutdown()
    budget = asha["epochs_trained"] / full["epochs_trained"]
    gap = (full["best_val_f1"] - asha["best_val_f1"]) / full["best_val_f1"]
    print(f"\n16 configurations, digits, {args.epochs} epochs each at most, {os.cpu_count()} cores")
    print(f"{'search':12s} {'trials':>6s} {'trial-epochs':>13s} {'trained':>8s} {'best val F1':>12s} {'train stage s':>14s}")
    for r in (full, asha):
        print(f"{r['scheduler']:12s} {r['trials']:>6d} {r['trial_epochs']:>13d} {r['epochs_trained']:>8d} "
              f"{r['best_val_f1']:>12.4f} {r['train_stage_s']:>14.1f}")
    print(f"ASHA (reduction factor {args.reduction_factor:g}): {budget:.0%} of the full search's trained epochs, "
          f"best score {gap:+.2%} below it "
          f"(target: <= 30 % and within 1 %: {'met' if budget <= 0.30 and gap <= 0.01 else 'not met'})")
    print(json.dumps({"bench": "tune", "epochs": args.epochs, "reduction_factor": args.reduction_factor,
                      "full": full, "asha": asha,
                      "epoch_fraction": round(budget, 3), "score_gap": round(gap, 4),
                      "target_met": budget <= 0.30 and gap <= 0.01}))


if __name__ == "__main__":
    main()
