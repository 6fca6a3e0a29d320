"""What a new Ray driver pays before its first result: ``ray.init`` and worker start-up.

Each measurement runs in a fresh Python process (a new driver), as ``raypipe run`` does:

- ``init``: ``ray.init`` as raypipe calls it (a new local Ray, or joining the one
  ``raypipe up`` keeps running);
- ``first``: then one task that imports what raypipe's tasks import (pandas, pyarrow,
  scikit-learn, raypipe) and returns;
- ``four``: then four such tasks at once (2 cores: Ray starts two workers at a time).

Configurations: the dashboard on/off, Ray's worker prestart settings, and a driver joining
the ``raypipe up`` Ray (started here first, not timed, and stopped after).

    python benchmarks/startup_bench.py [--runs 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "dashboard on (today)": ({"dashboard": True}, {}),
    "dashboard off": ({"dashboard": False}, {}),
    "dashboard off, no first-driver prestart": ({"dashboard": False}, {"RAY_prestart_worker_first_driver": "0"}),
    "dashboard off, worker prestart at raylet start": ({"dashboard": False}, {"RAY_enable_worker_prestart": "1"}),
    "join `raypipe up` Ray": ({"join": True}, {}),
}


def _task() -> float:
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import sklearn  # noqa: F401

    import raypipe  # noqa: F401

    return time.time()


def child(dashboard: bool, join: bool) -> dict[str, float]:
    t0 = time.perf_counter()
    import ray

    from raypipe import runtime

    t_import = time.perf_counter()
    runtime_dir = None if join else tempfile.mkdtemp(prefix="rpsb-", dir="/tmp")
    runtime.connect(temp_dir=runtime_dir, dashboard=dashboard, log_to_driver=False)  # no temp dir: join `up`'s
    t_init = time.perf_counter()
    task = ray.remote(num_cpus=1)(_task)
    ray.get(task.remote())
    t_first = time.perf_counter()
    ray.get([task.remote() for _ in range(4)])
    t_four = time.perf_counter()
    ray.shutdown()
    if runtime_dir:
        import shutil

        shutil.rmtree(runtime_dir, ignore_errors=True)
    return {"import": t_import - t0, "init": t_init - t_import, "first": t_first - t_init, "four": t_four - t_first}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        opts = json.loads(args.child)
        print(json.dumps(child(opts.get("dashboard", True), opts.get("join", False))))
        return
    import shutil

    from raypipe import localray

    home = tempfile.mkdtemp(prefix="rpsb-home-")
    base_env = {**os.environ, "RAYPIPE_HOME": home}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}

    def one(name: str) -> None:
        opts, env = CONFIGS[name]
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(opts)], env={**base_env, **env},
                             capture_output=True, text=True, check=True).stdout
        results[name].append(json.loads(out.strip().splitlines()[-1]))

    fresh = [name for name, (opts, _) in CONFIGS.items() if not opts.get("join")]
    for _ in range(args.runs):  # round robin: the machine's load drifts, every configuration sees it alike
        for name in fresh:
            one(name)
    os.environ["RAYPIPE_HOME"] = home
    localray.up()
    time.sleep(5)  # let its own start-up settle
    try:
        for _ in range(args.runs):
            for name in CONFIGS:
                if name not in fresh:
                    one(name)
    finally:
        localray.down()
        shutil.rmtree(home, ignore_errors=True)
    table = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    if args.json:
        print(json.dumps({"runs": args.runs, "median_s": table, "all": results}))
        return
    print(f"median of {args.runs} fresh drivers, seconds (init = ray.init, first = 1 task, four = 4 tasks after it)")
    print(f"{'configuration':50s} {'import':>7s} {'init':>7s} {'first':>7s} {'four':>7s}")
    for name, row in table.items():
        print(f"{name:50s} {row['import']:7.2f} {row['init']:7.2f} {row['first']:7.2f} {row['four']:7.2f}")


if __name__ == "__main__":
    main()
