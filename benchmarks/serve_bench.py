"""Serving throughput: raypipe's endpoint vs. the FastAPI app a user would write.

One model (logistic regression on the built-in transactions, with raypipe's fitted
features), measured in one run on this machine:

  (a) the limit: the registry version's ``Predictor`` in this process, on batches of 64
      rows (rows/s; no HTTP);
  (b) plain FastAPI + uvicorn, one process (``--fastapi-workers`` for more): the same
      ``Predictor`` and the same request model (generated from the stored schema), one
      ``predict_records([row])`` per request, no Ray. Measured before raypipe's first
      round and after each, with no Ray running; each round is compared with the better
      of the two FastAPI runs beside it (this machine's throughput drifts by up to
      +-20 % from one minute to the next);
  (c) raypipe's Ray Serve endpoint (``raypipe.serve``), for each ingress asked for
      (``haproxy``: Ray's HAProxy ingress, raypipe's default; ``proxy``: Ray's Python
      proxy), with ``--replicas`` replicas (default 1, like the baseline's one process;
      pinned, so that no run waits out an upscale delay).

Load comes from a separate process: closed loop, N clients each sending one single-row
``POST /predict`` after the other, for ``--seconds`` after a warm-up, at 8, 32 and 128
clients. Reported per setup and concurrency: req/s, p50, p99 (ms), non-2xx responses and
transport errors. ``--rounds`` (default 3) repeats raypipe's runs, each on a fresh Ray,
between FastAPI runs. Target (issue 6): raypipe >= 1.0x FastAPI's req/s at 32 clients
(the median round) with p99 <= 100 ms and 0 errors in every round.

The prediction log (issue 20): ``--log off on`` runs each raypipe round twice, with
``monitor.log.enabled`` false and true (defaults: every request logged, 2,000-row / 10-s
flushes), each on a fresh Ray, and reports logging on / off per round and the rows the
replica dropped and wrote (its writer's totals, from ``GET /metadata`` before shutdown). Target: >= 0.9x at 32 clients (median round), 0 dropped rows. Prints a table and,
last, one JSON line. Not a test.

    .venv/bin/python benchmarks/serve_bench.py [--seconds 10] [--ingress haproxy proxy] [--replicas 1]
        [--rounds 3] [--fastapi-workers 1] [--log off on]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLIENTS = (8, 32, 128)




# --- the load generator (runs in its own process) -------------------------------------

async def _load(url: str, rows: list[dict[str, Any]], clients: int, seconds: float, warmup: float,
                headers: dict[str, str]) -> dict[str, Any]:
    """Closed loop over keep-alive connections (aiohttp: about 4x less client CPU per request than httpx)."""
    import aiohttp

    lat: list[float] = []
    codes: dict[int, int] = {}
    errors = 0
    bodies = [json.dumps(r).encode() for r in rows]
    hdrs = {"content-type": "application/json", **headers}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def client(i: int) -> None:
            nonlocal errors
            n = i
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    async with http.post(url, data=bodies[n % len(bodies)], headers=hdrs) as r:
                        await r.read()
                        code = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    code = -1
                t1 = time.perf_counter()
                n += clients
                if t0 >= measure_from:
                    if code == -1:
                        errors += 1
                    else:
                        codes[code] = codes.get(code, 0) + 1
                        if code < 300:
                            lat.append(t1 - t0)

        await asyncio.gather(*(client(i) for i in range(clients)))
    ok = len(lat)
    lat.sort()
    pct = (lambda q: round(1000 * lat[min(ok - 1, int(q * ok))], 1)) if ok else (lambda q: None)
    return {"clients": clients, "rps": round(ok / seconds, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "non_2xx": sum(v for k, v in codes.items() if k >= 300), "transport_errors": errors, "ok": ok}


def load(url: str, rows_file: str, clients: int, seconds: float, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the load generator in a separate process; return its JSON result."""
    cmd = [sys.executable, __file__, "--load", url, rows_file, str(clients), str(seconds)]
    env = {**os.environ, "BENCH_HEADERS": json.dumps(headers or {})}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=seconds * 4 + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- (b) the FastAPI app a user would write -------------------------------------------

def fastapi_app(version_uri: str, version: int) -> Any:
    from fastapi import FastAPI

    from raypipe.model.predictor import Predictor
    from raypipe.serve.request_model import request_model
    from raypipe.store import Store

    predictor = Predictor.from_version(Store(version_uri), version)
    Row = request_model(predictor.schema)
    app = FastAPI()

    @app.post("/predict")
    async def predict(row: Row) -> dict[str, Any]:  # type: ignore[valid-type]
        return {"version": version, **predictor.predict_records([row.model_dump()])[0]}

    return app


