"""Data plane throughput: raypipe's ingest + validate + features vs. what a user would run.

4,000,000 rows x (20 numeric + 2 categorical + a binary label) as 8 parquet files, 2% of
the numeric cells missing. Each case runs in its own subprocess, so that its peak
memory (the driver's max RSS) is its own:

  (a) pyarrow.parquet.read_table alone: the floor.
  (a2) Ray Data's floor: read_parquet -> an identity map -> materialize, under raypipe's
      Ray Data settings: what any Ray pass that reads the input and materialises rows
      costs before doing any work.
  (b) pandas + scikit-learn in one process: read, SimpleImputer(median) +
      StandardScaler on the numerics, OneHotEncoder on the categoricals (fit + transform).
  (c) Ray's stock chain: read_parquet -> SimpleImputer -> StandardScaler ->
      OneHotEncoder (ray.data.preprocessors), fit + transform, materialised, on a plain
      ``ray.init()`` with Ray Data's default settings (what a user of the stock chain gets).
  (c1) the same with the one switch that matters most: Ray Data's V1 parquet reader
      (Ray 2.60's default DataSourceV2 reader is slower here; RESULTS.md).
  (c') the same chain under raypipe's Ray Data settings (runtime.configure_data).
  (d) raypipe: the real ingest (hash split), validate (row checks, quarantine, profile)
      and features (one-pass fit) stages through the runner, then the fitted
      transform of all three splits to feature matrices, materialised.

Ray start-up (c, d) is reported apart and not counted: a user pays it once per
cluster, not per dataset. Prints a table and, last, one JSON line.

    .venv/bin/python benchmarks/data_bench.py            # 4M rows
    .venv/bin/python benchmarks/data_bench.py --rows 500000
"""
from __future__ import annotations

import argparse
import os
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

N_NUM, FILES = 20, 8
NUM = [f"x{i}" for i in range(N_NUM)]
CAT = ["region", "channel"]


def generate(root: Path, rows: int, seed: int = 0) -> Path:
    import pandas as pd

    out = root / "data"
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    per = rows // FILES
    regions = np.array([f"r{i:02d}" for i in range(40)])
    channels = np.array(["web", "app", "store", "phone", "partner"])
    for f in range(FILES):
        n = per if f < FILES - 1 else rows - per * (FILES - 1)
        x = rng.normal(size=(n, N_NUM)) * np.arange(1, N_NUM + 1) + np.arange(N_NUM)
        x[rng.random(size=x.shape) < 0.02] = np.nan
        df = pd.DataFrame(x, columns=NUM)
        df["region"] = regions[rng.zipf(1.5, size=n) % len(regions)]
        df["channel"] = channels[rng.integers(0, len(channels), size=n)]
        df["label"] = (np.nan_to_num(x[:, 0]) + rng.normal(size=n) > 1.0).astype(np.int64)
        df.to_parquet(out / f"part-{f}.parquet", index=False)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def case_arrow(path: Path) -> dict:
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    table = pq.read_table(path)
    return {"seconds": time.perf_counter() - t0, "rows": table.num_rows}


def case_pandas(path: Path) -> dict:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    t0 = time.perf_counter()
    df = pd.read_parquet(path)
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUM),
        ("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=33, sparse_output=False), CAT),
    ])
    x = pre.fit_transform(df)
    return {"seconds": time.perf_counter() - t0, "rows": int(x.shape[0]), "features": int(x.shape[1])}


def _ray(tmp: Path, settings: str = "raypipe") -> float:
    """Start a local Ray: ``defaults`` as ``ray.init()`` gives it, ``v1`` the same with Ray Data's
    V1 parquet reader, ``raypipe`` with raypipe's own local Ray and Ray Data settings."""
    import ray
    import ray.data

    from raypipe.runtime import configure_data, local_init_kwargs

    t0 = time.perf_counter()
    if settings == "raypipe":
        kwargs = local_init_kwargs(num_cpus=max(4, os.cpu_count() or 1))  # raypipe's own local default
    else:  # a plain ray.init(): one logical CPU per core; the dashboard on loopback, as everywhere here
        kwargs = {"address": "local", "dashboard_host": "127.0.0.1"}
    kwargs["_temp_dir"] = str(tmp / "ray")
    ray.init(**kwargs)
    if settings == "raypipe":
        configure_data()
    elif settings == "v1":
        ray.data.DataContext.get_current().use_datasource_v2 = False
    ray.data.range(1000).map_batches(lambda b: b).materialize()  # workers up, before timing
    return time.perf_counter() - t0


def _identity(table: Any) -> Any:
    return table


def case_ray_floor(path: Path, tmp: Path) -> dict:
    import ray.data

    init_s = _ray(tmp)
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(str(path)).map_batches(_identity, batch_format="pyarrow", batch_size=None)
    rows = ds.materialize().count()
    return {"seconds": time.perf_counter() - t0, "rows": rows, "ray_init_s": init_s}


def case_ray_stock(path: Path, tmp: Path, settings: str = "defaults") -> dict:
    import ray.data
    from ray.data.preprocessors import Chain, OneHotEncoder, SimpleImputer, StandardScaler

    init_s = _ray(tmp, settings)
    t0 = time.perf_counter()
    ds = ray.data.read_parquet(str(path))
    chain = Chain(SimpleImputer(NUM, strategy="mean"), StandardScaler(NUM), OneHotEncoder(CAT, max_categories={c: 33 for c in CAT}))
    out = chain.fit_transform(ds).materialize()
    return {"seconds": time.perf_counter() - t0, "rows": out.count(), "ray_init_s": init_s,
            "note": "SimpleImputer(mean): Ray's median imputer needs another aggregation pass"}


