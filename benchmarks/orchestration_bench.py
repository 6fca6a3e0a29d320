"""What an orchestrator's task per stage costs against one `raypipe run`.

An Airflow or KFP export runs each stage as its own process (`raypipe run SPEC --only STAGE`): six
drivers, each loading the spec, each connecting to Ray, each importing what its stage needs. One
`raypipe run SPEC --until register` does all six in one process. Both are timed as whole commands on
a fresh storage folder each round, in turn (A B A B ...), and the ratio is taken pair by pair.

Two ways a worker finds Ray: each process starts its own local Ray (`ray: {reuse_local: false}`, a
worker with nothing to join), or every process joins the one Ray `raypipe up` keeps (started here
first with a raypipe home of its own, not timed, and stopped after; what a cluster gives too).

    python benchmarks/orchestration_bench.py [--rounds 3] [--rows 20000] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STAGES = ("ingest", "validate", "features", "train", "evaluate", "register")


def _spec(folder: Path, rows: int, own_ray: bool) -> Path:
    spec = {
        "name": "bench-orchestration", "storage": str(folder / "store"),
        "data": {"source": {"type": "builtin", "name": "transactions", "rows": rows, "seed": 7},
                 "target": "is_fraud", "id_columns": ["transaction_id"]},
        "model": {"kind": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 500}},
        "evaluate": {"gate": {"min": {"roc_auc": 0.6}}},
        "deploy": {"enabled": False},
    }
    if own_ray:
        spec["ray"] = {"reuse_local": False}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _raypipe(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "raypipe", *args], capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        raise SystemExit(f"raypipe {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _one_run(spec: Path) -> float:
    shutil.rmtree(spec.parent / "store", ignore_errors=True)
    t0 = time.perf_counter()
    _raypipe("run", str(spec), "--until", "register", "--json")
    return time.perf_counter() - t0


def _per_stage(spec: Path) -> float:
    shutil.rmtree(spec.parent / "store", ignore_errors=True)
    t0 = time.perf_counter()
    for stage in STAGES:
        _raypipe("run", str(spec), "--only", stage, "--run-key", "bench", "--json")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="rp-orch-") as d:
        folder = Path(d)
        ENV["RAYPIPE_HOME"] = str(folder / "home")  # this benchmark's own `raypipe up` record
        _raypipe("up")
        try:
            for label, own in (("a local Ray per process", True), ("one shared Ray (raypipe up)", False)):
                spec = _spec(folder, args.rows, own)
                _one_run(spec)  # warm-up: the OS page cache, Python's bytecode cache
                one, each = [], []
                for _ in range(args.rounds):
                    one.append(_one_run(spec))
                    each.append(_per_stage(spec))
                ratios = [b / a for a, b in zip(one, each)]
                results[label] = {"one_run_s": one, "per_stage_s": each, "ratio_per_stage_over_one": ratios,
                                  "median_one_run_s": statistics.median(one),
                                  "median_per_stage_s": statistics.median(each),
                                  "median_ratio": statistics.median(ratios)}
        finally:
            _raypipe("down")
    if args.json:
        print(json.dumps({"rows": args.rows, "rounds": args.rounds, "results": results}))
        return
    for label, r in results.items():
        print(f"{label}: one run {r['median_one_run_s']:.1f} s, six --only processes {r['median_per_stage_s']:.1f} s, "
              f"ratio {r['median_ratio']:.2f}x (pairs: {', '.join(f'{x:.2f}' for x in r['ratio_per_stage_over_one'])})")


if __name__ == "__main__":
    main()
