"""Predictive maintenance from streaming sensors, end to end, on a local Ray and a local Mosquitto.

    python examples/streaming_maintenance/plant.py [--out DIR] [--broker mqtt://host:port] [--json]

1. A broker: Debian's ``mosquitto`` started on a free loopback port with a config in ``--out``
   (persistence on, unbounded queues), unless ``--broker`` names one.
2. The pipeline's MQTT ingest actor (``pipeline.yaml`` beside this file) subscribes to
   ``plant/+/sensors``; the whole history of ``--history-machines`` machines of the built-in
   ``sensors`` fleet is published at QoS 1, one JSON reading per message, labelled
   (``failure_soon``) as a historian's export would be. Every reading is landed exactly once.
3. ``raypipe.run`` trains on the landed window: per-machine windows of the last 10 readings,
   logistic regression (gradient-boosted trees did no better), gated, registered, champion.
4. ``StreamScorer`` (what ``raypipe stream`` runs) scores ``--live-machines`` new machines'
   readings as they arrive, interleaved across machines, without labels: it keeps each
   machine's last readings for the windows and publishes one prediction per reading to
   ``plant/<machine>/prediction``; a listener prints the failure warnings.
5. The live labels, held back from the messages, score the warnings: ROC AUC of the streamed
   scores and precision/recall of the warnings. Printed, and with ``--json`` as a summary.

Every number comes from this run; nothing is precomputed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

HERE = Path(__file__).resolve().parent
console = Console(stderr=True)
SENSORS_TOPIC, PREDICTION_TOPIC = "plant/{machine}/sensors", "plant/{device}/prediction"


def start_broker(folder: Path, persistence: bool = True) -> tuple[str, subprocess.Popen]:
    """Mosquitto on a free loopback port (unbounded queues and in-flight windows); its config, state
    (``persistence``: kept for absent persistent sessions) and log in ``folder``."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        sys.exit("mosquitto is not installed: apt-get install -y mosquitto (or pass --broker mqtt://host:port)")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "mosquitto", "mosquitto")  # as root, mosquitto drops to its own user
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "mosquitto.conf"
    state = f"persistence true\npersistence_location {folder}/\n" if persistence else "persistence false\n"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{state}max_queued_messages 0\n"
                    f"max_inflight_messages 0\nlog_dest file {folder}/mosquitto.log\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"mqtt://127.0.0.1:{port}", proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    sys.exit(f"mosquitto did not start; see {folder}/mosquitto.log")


def readings(machines: int, seed: int, prefix: str = "") -> list[dict[str, Any]]:
    """Whole lives of ``machines`` machines of the built-in fleet, in time order, interleaved across machines."""
    from raypipe.ingest.builtin.sensors import generate_sensors

    df = generate_sensors(rows=machines * 450, seed=seed)
    ids = sorted(df["machine_id"].unique())[:machines]
    df = df[df["machine_id"].isin(ids)].sort_values(["cycle", "machine_id"], kind="stable")
    rows = df.to_dict("records")
    for r in rows:
        r["machine_id"] = prefix + r["machine_id"]
        r["msg_id"] = f"{r['machine_id']}-{r['cycle']}"
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows]