def case_ray_stock_v1(path: Path, tmp: Path) -> dict:
    return case_ray_stock(path, tmp, "v1")


def case_raypipe(path: Path, tmp: Path) -> dict:
    import ray.data

    import raypipe
    from raypipe.progress import Progress
    from raypipe.train.data import xy_dataset

    init_s = _ray(tmp)
    spec = raypipe.load_spec({
        "name": "data-bench", "storage": str(tmp / "store"),
        "data": {"source": {"type": "parquet", "path": str(path)}, "target": "label"},
        "validate": {"reference": "none"},
        "features": {"categorical": {"max_categories": 33}},
        "deploy": {"enabled": False},
    })
    from raypipe import executions

    t0 = time.perf_counter()
    with executions.recording() as seen:
        result = raypipe.run(spec, until="features", progress=Progress(quiet=True))
    stages = {s["name"]: round(s["seconds"], 2) for s in result.stages}
    val, feats = result.outputs["validate"], result.outputs["features"]
    schema = val.store.read_json(val.outputs.schema)
    features = feats.store.read_json(feats.outputs.features)
    t1 = time.perf_counter()
    # All three splits as one materialised dataset, as (c) transforms its one dataset.
    paths = [val.store.path(rel) for rel in val.outputs.splits.values()]
    every = ray.data.read_parquet(paths, filesystem=val.store.fs, file_extensions=["parquet"])
    rows = xy_dataset(every, features, schema).materialize().count()
    stages["transform"] = round(time.perf_counter() - t1, 2)
    return {"seconds": time.perf_counter() - t0, "rows": rows, "ray_init_s": init_s, "stages": stages,
            "executions": executions.per_stage(seen),
            "quarantined": val.outputs.quarantined, "features": feats.outputs.n_features}


def case_ray_stock_tuned(path: Path, tmp: Path) -> dict:
    return case_ray_stock(path, tmp, "raypipe")


CASES = {"arrow": case_arrow, "ray_floor": case_ray_floor, "pandas": case_pandas, "ray_stock": case_ray_stock, "ray_stock_v1": case_ray_stock_v1,
         "ray_stock_tuned": case_ray_stock_tuned, "raypipe": case_raypipe}


def run_case(name: str, path: Path, tmp: Path) -> dict:
    """One case in a fresh interpreter; its JSON result is the last line it prints."""
    proc = subprocess.run([sys.executable, __file__, "--case", name, "--path", str(path), "--tmp", str(tmp)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"case {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--case", choices=sorted(CASES))
    ap.add_argument("--path")
    ap.add_argument("--tmp")
    ap.add_argument("--only", nargs="*", default=list(CASES))
    args = ap.parse_args()
    if args.case:
        fn = CASES[args.case]
        path, tmp = Path(args.path), Path(args.tmp)
        out = fn(path) if args.case in ("arrow", "pandas") else fn(path, tmp / args.case)
        out["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        path = generate(tmp, args.rows)
        mb = sum(f.stat().st_size for f in path.iterdir()) / 2**20
        print(f"{args.rows:,} rows x {N_NUM} numeric + {len(CAT)} categorical, {FILES} files, {mb:.0f} MB parquet "
              f"(generated in {time.perf_counter() - t0:.0f} s)", flush=True)
        res = {}
        for name in args.only:
            res[name] = run_case(name, path, tmp)
            print(f"  {name}: {res[name]['seconds']:.1f} s", flush=True)
    base = res.get("pandas", {}).get("seconds")
    print(f"\n{'case':37s} {'seconds':>8s} {'vs pandas':>10s} {'peak RSS MB':>12s}")
    labels = {"arrow": "(a) pyarrow read (floor)", "ray_floor": "(a2) Ray read+materialize (floor)", "pandas": "(b) pandas + scikit-learn",
              "ray_stock": "(c) Ray stock preprocessors", "ray_stock_v1": "(c1) the same, V1 parquet reader",
              "ray_stock_tuned": "(c') the same, raypipe's settings",
              "raypipe": "(d) raypipe ingest+validate+features"}
    for name, r in res.items():
        ratio = f"{base / r['seconds']:.2f}x" if base else "-"
        print(f"{labels[name]:37s} {r['seconds']:8.1f} {ratio:>10s} {r['peak_rss_mb']:12.0f}")
    if "raypipe" in res:
        print("raypipe per stage (s):", res["raypipe"]["stages"])
        print("raypipe Ray Data executions per stage:", res["raypipe"]["executions"])
    summary = {"bench": "data", "rows": args.rows, "cpus": __import__("os").cpu_count()}
    for name, r in res.items():
        summary[f"{name}_s"] = round(r["seconds"], 2)
        summary[f"{name}_peak_rss_mb"] = round(r["peak_rss_mb"])
    if "raypipe" in res:
        rp = res["raypipe"]["seconds"]
        summary["raypipe_stages"] = res["raypipe"]["stages"]
        summary["raypipe_executions"] = res["raypipe"]["executions"]
        if base:
            summary["speedup_vs_pandas"] = round(base / rp, 2)
        if "ray_stock" in res:
            summary["speedup_vs_ray_stock"] = round(res["ray_stock"]["seconds"] / rp, 2)
            summary["seconds_for_4x_vs_ray_stock"] = round(res["ray_stock"]["seconds"] / 4, 2)
        if "ray_stock_v1" in res:
            summary["speedup_vs_ray_stock_v1"] = round(res["ray_stock_v1"]["seconds"] / rp, 2)
        if "ray_stock_tuned" in res:
            summary["speedup_vs_ray_stock_tuned"] = round(res["ray_stock_tuned"]["seconds"] / rp, 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
