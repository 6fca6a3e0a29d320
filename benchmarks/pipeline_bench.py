"""End-to-end pipeline time: raypipe on a local Ray vs. the script a user would write.

Same data (the built-in transactions, written as parquet), same split fractions, same
features (median impute + standard scale, one-hot), same model
(HistGradientBoostingClassifier). Measured in one process, one after the other:

  (a) plain pandas + scikit-learn: read, split, ColumnTransformer, fit, score test.
  (b) raypipe, cold: `raypipe.run` including `ray.init` (ingest → … → register).
  (c) raypipe, warm Ray: the same pipeline with `force="ingest"` (every stage re-runs).
  (d) raypipe, cached: the same spec again (every stage cached).
  (e) raypipe cold, `raypipe up` running: the same spec (fresh storage: every stage runs)
      in a new Python process joining a background Ray that `raypipe up`'s code started
      before (not timed) and stops after. Its time is measured inside the child, from
      before `raypipe.run` to after, like (b); the child's whole wall time, imports
      included, is printed beside it.
  (e') the same two as whole processes: the script run as `python` in a new process (its imports
      of pandas and scikit-learn included) against (e)'s child's whole wall time (its imports
      included): what `time python script.py` and `time raypipe run` compare.

Prints a table, the warm run's seconds and Ray Data executions per stage
(``raypipe.executions``) and, last, one JSON line. Not a test: timings depend on the machine.

    .venv/bin/python benchmarks/pipeline_bench.py --rows 200000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MODEL = {"kind": "sklearn:sklearn.ensemble:HistGradientBoostingClassifier", "params": {"max_iter": 100}}


def baseline(path: Path) -> tuple[float, float]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    t0 = time.perf_counter()
    df = pd.read_parquet(path)
    y = df.pop("is_fraud")
    df = df.drop(columns=["transaction_id"])
    x_rest, x_test, y_rest, y_test = train_test_split(df, y, test_size=0.15, stratify=y, random_state=42)
    x_train, _, y_train, _ = train_test_split(x_rest, y_rest, test_size=0.15 / 0.85, stratify=y_rest, random_state=42)
    cat = ["merchant_category", "country", "device"]
    num = [c for c in df.columns if c not in cat]
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
        ("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=33), cat),
    ])
    model = make_pipeline(pre, HistGradientBoostingClassifier(max_iter=100, random_state=0))
    model.fit(x_train, y_train)
    auc = roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])
    return time.perf_counter() - t0, float(auc)


TRAIN_CPUS: float | None = None  # --train-cpus: train.resources.CPU of the scikit-learn fit (default: raypipe's)
SMALL_DATA = "auto"  # --small-data: ray.small_data


def _spec(path: Path, storage: Path) -> dict:
    return {"name": "bench", "storage": str(storage),
            "data": {"source": {"type": "parquet", "path": str(path)}, "target": "is_fraud",
                     "id_columns": ["transaction_id"]},
            "model": MODEL, "deploy": {"enabled": False}, "ray": {"small_data": SMALL_DATA},
            **({"train": {"resources": {"CPU": TRAIN_CPUS}}} if TRAIN_CPUS is not None else {})}


def raypipe_runs(path: Path, storage: Path) -> dict[str, tuple[float, float]]:
    import raypipe
    from raypipe import executions
    from raypipe.progress import Progress

    spec = raypipe.load_spec(_spec(path, storage))
    out = {}
    for label, force in (("cold", None), ("warm", "ingest"), ("cached", None)):
        t0 = time.perf_counter()
        with executions.recording() as seen:
            result = raypipe.run(spec, force=force, progress=Progress(quiet=True))
        out[label] = (time.perf_counter() - t0, float(result.metrics["roc_auc"]))
        out[label + "_stages"] = {s["name"]: s["seconds"] for s in result.stages}
        out[label + "_executions"] = executions.per_stage(seen)  # Ray Data executions per stage
    return out


def baseline_process(path: Path) -> float:
    """(e'): the script's whole wall time as a new process, interpreter and imports included."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import pipeline_bench as b; "
            f"b.baseline(__import__('pathlib').Path({str(path)!r}))")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def child_run(spec: dict) -> None:
    """(e), inside the child: one `raypipe.run`, timed from just before it to just after."""
    import raypipe
    from raypipe.progress import Progress

    s = raypipe.load_spec(spec)
    t0 = time.perf_counter()
    result = raypipe.run(s, progress=Progress(quiet=True))
    print(json.dumps({"s": time.perf_counter() - t0, "roc_auc": float(result.metrics["roc_auc"])}))