def serve_fastapi(version_uri: str, version: int, port: int, workers: int = 1) -> None:
    import uvicorn

    if workers == 1:
        uvicorn.run(fastapi_app(version_uri, version), host="127.0.0.1", port=port, log_level="warning",
                    access_log=False)
        return
    # uvicorn's own worker processes import the app by name (one port, the kernel spreads connections)
    os.environ["BENCH_VERSION"] = json.dumps([version_uri, version])
    sys.path.insert(0, str(Path(__file__).parent))
    uvicorn.run("serve_bench:fastapi_factory", factory=True, workers=workers, host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


def fastapi_factory() -> Any:
    uri, version = json.loads(os.environ["BENCH_VERSION"])
    return fastapi_app(uri, int(version))


def measure_fastapi(vs: Any, version: int, rows_file: Path, clients: list[int], seconds: float,
                    workers: int, when: str) -> list[dict[str, Any]]:
    """Start the FastAPI app in its own process, load it at each concurrency, print each result, stop it."""
    from raypipe.runtime import free_port

    fport = free_port()
    app = subprocess.Popen([sys.executable, __file__, "--fastapi", vs.full_uri(), str(version), str(fport),
                            str(workers)])
    try:
        wait_http(f"http://127.0.0.1:{fport}/docs")
        results = [load(f"http://127.0.0.1:{fport}/predict", str(rows_file), c, seconds) for c in clients]
        for r in results:
            print(f"(b) fastapi, {when}:", json.dumps(r), flush=True)
        return results
    finally:
        app.terminate()
        app.wait(30)


def wait_http(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


# --- the run ---------------------------------------------------------------------------

def spec(storage: Path, port: int, rows: int) -> dict[str, Any]:
    return {
        "name": "serve-bench", "storage": str(storage),
        "data": {"source": {"type": "builtin", "name": "transactions", "rows": rows, "seed": 3},
                 "target": "is_fraud", "id_columns": ["transaction_id"]},
        "model": {"kind": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 300}},
        "evaluate": {"gate": {"min": {"roc_auc": 0.6}}},
        "deploy": {"port": port, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
    }


def in_process_rate(predictor: Any, rows: list[dict[str, Any]], seconds: float = 3.0) -> dict[str, float]:
    batch = [rows[i % len(rows)] for i in range(64)]
    out = {}
    for name, size in (("batch_64_rows_per_s", 64), ("single_row_per_s", 1)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            predictor.predict_records(batch[:size])
            n += size
        out[name] = round(n / (time.perf_counter() - t0), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--ingress", nargs="+", default=["haproxy", "proxy"], choices=["haproxy", "proxy"])
    ap.add_argument("--clients", nargs="+", type=int, default=list(CLIENTS))
    ap.add_argument("--batch-wait-s", type=float, default=None, help="deploy.batching.batch_wait_timeout_s")
    ap.add_argument("--replicas", type=int, default=1,
                    help="replicas of raypipe's deployment (min = max, pinned so that no run waits out the 30 s "
                         "upscale delay). Default 1: one server process against the baseline's one uvicorn "
                         "process. The spec's default autoscaling (max_replicas 2) would reach 2 under 32 "
                         "clients; on 2 cores the second replica competes with HAProxy and the load generator "
                         "for the same cores (benchmarks/RESULTS.md)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="raypipe rounds, each between two FastAPI runs; the verdict is the median round")
    ap.add_argument("--fastapi-workers", type=int, default=1,
                    help="uvicorn worker processes of the FastAPI baseline (the issue's baseline: 1)")
    ap.add_argument("--log", nargs="+", default=["on"], choices=["off", "on"],
                    help="monitor.log.enabled for raypipe's runs; 'off on' measures both in each round")
    ap.add_argument("--load", nargs=4, metavar=("URL", "ROWS_FILE", "CLIENTS", "SECONDS"), help=argparse.SUPPRESS)
    ap.add_argument("--fastapi", nargs=4, metavar=("VERSION_URI", "VERSION", "PORT", "WORKERS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    if len(set(args.clients)) != len(args.clients):  # each run is matched to its baseline by client count
        ap.error(f"--clients: give each count once, got {' '.join(map(str, args.clients))}")
    if args.load:
        url, rows_file, clients, seconds = args.load
        rows = json.loads(Path(rows_file).read_text())
        result = asyncio.run(_load(url, rows, int(clients), float(seconds), warmup=min(3.0, float(seconds) / 3),
                                   headers=json.loads(os.environ.get("BENCH_HEADERS", "{}"))))
        print(json.dumps(result))
        return
    if args.fastapi:
        serve_fastapi(args.fastapi[0], int(args.fastapi[1]), int(args.fastapi[2]), int(args.fastapi[3]))
        return

    import ray

    import raypipe
    from raypipe.model.predictor import Predictor
    from raypipe.progress import Progress
    from raypipe.registry import Registry
    from raypipe.runtime import connect, free_port
    from raypipe.serve.deploy import sample_request, shutdown

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir="/tmp", ignore_cleanup_errors=True) as tmp:
        storage, port = Path(tmp) / "store", free_port()
        s = raypipe.load_spec(spec(storage, port, args.rows))
        connect(temp_dir=str(Path(tmp) / "ray0"))
        run = raypipe.run(s.model_copy(update={"deploy": s.deploy.model_copy(update={"enabled": False})}),
                          progress=Progress(quiet=True))
        version = run.version
        rows = sample_request(s, version, n=256)
        rows_file = Path(tmp) / "rows.json"
        rows_file.write_text(json.dumps(rows))
        ray.shutdown()
        vs = Registry(s.storage, s.name).version_store(version)
        predictor = Predictor.from_version(vs, version)
        results["in_process"] = in_process_rate(predictor, rows)
        print("(a) in-process:", json.dumps(results["in_process"]), flush=True)

        # FastAPI before raypipe's first round and after every round, without Ray running: each round is
        # compared with the better of the FastAPI runs on either side of it (this machine's throughput
        # drifts by up to +-20 % between minutes).
        fastapi_runs = [measure_fastapi(vs, version, rows_file, args.clients, args.seconds, args.fastapi_workers,
                                        "before")]
        d = s.deploy.model_copy(update={"autoscaling": s.deploy.autoscaling.model_copy(
            update={"min_replicas": args.replicas, "max_replicas": args.replicas})})
        if args.batch_wait_s is not None:
            d = d.model_copy(update={"batching": d.batching.model_copy(update={"batch_wait_timeout_s": args.batch_wait_s})})
        rounds: list[dict[str, list[dict[str, Any]]]] = []
        log_status: list[dict[str, Any]] = []
        for k in range(args.rounds):
            rounds.append({})
            for ingress in args.ingress:
                for log_mode in args.log:
                    on = log_mode == "on"
                    mon = s.monitor.model_copy(update={"log": s.monitor.log.model_copy(update={"enabled": on})})
                    si = s.model_copy(update={"deploy": d.model_copy(update={"ingress": ingress, "port": free_port()}),
                                              "monitor": mon})
                    connect(temp_dir=str(Path(tmp) / f"ray-{ingress}-{log_mode}-{k}"), ingress=ingress)
                    endpoint = raypipe.serve(si, version=version)
                    wait_http(f"{endpoint.url}/healthz")
                    key = f"raypipe_{ingress}" + ("_log" if on and "off" in args.log else "")
                    rounds[k][key] = [load(f"{endpoint.url}/predict", str(rows_file), c, args.seconds)
                                      for c in args.clients]
                    for r in rounds[k][key]:
                        print(f"(c) raypipe, {ingress}, log {log_mode}, round {k + 1}:", json.dumps(r), flush=True)
                    if on:
                        import httpx

                        status = httpx.get(f"{endpoint.url}/metadata", timeout=30).json().get("prediction_log")
                        log_status.append({"round": k + 1, "ingress": ingress, **(status or {})})
                        print(f"(c) raypipe, {ingress}, round {k + 1}, prediction log:", json.dumps(status), flush=True)
                    shutdown()
            fastapi_runs.append(measure_fastapi(vs, version, rows_file, args.clients, args.seconds,
                                                args.fastapi_workers, f"after round {k + 1}"))

    results["fastapi_runs"] = fastapi_runs
    results["setup"] = {"replicas": args.replicas, "fastapi_workers": args.fastapi_workers, "rounds": args.rounds,
                        "cores": os.cpu_count()}
    bases = [{a["clients"]: max(a, b, key=lambda r: r["rps"]) for a, b in zip(before, after)}
             for before, after in zip(fastapi_runs, fastapi_runs[1:])]  # round k's baseline
    keys = [key for key in rounds[0]]
    for key in keys:
        for k, (rnd, base) in enumerate(zip(rounds, bases)):
            for r in rnd[key]:
                r["round"], r["fastapi_rps"] = k + 1, base[r["clients"]]["rps"]
                r["ratio"] = round(r["rps"] / r["fastapi_rps"], 3) if r["fastapi_rps"] else None
        results[key] = [r for rnd in rounds for r in rnd[key]]
    results["fastapi"] = [r for base in bases for r in base.values()]
    print(f"\nsingle-row POST /predict, closed loop, {args.seconds:g} s per point, {os.cpu_count()} cores, "
          f"{args.rounds} round(s)")
    print(f"in-process limit: {results['in_process']['batch_64_rows_per_s']:,.0f} rows/s in batches of 64, "
          f"{results['in_process']['single_row_per_s']:,.0f} rows/s one at a time")
    print(f"{'setup':18s} {'round':>5s} {'clients':>7s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s} "
          f"{'vs fastapi':>10s}")
    for k, base in enumerate(bases):
        for r in base.values():
            print(f"{'fastapi':18s} {k + 1:>5d} {r['clients']:>7d} {r['rps']:>8.1f} {r['p50_ms'] or 0:>7.1f} "
                  f"{r['p99_ms'] or 0:>7.1f} {r['non_2xx'] + r['transport_errors']:>6d} {1:>9.2f}x")
    for key in keys:
        for r in results[key]:
            print(f"{key:18s} {r['round']:>5d} {r['clients']:>7d} {r['rps']:>8.1f} {r['p50_ms'] or 0:>7.1f} "
                  f"{r['p99_ms'] or 0:>7.1f} {r['non_2xx'] + r['transport_errors']:>6d} {r['ratio'] or 0:>9.2f}x")
    verdict = {}
    for i in args.ingress if 32 in args.clients else []:
        at32 = [r for r in results[f"raypipe_{i}"] if r["clients"] == 32]
        ratio = statistics.median(r["ratio"] or 0.0 for r in at32)  # the verdict: the median round
        p99 = max(r["p99_ms"] or 1e9 for r in at32)
        errors = sum(r["non_2xx"] + r["transport_errors"] for r in at32)
        verdict[i] = {"ratio_32": round(ratio, 2), "ratio_32_rounds": [r["ratio"] for r in at32], "p99_32_ms": p99,
                      "errors_32": errors, "target_met": ratio >= 1.0 and p99 <= 100 and errors == 0}
        each = ", ".join(f"{r['ratio'] or 0:.2f}" for r in at32)
        print(f"raypipe ({i}) at 32 clients: {ratio:.2f}x FastAPI (median of {len(at32)} round(s): {each}), "
              f"worst p99 {p99} ms, {errors} errors "
              f"(target >= 1.0x, <= 100 ms, 0 errors: {'met' if verdict[i]['target_met'] else 'not met'})")
    if "off" in args.log and "on" in args.log:
        results["prediction_log"] = log_status
        for i in args.ingress:
            per_round = [{r_on["clients"]: (r_on["rps"] / r_off["rps"] if r_off["rps"] else None)
                          for r_on, r_off in zip(rnd[f"raypipe_{i}_log"], rnd[f"raypipe_{i}"])} for rnd in rounds]
            for c in args.clients:
                ratios = [pr[c] for pr in per_round if pr[c] is not None]
                med = statistics.median(ratios) if ratios else 0.0
                print(f"raypipe ({i}) at {c} clients: logging on / off {med:.3f} (median of rounds: "
                      f"{', '.join(f'{x:.3f}' for x in ratios)})")
            at32 = [pr[32] for pr in per_round if 32 in pr and pr[32] is not None]
            dropped = sum(st.get("dropped", 0) + st.get("failed", 0) for st in log_status if st["ingress"] == i)
            if at32:
                med = statistics.median(at32)
                verdict[f"{i}_log"] = {"log_on_off_32": round(med, 3), "rounds": [round(x, 3) for x in at32],
                                       "dropped_rows": dropped, "target_met": med >= 0.9 and dropped == 0}
                print(f"prediction log ({i}) at 32 clients: {med:.3f}x without it, {dropped} rows dropped "
                      f"(target >= 0.9x, 0 dropped: {'met' if verdict[f'{i}_log']['target_met'] else 'not met'})")
    print(json.dumps({"bench": "serve", "seconds": args.seconds, **results, "verdict": verdict}))


if __name__ == "__main__":
    main()
