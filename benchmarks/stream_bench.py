"""Online MQTT scoring: raypipe's ``StreamScorer`` vs. the paho + scikit-learn script a user would write.

One run, one local Mosquitto (started here on a free loopback port, persistence off,
unbounded queues), one model on each side trained on the same rows of the built-in
``sensors`` data (``--rows``, seed 1): HistGradientBoostingClassifier(max_iter=200,
random_state=0) after median impute + standard scale + one-hot of ``model``; with
``--windows`` (default) also each machine's last 10 readings of six sensors summarised
(mean, std, min, max):

  raypipe: ``raypipe.run`` on a spec with a builtin source (group split by machine; the
      model is fitted on the train split's machines), decisions at a fixed 0.5; then
      ``StreamScorer`` (what ``raypipe stream`` runs) in its own process, which checks each
      message against the version's columns, computes the windows (``OnlineWindows``),
      scores through the version's Predictor, publishes one answer per message at QoS 1,
      waits for the broker's acks, writes the prediction log, acks the batch, and reads the
      registry alias every 5 s.
  plain: pandas + a scikit-learn Pipeline (ColumnTransformer) fitted on all ``--rows`` rows,
      the windows computed offline with ``groupby().rolling()``; online, a paho client in its
      own process: a queue of messages, batches of B (or 0.05 s after the first), json.loads,
      a per-machine deque for the windows, a DataFrame, predict_proba, one JSON answer per
      message published at QoS 1 (fire and forget: paho retries; no log, no checks).

For each ``--batch`` size and each side: a publisher publishes ``--messages`` readings of
``--live-machines`` new machines (pre-serialised, QoS 1, interleaved across machines, in
time order per machine) as fast as the broker takes them; a listener subscribed to the
prediction topic records each answer's arrival. Reported: wall time from the first publish
to the last answer received, messages/s, the ratio raypipe / plain (time), p50/p95 latency
(publish call -> answer received), the scorer process's CPU seconds, that every message was
answered exactly once, and the share of messages both sides decided alike (different fitted
pipelines: reported, not asserted). Prints a table and, last, one JSON line. Not a test.

    PYTHONPATH=. .venv/bin/python benchmarks/stream_bench.py [--messages 5000] [--batch 100 500] [--no-windows]
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SENSORS, ANSWERS = "plant/{machine}/sensors", "plant/{machine}/prediction"
WINDOW_COLUMNS = ["vibration_mm_s", "temperature_c", "pressure_bar", "oil_temp_c", "current_a", "rpm"]
WINDOW_SIZE, WINDOW_STATS = 10, ["mean", "std", "min", "max"]
HGB = {"max_iter": 200}
CATEGORICAL = ["model"]
NOT_FEATURES = ["machine_id", "failure_soon", "msg_id"]


# --- the broker ---------------------------------------------------------------------------

def start_broker(folder: Path) -> tuple[str, subprocess.Popen]:
    """Mosquitto on a free loopback port, persistence off: the streaming example's broker starter."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "streaming_maintenance" / "plant.py"
    spec = importlib.util.spec_from_file_location("streaming_plant", path)
    plant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plant)
    return plant.start_broker(folder, persistence=False)


def paho(client_id: str, clean: bool = True) -> Any:
    import paho.mqtt.client as mqtt

    return mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                       clean_session=clean, protocol=mqtt.MQTTv311)


def host_port(url: str) -> tuple[str, int]:
    from raypipe.ingest.mqtt_wire import broker_address

    host, port, _ = broker_address(url)
    return host, port


# --- training both sides ------------------------------------------------------------------

