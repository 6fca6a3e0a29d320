"""Drift detection on 1M rows x (20 numeric + 2 categorical): raypipe vs Evidently vs a numpy floor.

A reference and a window of 1,000,000 rows each (the window has 5 numeric columns moved by half
a standard deviation and one categorical column's mix changed), as parquet (the window as 8
files, as a window of the prediction log or an export arrives). One run:

  (a) numpy floor: PSI per column with the reference's ten quantile bins computed beforehand
      (np.searchsorted + np.bincount on the window's in-memory arrays; categorical columns by
      pandas ``value_counts``). Nothing but the arithmetic.
  (b) Evidently's ``DataDriftPreset(method="psi", threshold=0.1)`` on the same two in-memory
      pandas frames, in its own venv (``python3.11 -m venv /tmp/evvenv && /tmp/evvenv/bin/pip
      install evidently pandas``), run as a subprocess that reports its own timing and memory.
  (c) raypipe: the monitor's per-block counts over Ray Data, read from the window's parquet
      file (the read is counted), merged on the driver, decided (threshold 0.1). The reference
      side (the training profile with its bins) is computed beforehand, as a registered version
      carries it. Ray's start-up is reported apart and not counted; the figure is the median of
      passes 3-5 (a warm Ray, as a monitor that runs every few minutes has), the first and second
      passes (worker processes starting and importing) are printed too.
  (c') the same block function in this process on the in-memory frame (one block, no Ray):
      raypipe's arithmetic against the floor's.

Each case's driver memory is its process's peak RSS (the parts run in separate processes).
Prints a table and, last, one JSON line.

    .venv/bin/python benchmarks/drift_bench.py                 # 1M rows
    .venv/bin/python benchmarks/drift_bench.py --rows 200000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's raypipe, not an installed one

N_NUM = 20
NUM = [f"x{i}" for i in range(N_NUM)]
CAT = ["region", "channel"]
SHIFTED = {"x0", "x1", "x2", "x3", "x4", "region"}
THRESHOLD = 0.1
EVIDENTLY_PY = os.environ.get("EVIDENTLY_PYTHON", "/tmp/evvenv/bin/python")


def _frame(rows: int, seed: int, shift: bool) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for i, c in enumerate(NUM):
        x = rng.normal(0.0, 1.0, rows) if i % 2 == 0 else rng.lognormal(0.0, 0.5, rows)
        if shift and c in SHIFTED:
            x = x + 0.5 * x.std()
        cols[c] = x
    regions = np.array(["north", "south", "east", "west", "centre"], dtype=object)
    p = [0.1, 0.1, 0.2, 0.3, 0.3] if shift else [0.3, 0.3, 0.2, 0.1, 0.1]
    cols["region"] = regions[rng.choice(5, rows, p=p)]
    cols["channel"] = np.array(["web", "store", "phone"], dtype=object)[rng.choice(3, rows, p=[0.5, 0.4, 0.1])]
    return pd.DataFrame(cols)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- (a) the floor -----------------------------------------------------------------------------
def _psi(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.maximum(p / p.sum(), 1e-4), np.maximum(q / q.sum(), 1e-4)
    return float(np.sum((q - p) * np.log(q / p)))


def floor(ref: Any, win: Any) -> dict[str, Any]:
    edges = {c: np.unique(np.quantile(ref[c].to_numpy(), np.arange(1, 10) / 10)) for c in NUM}  # precomputed
    ref_counts = {c: np.bincount(np.searchsorted(edges[c], ref[c].to_numpy(), side="right"), minlength=len(edges[c]) + 1)
                  for c in NUM}
    ref_cats = {c: ref[c].value_counts() for c in CAT}
    t0 = time.perf_counter()
    values = {}
    for c in NUM:
        counts = np.bincount(np.searchsorted(edges[c], win[c].to_numpy(), side="right"), minlength=len(edges[c]) + 1)
        values[c] = _psi(ref_counts[c].astype(float), counts.astype(float))
    for c in CAT:
        vc = win[c].value_counts().reindex(ref_cats[c].index, fill_value=0)
        values[c] = _psi(ref_cats[c].to_numpy(dtype=float), vc.to_numpy(dtype=float))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "drifted": sorted(c for c, v in values.items() if v > THRESHOLD)}


# --- (b) Evidently, in its own interpreter ------------------------------------------------------
EVIDENTLY_SCRIPT = r'''
import json, resource, sys, time
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
t0 = time.perf_counter()
snapshot = Report([DataDriftPreset(method="psi", threshold=float(sys.argv[3]))]).run(current_data=cur, reference_data=ref)
doc = snapshot.dict()
seconds = time.perf_counter() - t0
drifted = []
for m in doc["metrics"]:
    name = str(m.get("metric_name", ""))
    if name.startswith("ValueDrift(") and isinstance(m.get("value"), (int, float)) and m["value"] > float(sys.argv[3]):
        drifted.append(name.split("column=", 1)[1].split(",", 1)[0].rstrip(")"))
import evidently
print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "drifted": sorted(drifted), "version": evidently.__version__}))
'''


def evidently(ref_path: Path, win_path: Path) -> dict[str, Any]:
    if not Path(EVIDENTLY_PY).exists():
        return {"error": f"{EVIDENTLY_PY} not found: python3.11 -m venv /tmp/evvenv && /tmp/evvenv/bin/pip install evidently pandas"}
    proc = subprocess.run([EVIDENTLY_PY, "-c", EVIDENTLY_SCRIPT, str(ref_path), str(win_path), str(THRESHOLD)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- (c) raypipe ----------------------------------------------------------------------------------
def _plan(ref: Any) -> dict[str, Any]:
    """The reference as a registered version carries it: the validate stage's profile with its bins."""
    import pyarrow as pa

    from raypipe.monitor.reference import Reference, build_plan
    from raypipe.schema import infer_schema
    from raypipe.validate.profile import block_profile, finish, merge_profiles

    schema = infer_schema(pa.Schema.from_pandas(ref, preserve_index=False), target=None, task="clustering",
                          id_columns=[])
    step = -(-len(ref) // 8)
    profile = finish(merge_profiles([block_profile(ref.iloc[i:i + step], schema) for i in range(0, len(ref), step)]))
    preds = {"task": "clustering", "classes": None, "answer": None, "score": None, "calibration": None}
    return build_plan(Reference("bench", 1, schema, profile, preds, ref.head(0), {}, {}, "", 0.5))


def _decide(plan: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    from raypipe.monitor.drift import decide_column
    from raypipe.spec import DriftSection

    cfg = DriftSection(threshold=THRESHOLD)
    return sorted(c for c, part in doc["columns"].items()
                  if decide_column(c, plan["columns"][c], part, doc["valid"], cfg, True)["drifted"])


def raypipe_part(ref_path: Path, win_path: Path) -> dict[str, Any]:
    import pandas as pd

    from raypipe.monitor.window import block_counts, count_window
    from raypipe.runtime import connect

    plan = json.loads((ref_path.parent / "plan.json").read_text())  # what the registered version carries
    t0 = time.perf_counter()
    connect(num_cpus=os.cpu_count(), temp_dir=tempfile.mkdtemp(prefix="rp-drift-bench-"))
    start = time.perf_counter() - t0
    import ray.data

    runs = []
    for _ in range(5):  # the first passes start and warm Ray Data's workers (processes, imports)
        t0 = time.perf_counter()
        doc, _, _ = count_window(ray.data.read_parquet(str(win_path)), plan)
        drifted = _decide(plan, doc)
        runs.append(time.perf_counter() - t0)
    rss = _rss_mb()
    win = pd.read_parquet(win_path)
    t0 = time.perf_counter()
    one = _decide(plan, block_counts(win, plan)[0])
    inproc = time.perf_counter() - t0
    return {"seconds": float(np.median(runs[2:])), "first_seconds": runs[0], "second_seconds": runs[1],
            "ray_start_s": start, "rss_mb": rss, "drifted": drifted,
            "blocks_inprocess_seconds": inproc, "inprocess_drifted": one}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--part", choices=["raypipe", "floor"], default=None)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    if args.part:
        import pandas as pd

        d = args.dir
        if args.part == "raypipe":
            out = raypipe_part(d / "reference.parquet", d / "window.parquet")
        else:
            ref, win = pd.read_parquet(d / "reference.parquet"), pd.read_parquet(d / "window.parquet")
            out = {**floor(ref, win), "rss_mb": _rss_mb()}
        print(json.dumps(out))
        return
    d = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    reference = _frame(args.rows, 1, False)
    reference.to_parquet(d / "reference.parquet", index=False)
    (d / "plan.json").write_text(json.dumps(_plan(reference)))
    del reference
    window = _frame(args.rows, 2, True)  # a window arrives as several files (log parts, exports): 8 here
    (d / "window.parquet").mkdir()
    step = -(-args.rows // 8)
    for i in range(8):
        window.iloc[i * step:(i + 1) * step].to_parquet(d / "window.parquet" / f"part-{i}.parquet", index=False)
    del window

    def part(name: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, __file__, "--part", name, "--dir", str(d)], capture_output=True,
                              text=True, timeout=3600, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        if proc.returncode:
            return {"error": proc.stderr[-2000:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = {"floor": part("floor"), "evidently": evidently(d / "reference.parquet", d / "window.parquet"),
               "raypipe": part("raypipe")}
    expected = sorted(SHIFTED)
    print(f"{args.rows:,} rows x {N_NUM} numeric + {len(CAT)} categorical; shifted: {expected}")
    print(f"{'case':<40}{'seconds':>10}{'driver MB':>12}  drifted = shifted?")
    for name, label in (("floor", "(a) numpy floor, precomputed bins"), ("evidently", "(b) Evidently DataDriftPreset(psi)"),
                        ("raypipe", "(c) raypipe, Ray Data from parquet")):
        r = results[name]
        if "error" in r:
            print(f"{label:<40} error: {r['error'][-300:]}")
            continue
        print(f"{label:<40}{r['seconds']:>10.2f}{r.get('rss_mb', float('nan')):>12.0f}  {r['drifted'] == expected}")
    rp = results["raypipe"]
    if "error" not in rp:
        print(f"{'(c) first pass of a fresh Ray':<40}{rp['first_seconds']:>10.2f}   (Ray start {rp['ray_start_s']:.1f} s, not counted)")
        print(f"{'(c) second pass':<40}{rp['second_seconds']:>10.2f}")
        print(f"{'(c′) raypipe block counts in process':<40}{rp['blocks_inprocess_seconds']:>10.2f}")
    summary: dict[str, Any] = {"rows": args.rows, "shifted": expected,
                               **{f"{k}_seconds": v.get("seconds") for k, v in results.items()},
                               **{f"{k}_driver_mb": v.get("rss_mb") for k, v in results.items()},
                               **{f"{k}_same_columns": v.get("drifted") == expected for k, v in results.items()},
                               "raypipe_inprocess_seconds": rp.get("blocks_inprocess_seconds"),
                               "raypipe_first_pass_seconds": rp.get("first_seconds"),
                               "evidently_version": results["evidently"].get("version")}
    if rp.get("seconds") and results["evidently"].get("seconds"):
        summary["evidently_over_raypipe"] = results["evidently"]["seconds"] / rp["seconds"]
    if rp.get("seconds") and results["floor"].get("seconds"):
        summary["raypipe_over_floor"] = rp["seconds"] / results["floor"]["seconds"]
        summary["raypipe_inprocess_over_floor"] = rp["blocks_inprocess_seconds"] / results["floor"]["seconds"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