def kept_run(path: Path, storage: Path) -> tuple[float, float, float]:
    """(e): (seconds inside the child, its roc_auc, the child's whole wall time)."""
    from raypipe import localray, runtime

    runtime.shutdown()  # (b)-(d)'s in-process Ray would compete for the two cores
    localray.up()
    try:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(_spec(path, storage))],
                             capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - t0
    finally:
        localray.down()
    got = json.loads(out.strip().splitlines()[-1])
    return got["s"], got["roc_auc"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--train-cpus", type=float, default=None, help="train.resources.CPU of the fit (default: "
                    "raypipe's: a fit in the driver uses every core, as the script's does; a fit in a Ray task 1 CPU)")
    ap.add_argument("--small-data", choices=["auto", "driver", "tasks"], default="auto",
                    help="ray.small_data: where the stages' small-data work runs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global TRAIN_CPUS, SMALL_DATA
    TRAIN_CPUS, SMALL_DATA = args.train_cpus, args.small_data
    if args.child:
        return child_run(json.loads(args.child))
    from raypipe.ingest.builtin.transactions import generate_transactions

    # A private raypipe home: (b)-(d) must start their own Ray even if the user's `raypipe up` runs.
    os.environ["RAYPIPE_HOME"] = tempfile.mkdtemp(prefix="rp-bench-home-")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "transactions.parquet"
        generate_transactions(args.rows, seed=7).to_parquet(path)
        base_s, base_auc = baseline(path)
        runs = raypipe_runs(path, Path(tmp) / "store")
        kept_s, kept_auc, kept_wall = kept_run(path, Path(tmp) / "store-kept")
        base_wall = baseline_process(path)
        runs["cold, `raypipe up` running"] = (kept_s, kept_auc)
    rows = [("pandas + scikit-learn, one process", base_s, base_auc)]
    runs_only = {k: v for k, v in runs.items() if not k.endswith(("_stages", "_executions"))}
    rows += [(f"raypipe {k}", v[0], v[1]) for k, v in runs_only.items()]
    print(f"{args.rows:,} rows, {MODEL['kind']}, ray.small_data: {SMALL_DATA}, train CPUs: {TRAIN_CPUS or 'default'}")
    print(f"{'setup':40s} {'seconds':>8s} {'ratio':>6s} {'roc_auc':>8s}")
    for name, s, auc in rows:
        print(f"{name:40s} {s:8.1f} {s / base_s:6.2f} {auc:8.4f}")
    print(f"(raypipe cold with `raypipe up` running: the child process's whole wall time, imports included, "
          f"{kept_wall:.1f} s)")
    print(f"(e') whole processes: the script {base_wall:.1f} s, raypipe {kept_wall:.1f} s: "
          f"ratio {kept_wall / base_wall:.2f}")
    print("raypipe warm, per stage:", runs["warm_stages"])
    print("raypipe warm, Ray Data executions per stage:", runs["warm_executions"])
    key = {"cold, `raypipe up` running": "cold_up"}
    print(json.dumps({
        "bench": "pipeline", "rows": args.rows, "baseline_s": round(base_s, 2), "baseline_roc_auc": round(base_auc, 4),
        **{f"raypipe_{key.get(k, k)}_s": round(v[0], 2) for k, v in runs_only.items()},
        **{f"ratio_{key.get(k, k)}": round(v[0] / base_s, 2) for k, v in runs_only.items()},
        "raypipe_cold_up_child_wall_s": round(kept_wall, 2), "baseline_process_wall_s": round(base_wall, 2),
        "ratio_process_wall": round(kept_wall / base_wall, 2),
        "raypipe_roc_auc": round(runs["warm"][1], 4), "warm_stages": runs["warm_stages"],
        "warm_executions": runs["warm_executions"],
        "small_data": SMALL_DATA, "train_cpus": TRAIN_CPUS, "cpus": __import__("os").cpu_count(), "numpy": np.__version__,
    }))


if __name__ == "__main__":
    main()