def raypipe_spec(storage: Path, rows: int, windows: bool) -> dict[str, Any]:
    features: dict[str, Any] = {"numeric": {"impute": "median", "scale": "standard"}, "categorical": {"encode": "onehot"}}
    if windows:
        features["windows"] = {"by": "machine_id", "order": "cycle", "columns": WINDOW_COLUMNS, "size": WINDOW_SIZE,
                               "stats": WINDOW_STATS}
    return {"name": "stream-bench", "storage": str(storage),
            "data": {"source": {"type": "builtin", "name": "sensors", "rows": rows, "seed": 1},
                     "target": "failure_soon", "id_columns": ["machine_id"], "split": {"group_by": "machine_id"}},
            "features": features,
            "model": {"kind": "sklearn:sklearn.ensemble:HistGradientBoostingClassifier", "params": HGB},
            "evaluate": {"threshold": {"strategy": "fixed", "value": 0.5}},
            "deploy": {"enabled": False}}


def train_raypipe(spec_doc: dict[str, Any]) -> tuple[float, int, list[str], dict[str, Any]]:
    import raypipe
    from raypipe import runtime
    from raypipe.progress import Progress
    from raypipe.registry import Registry
    from raypipe.schema import feature_columns

    spec = raypipe.load_spec(spec_doc)
    t0 = time.perf_counter()
    result = raypipe.run(spec, progress=Progress(quiet=True))
    seconds = time.perf_counter() - t0
    reg = Registry.for_spec(spec)
    reg.set_alias("champion", result.version, reason="stream_bench")
    schema = reg.version_store(result.version).read_json("schema.json")
    runtime.shutdown()  # the scorers run in their own processes; Ray's would compete for the 2 cores
    return seconds, result.version, feature_columns(schema), dict(result.metrics)


def offline_windows(df: pd.DataFrame) -> pd.DataFrame:
    """What a user writes: per-machine rolling stats over the last 10 readings, in cycle order."""
    df = df.sort_values(["machine_id", "cycle"], kind="stable").reset_index(drop=True)
    rolling = df.groupby("machine_id", sort=False)[WINDOW_COLUMNS].rolling(WINDOW_SIZE, min_periods=1)
    stats = {"mean": rolling.mean(), "std": rolling.std(ddof=0), "min": rolling.min(), "max": rolling.max()}
    for stat, frame in stats.items():
        frame = frame.reset_index(level=0, drop=True).sort_index()
        for col in WINDOW_COLUMNS:
            df[f"{col}_w{WINDOW_SIZE}_{stat}"] = frame[col].to_numpy()
    return df


def train_plain(rows: int, windows: bool, model_path: Path) -> tuple[float, list[str]]:
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from raypipe.ingest.builtin.sensors import generate_sensors

    df = generate_sensors(rows=rows, seed=1)  # the rows raypipe's builtin source reads
    t0 = time.perf_counter()
    if windows:
        df = offline_windows(df)
    y = df["failure_soon"]
    x = df.drop(columns=[c for c in NOT_FEATURES if c in df])
    num = [c for c in x.columns if c not in CATEGORICAL]
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
        ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
    ])
    model = make_pipeline(pre, HistGradientBoostingClassifier(**HGB, random_state=0))
    model.fit(x, y)
    seconds = time.perf_counter() - t0
    joblib.dump({"model": model, "features": list(x.columns), "windows": windows}, model_path)
    return seconds, list(x.columns)


# --- the messages -----------------------------------------------------------------------

def live_messages(n: int, machines: int) -> list[tuple[str, str, bytes]]:
    """``(msg_id, topic, payload)`` of ``n`` readings of new machines (seed 2), in (cycle, machine) order:
    interleaved across machines, in time order per machine; no label."""
    from raypipe.ingest.builtin.sensors import generate_sensors

    df = generate_sensors(rows=machines * 450, seed=2)
    ids = sorted(df["machine_id"].unique())[:machines]
    df = df[df["machine_id"].isin(ids)].sort_values(["cycle", "machine_id"], kind="stable").head(n)
    if len(df) < n:
        raise SystemExit(f"{machines} machines give only {len(df)} readings; raise --live-machines")
    out = []
    for r in df.drop(columns=["failure_soon"]).to_dict("records"):
        r = {k: (None if isinstance(v, float) and v != v else (v.item() if hasattr(v, "item") else v))
             for k, v in r.items()}
        r["machine_id"] = "new-" + r["machine_id"]
        r["msg_id"] = f"{r['machine_id']}-{r['cycle']}"
        out.append((r["msg_id"], SENSORS.format(machine=r["machine_id"]), json.dumps(r).encode()))
    return out