class Client:
    """A QoS-1 MQTT client: ``publish`` returns once the broker holds the message; ``got`` collects what it
    subscribed to, in arrival order."""

    def __init__(self, url: str, client_id: str, subscribe: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        from raypipe.ingest.mqtt_wire import broker_address

        host, port, _ = broker_address(url)
        self.got: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if subscribe:
            self.client.on_connect = lambda c, *a: c.subscribe(subscribe, qos=1)
            self.client.on_subscribe = lambda *a: self.ready.set()
            self.client.on_message = lambda c, u, m: self.got.append(json.loads(m.payload))
        else:
            self.ready.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not self.ready.wait(30):
            raise RuntimeError(f"no subscription to {subscribe} in 30 s")

    def publish(self, rows: list[dict[str, Any]]) -> None:
        infos = [self.client.publish(SENSORS_TOPIC.format(machine=r["machine_id"]), json.dumps(r), qos=1)
                 for r in rows]
        for info in infos:
            info.wait_for_publish(timeout=60)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Any, what: str, deadline_s: float = 300.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise RuntimeError(f"still waiting for {what} after {deadline_s:.0f} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="streaming-maintenance-out", help="storage, landing and broker state (made anew)")
    ap.add_argument("--broker", default=None, help="mqtt://host:port of a running broker (default: start one)")
    ap.add_argument("--history-machines", type=int, default=60)
    ap.add_argument("--live-machines", type=int, default=20)
    ap.add_argument("--address", default=None, help="a Ray to join (default: local)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    args = ap.parse_args(argv)

    import yaml
    from sklearn import metrics as skm

    import raypipe
    from raypipe.ingest.mqtt import ingest_status, start_ingest, stop_ingest
    from raypipe.ingest.mqtt_wire import message_id
    from raypipe.serve.stream import StreamScorer

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    broker, proc = (args.broker, None) if args.broker else start_broker(Path(tempfile.mkdtemp(prefix="rp-mosq-")))
    doc = yaml.safe_load((HERE / "pipeline.yaml").read_text())
    doc["storage"] = str(out / "store")
    doc["data"]["source"].update(broker=broker, landing=str(out / "landing"))
    spec = raypipe.load_spec(doc)
    summary: dict[str, Any] = {"broker": broker}
    try:
        console.rule("1. land the history")
        start_ingest(spec, args.address)
        history = readings(args.history_machines, seed=1)
        pub = Client(broker, "plant-historian")
        pub.publish(history)
        wait_for(lambda: ingest_status(spec)["landed"] + ingest_status(spec)["quarantined"] >= len(history),
                 "every reading to land")
        landed = stop_ingest(spec)  # live readings carry no label: they are scored, not landed for training
        console.print(f"published {len(history):,} readings of {args.history_machines} machines; landed "
                      f"{landed['landed']:,}, quarantined {landed['quarantined']}, duplicates {landed['duplicates']}")
        summary["history"] = {"published": len(history), "landed": landed["landed"],
                              "quarantined": landed["quarantined"], "duplicates": landed["duplicates"]}

        console.rule("2. train on the landed window")
        result = raypipe.run(spec, address=args.address)
        summary["train"] = {"version": result.version, "metrics": result.metrics,
                            "linear_baseline": (result.baselines or {}).get("linear", {}).get("metrics")}

        console.rule("3. score the live stream")
        scorer = StreamScorer(spec, broker, ["plant/+/sensors"], publish=PREDICTION_TOPIC, batch_messages=200,
                              batch_seconds=0.2, id_field=spec.data.source.id_field)
        listener = Client(broker, "plant-operator", subscribe="plant/+/prediction")
        scorer.start()
        if not scorer.subscribed.wait(30):
            raise RuntimeError("the scorer did not subscribe in 30 s")
        live = readings(args.live_machines, seed=2, prefix="new-")
        labels = {r["msg_id"]: r.pop("failure_soon") for r in live}  # held back: the live readings have none
        t0 = time.perf_counter()
        pub.publish(live)
        wait_for(lambda: len(listener.got) >= len(live), "a prediction per live reading")
        seconds = time.perf_counter() - t0
        counts = scorer.stop()
        listener.close()
        pub.close()
        got = listener.got
        warned = [g for g in got if int(g["prediction"]) == 1]
        first = {}
        for g in warned:
            first.setdefault(g["device"], g)  # a machine's first warning
        sent = {message_id(SENSORS_TOPIC.format(machine=r["machine_id"]), json.dumps(r).encode(), r, "msg_id"): r
                for r in live}  # the id the scorer names each answer by
        cycle = {k: r["cycle"] for k, r in sent.items()}
        for g in first.values():
            console.print(f"[yellow]warning[/] {g['device']} at cycle {cycle[g['id']]}: fails within 20 cycles "
                          f"(p={g['scores']['1']:.2f}, version {g['version']})")
        y = [labels[sent[g["id"]]["msg_id"]] for g in got]
        p = [g["scores"]["1"] for g in got]
        warn = [int(g["prediction"]) for g in got]
        summary["live"] = {
            "readings": len(live), "predictions": len(got), "distinct": len({g["id"] for g in got}),
            "warnings": len(warned), "quarantined": counts["quarantined"], "seconds": round(seconds, 2),
            "roc_auc": float(skm.roc_auc_score(y, p)), "recall": float(skm.recall_score(y, warn)),
            "precision": float(skm.precision_score(y, warn, zero_division=0)),
            "in_order": _in_order(cycle, got),
        }
        live_s = summary["live"]
        console.print(f"{live_s['predictions']:,} predictions for {live_s['readings']:,} live readings in "
                      f"{seconds:.1f} s; {live_s['warnings']} warnings: recall {live_s['recall']:.3f}, precision "
                      f"{live_s['precision']:.3f}; ROC AUC of the streamed scores {live_s['roc_auc']:.4f}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return summary


def _in_order(cycle: dict[str, int], got: list[dict[str, Any]]) -> bool:
    """Each machine's predictions arrived in the order of its readings (``cycle``: by message id)."""
    by_device: dict[str, list[int]] = {}
    for g in got:
        by_device.setdefault(g["device"], []).append(cycle[g["id"]])
    return all(cycles == sorted(cycles) for cycles in by_device.values())


if __name__ == "__main__":
    main()