# --- the scorers, each in its own process --------------------------------------------------

def serve_raypipe(args: argparse.Namespace) -> None:
    import raypipe
    from raypipe.serve.stream import StreamScorer

    spec = raypipe.load_spec(json.loads(Path(args.spec_file).read_text()))
    scorer = StreamScorer(spec, args.broker, ["plant/+/sensors"], publish="plant/{device}/prediction",
                          id_field="msg_id", batch_messages=args.batch, batch_seconds=0.05,
                          client_id=f"raypipe-stream-bench-{args.batch}-{os.getpid()}")
    scorer.start()
    if not scorer.subscribed.wait(30):
        raise RuntimeError("the scorer did not subscribe in 30 s")
    cpu0 = sum(os.times()[:2])
    print("ready", flush=True)
    sys.stdin.readline()
    cpu = sum(os.times()[:2]) - cpu0
    counts = scorer.stop()
    print(json.dumps({**counts, "cpu_s": cpu}), flush=True)


def serve_plain(args: argparse.Namespace) -> None:
    """The script a user would write."""
    import joblib

    saved = joblib.load(args.model_file)
    model, features, windows = saved["model"], saved["features"], saved["windows"]
    inbox: queue.Queue = queue.Queue()
    subscribed = threading.Event()
    client = paho(f"plain-stream-bench-{args.batch}-{os.getpid()}")
    client.on_connect = lambda c, *a: c.subscribe("plant/+/sensors", qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: inbox.put(m.payload)
    client.connect(*host_port(args.broker))
    client.loop_start()
    if not subscribed.wait(30):
        raise RuntimeError("no subscription in 30 s")
    history: dict[str, deque] = {}
    counts = {"scored": 0, "batches": 0}
    stop = threading.Event()

    def window_row(row: dict[str, Any]) -> None:
        past = history.setdefault(row["machine_id"], deque(maxlen=WINDOW_SIZE))
        past.append([np.nan if row[c] is None else row[c] for c in WINDOW_COLUMNS])
        arr = np.array(past, dtype=float)
        for i, col in enumerate(WINDOW_COLUMNS):
            v = arr[:, i]
            row[f"{col}_w{WINDOW_SIZE}_mean"] = np.nanmean(v)
            row[f"{col}_w{WINDOW_SIZE}_std"] = np.nanstd(v)
            row[f"{col}_w{WINDOW_SIZE}_min"] = np.nanmin(v)
            row[f"{col}_w{WINDOW_SIZE}_max"] = np.nanmax(v)

    def loop() -> None:
        while not (stop.is_set() and inbox.empty()):
            try:
                batch = [inbox.get(timeout=0.1)]
            except queue.Empty:
                continue
            deadline = time.monotonic() + 0.05
            while len(batch) < args.batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(inbox.get(timeout=left))
                except queue.Empty:
                    break
            rows = [json.loads(p) for p in batch]
            if windows:
                for row in rows:
                    window_row(row)
            df = pd.DataFrame(rows)
            scores = model.predict_proba(df[features])[:, 1]
            for row, score in zip(rows, scores):
                answer = {"msg_id": row["msg_id"], "machine_id": row["machine_id"], "score": float(score),
                          "prediction": int(score >= 0.5)}
                client.publish(ANSWERS.format(machine=row["machine_id"]), json.dumps(answer), qos=1)
            counts["scored"] += len(rows)
            counts["batches"] += 1

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    cpu0 = sum(os.times()[:2])
    print("ready", flush=True)
    sys.stdin.readline()
    cpu = sum(os.times()[:2]) - cpu0
    stop.set()
    worker.join(60)
    client.disconnect()
    client.loop_stop()
    print(json.dumps({**counts, "cpu_s": cpu}), flush=True)


# --- one measured run -------------------------------------------------------------------

def warmup_messages(messages: list[tuple[str, str, bytes]], k: int = 40) -> list[tuple[str, str, bytes]]:
    """The first ``k`` readings again, as other machines: answered (and discarded) before the clock starts, so
    neither side's first-call costs (lazy imports, first log file) are timed."""
    out = []
    for _, _, payload in messages[:k]:
        r = json.loads(payload)
        r["machine_id"], r["msg_id"] = "warmup-" + r["machine_id"], "warmup-" + r["msg_id"]
        out.append((r["msg_id"], SENSORS.format(machine=r["machine_id"]), json.dumps(r).encode()))
    return out


PROFILE: str | None = None
OMP_THREADS: int | None = None  # --omp-threads: OMP_NUM_THREADS of both scorer processes (default: OpenMP's own)


def measure(side: str, batch: int, broker: str, messages: list[tuple[str, str, bytes]], files: dict[str, str]
            ) -> dict[str, Any]:
    n = len(messages)
    got: list[tuple[float, bytes]] = []
    ready = threading.Event()
    listener = paho(f"bench-listener-{side}-{batch}")
    listener.on_connect = lambda c, *a: c.subscribe("plant/+/prediction", qos=1)
    listener.on_subscribe = lambda *a: ready.set()
    listener.on_message = lambda c, u, m: got.append((time.time(), m.payload))
    listener.connect(*host_port(broker))
    listener.loop_start()
    publisher = paho(f"bench-publisher-{side}-{batch}")
    publisher.max_inflight_messages_set(0)  # no client-side window: the devices publish as fast as the broker takes
    publisher.connect(*host_port(broker))
    publisher.loop_start()
    cmd = [sys.executable, __file__, "--serve", side, "--broker", broker, "--batch", str(batch),
           "--spec-file", files["spec"], "--model-file", files["model"]]
    if PROFILE:  # --profile DIR: py-spy samples the scorer process (collapsed stacks, one file per run)
        cmd = [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "200", "--nonblocking", "-o",
               str(Path(PROFILE) / f"{side}-{batch}.txt"), "--", *cmd]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(OMP_THREADS)} if OMP_THREADS else {})}
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while line != "ready" and (raw := child.stdout.readline()):
            line = raw.strip()
        if line != "ready" or not ready.wait(30):
            raise RuntimeError(f"{side} scorer did not start: {line!r}")
        warm = warmup_messages(messages)
        for info in [publisher.publish(topic, payload, qos=1) for _, topic, payload in warm]:
            info.wait_for_publish(timeout=60)
        end = time.monotonic() + 60
        while len(got) < len(warm) and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.3)
        if len(got) != len(warm):
            raise RuntimeError(f"{side}: {len(got)} answers to {len(warm)} warm-up messages")
        got.clear()
        sent: dict[str, float] = {}
        infos = []
        t0 = time.time()
        for mid, topic, payload in messages:
            infos.append(publisher.publish(topic, payload, qos=1))
            sent[mid] = time.time()
        for info in infos:
            info.wait_for_publish(timeout=120)
        published = time.time()
        seen, stalled = 0, time.monotonic()
        while len(got) < n and child.poll() is None and time.monotonic() - stalled < 60:
            if len(got) > seen:
                seen, stalled = len(got), time.monotonic()
            time.sleep(0.01)
        last = max((t for t, _ in got), default=float("nan"))
        time.sleep(1.0)  # time for a duplicate to show up
        child.stdin.write("stop\n")
        child.stdin.flush()
        line = ""
        while not line.startswith("{") and (raw := child.stdout.readline()):
            line = raw.strip()
        counts = json.loads(line)
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
        for c in (listener, publisher):
            c.disconnect()
            c.loop_stop()
    answers: dict[str, dict[str, Any]] = {}
    lat = []
    ids = Counter()
    for t, payload in got:
        a = json.loads(payload)
        mid = a["id"][3:] if side == "raypipe" else a["msg_id"]  # raypipe names a message "id:<msg_id>"
        ids[mid] += 1
        score = a["scores"]["1"] if side == "raypipe" else a["score"]
        answers[mid] = {"prediction": int(a["prediction"]), "score": float(score)}
        if mid in sent:
            lat.append(t - sent[mid])
    lat.sort()
    seconds = last - t0
    return {"side": side, "batch": batch, "seconds": seconds, "msg_per_s": n / seconds,
            "publish_s": published - t0, "answers": len(got),
            "exactly_once": len(got) == n and set(ids) == set(sent) and max(ids.values()) == 1,
            "p50_ms": 1000 * lat[len(lat) // 2], "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            "scorer": counts, "_answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--batch", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--windows", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--rows", type=int, default=20_000, help="training rows of the built-in sensors data")
    ap.add_argument("--live-machines", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="runs per side and batch size (medians reported)")
    ap.add_argument("--omp-threads", type=int, help="OMP_NUM_THREADS for both scorers (HistGradientBoosting's "
                    "predict runs OpenMP threads; default: one per core)")
    ap.add_argument("--profile", metavar="DIR", help="sample each scorer process with py-spy into DIR (slows them)")
    ap.add_argument("--serve", choices=["raypipe", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--spec-file", help=argparse.SUPPRESS)
    ap.add_argument("--model-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        args.batch = args.batch[0]
    if args.serve == "raypipe":
        return serve_raypipe(args)
    if args.serve == "plain":
        return serve_plain(args)

    global PROFILE, OMP_THREADS
    PROFILE, OMP_THREADS = args.profile, args.omp_threads
    home = tempfile.mkdtemp(prefix="rp-bench-home-")
    os.environ["RAYPIPE_HOME"] = home  # a Ray of its own
    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="rp-stream-bench-"))
    mosq = Path(tempfile.mkdtemp(prefix="rp-mosq-"))
    broker, proc = start_broker(mosq)
    results = []
    try:
        spec_doc = raypipe_spec(tmp / "store", args.rows, args.windows)
        files = {"spec": str(tmp / "spec.json"), "model": str(tmp / "plain.joblib")}
        Path(files["spec"]).write_text(json.dumps(spec_doc))
        rp_train_s, version, rp_features, metrics = train_raypipe(spec_doc)
        plain_train_s, plain_features = train_plain(args.rows, args.windows, Path(files["model"]))
        if sorted(rp_features) != sorted(plain_features):
            print(f"note: feature columns differ: raypipe only {sorted(set(rp_features) - set(plain_features))}, "
                  f"plain only {sorted(set(plain_features) - set(rp_features))}", file=sys.stderr)
        messages = live_messages(args.messages, args.live_machines)
        for rnd in range(args.rounds):  # the two sides alternate who goes first, round by round
            for batch in args.batch:
                for side in (("raypipe", "plain") if rnd % 2 == 0 else ("plain", "raypipe")):
                    r = measure(side, batch, broker, messages, files)
                    results.append({**r, "round": rnd})
                    print(f"  round {rnd} {side:8s} batch {batch:4d}: {r['seconds']:.2f} s, {r['msg_per_s']:,.0f} "
                          f"msg/s, CPU {r['scorer']['cpu_s']:.2f} s, p50 {r['p50_ms']:.0f} ms, exactly once "
                          f"{r['exactly_once']}", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for folder in (tmp, mosq, Path(home)):
            shutil.rmtree(folder, ignore_errors=True)

    med = statistics.median
    rows = []
    for batch in args.batch:
        rp = [r for r in results if r["side"] == "raypipe" and r["batch"] == batch]
        pl = [r for r in results if r["side"] == "plain" and r["batch"] == batch]
        a, b = rp[0]["_answers"], pl[0]["_answers"]
        common = set(a) & set(b)
        agree = sum(a[k]["prediction"] == b[k]["prediction"] for k in common) / max(len(common), 1)
        diff = max((abs(a[k]["score"] - b[k]["score"]) for k in common), default=float("nan"))
        rp_s, pl_s = med(r["seconds"] for r in rp), med(r["seconds"] for r in pl)
        rows.append({"batch": batch, "raypipe_msg_s": round(args.messages / rp_s, 1),
                     "plain_msg_s": round(args.messages / pl_s, 1), "ratio_time": round(rp_s / pl_s, 2),
                     "raypipe_msg_s_rounds": [round(r["msg_per_s"]) for r in rp],
                     "plain_msg_s_rounds": [round(r["msg_per_s"]) for r in pl],
                     "ratio_rounds": [round(x["seconds"] / y["seconds"], 2) for x, y in zip(rp, pl)],
                     "raypipe_p50_ms": round(med(r["p50_ms"] for r in rp), 1),
                     "raypipe_p95_ms": round(med(r["p95_ms"] for r in rp), 1),
                     "plain_p50_ms": round(med(r["p50_ms"] for r in pl), 1),
                     "plain_p95_ms": round(med(r["p95_ms"] for r in pl), 1),
                     "raypipe_cpu_s": round(med(r["scorer"]["cpu_s"] for r in rp), 2),
                     "plain_cpu_s": round(med(r["scorer"]["cpu_s"] for r in pl), 2),
                     "raypipe_exactly_once": all(r["exactly_once"] for r in rp),
                     "plain_exactly_once": all(r["exactly_once"] for r in pl),
                     "agreement": round(agree, 4), "max_score_diff": round(diff, 4),
                     "raypipe_counts": [{k: v for k, v in r["scorer"].items() if k != "cpu_s"} for r in rp],
                     "publish_s": [[round(r["publish_s"], 2) for r in rp], [round(r["publish_s"], 2) for r in pl]]})
    print(f"{args.messages:,} messages of {args.live_machines} new machines, QoS 1; windows {args.windows}; "
          f"trained on {args.rows:,} sensors rows (raypipe {rp_train_s:.1f} s incl. Ray start, version {version}, "
          f"test roc_auc {metrics.get('roc_auc', float('nan')):.4f}; plain fit {plain_train_s:.1f} s); "
          f"load at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"medians of {args.rounds} rounds; load at end {os.getloadavg()[0]:.2f}; scorers' OMP_NUM_THREADS "
          f"{args.omp_threads or 'unset'}")
    print(f"{'batch':>5s} {'raypipe msg/s':>13s} {'plain msg/s':>11s} {'ratio':>6s} {'rp p50/p95 ms':>15s} "
          f"{'plain p50/p95 ms':>16s} {'CPU s rp/plain':>15s} {'once':>10s} {'agree':>6s}")
    for r in rows:
        print(f"{r['batch']:5d} {r['raypipe_msg_s']:13,.0f} {r['plain_msg_s']:11,.0f} {r['ratio_time']:6.2f} "
              f"{r['raypipe_p50_ms']:7.0f}/{r['raypipe_p95_ms']:<7.0f} {r['plain_p50_ms']:8.0f}/{r['plain_p95_ms']:<7.0f} "
              f"{r['raypipe_cpu_s']:7.2f}/{r['plain_cpu_s']:<7.2f} {str(r['raypipe_exactly_once'])[0]}/"
              f"{str(r['plain_exactly_once'])[0]:8s} {r['agreement']:6.3f}")
        print(f"      rounds: raypipe msg/s {r['raypipe_msg_s_rounds']}, plain {r['plain_msg_s_rounds']}, "
              f"ratio {r['ratio_rounds']}")
    print(json.dumps({"bench": "stream", "messages": args.messages, "windows": args.windows, "rows": args.rows,
                      "omp_threads": args.omp_threads, "rounds": args.rounds,
                      "load_at_start": [round(x, 2) for x in load], "raypipe_train_s": round(rp_train_s, 1),
                      "plain_train_s": round(plain_train_s, 1), "raypipe_roc_auc": metrics.get("roc_auc"),
                      "runs": rows}))


if __name__ == "__main__":
    main()
