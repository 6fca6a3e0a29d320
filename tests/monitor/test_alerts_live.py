"""The alert chain with everything real: a version trained on the session's Ray, a drifted batch
answered by `raypipe predict` (so it is in the prediction log), `raypipe monitor --serve` on a Ray
of its own (a subprocess, as a user runs it: its metrics page stays small), Debian's Prometheus
scraping that Ray and evaluating the rules `--emit-rules` wrote, Debian's Alertmanager posting
with the configuration `--emit-alertmanager` wrote to the monitor's `POST /monitor/alerts`, and
the firing drift alert in the monitor's status (what `Monitor.on_alert` recorded), once. The
monitor's `monitor.retrain.on: [alert]` then retrains on fresh labelled data (inputs and fraud
rule moved), the gate passes the candidate against v1, it is promoted, and the endpoint serving
beside the monitor answers with it.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

import raypipe
from raypipe.ingest.builtin.transactions import generate_transactions
from raypipe.progress import Progress
from tests.conftest import free_port, small_spec
from tests.monitor.helpers import SHIFTED, UNSHIFTED, monitor_cli, wait_while_serving


def test_injected_drift_fires_in_prometheus_and_alertmanager_posts_it_to_the_served_monitor(ray_session, tmp_path,
                                                                                           capsys):
    from raypipe.serve.metrics_config import SD_FILE, write_prometheus_config

    prometheus, alertmanager = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    assert prometheus and alertmanager, "needs prometheus and prometheus-alertmanager (scripts/test-deps.sh)"
    port, prom_port, am_port = free_port(), free_port(), free_port()
    while len({port, prom_port, am_port}) < 3:
        am_port = free_port()
    ray_dir = Path(tempfile.mkdtemp(prefix="rp-alive-", dir="/tmp"))  # short: Ray's socket paths stop at 107 bytes
    data = small_spec(tmp_path / "store", name="t-alive", rows=3000,
                      deploy={"port": port, "route_prefix": "/alive"},
                      monitor={"drift": {"min_rows": 200}, "interval_s": 2, "window_s": 3600,
                               "alerts": {"drift_windows": 2, "group_wait_s": 0.5, "group_interval_s": 1,
                                          "repeat_interval_s": 1},
                               "retrain": {"on": ["alert"], "cooldown_s": 3600, "min_rows": 1000,
                                           "data": {"type": "parquet", "path": str(tmp_path / "fresh.parquet")}}})
    generate_transactions(6000, seed=31, drift=0.5, concept=1.0).to_parquet(tmp_path / "fresh.parquet", index=False)
    result = raypipe.run(data, progress=Progress(quiet=True))
    assert result.status == "ok"
    window = tmp_path / "drifted.parquet"
    generate_transactions(600, seed=21, drift=0.5).drop(columns=["is_fraud"]).to_parquet(window, index=False)
    raypipe.predict(data, str(window), str(tmp_path / "answers"))  # its answers go to the prediction log

    data["ray"] = {"temp_dir": str(ray_dir)}
    spec_file = tmp_path / "alive.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    rules, am_file = tmp_path / "rules.yml", tmp_path / "alertmanager.yml"
    code, _, err = monitor_cli(capsys, str(spec_file), "--emit-rules", str(rules), "--emit-alertmanager", str(am_file))
    assert code == 0, err
    assert yaml.safe_load(am_file.read_text())["receivers"][0]["webhook_configs"][0]["url"] == \
        f"http://127.0.0.1:{port}/alive/monitor/alerts"
    config = write_prometheus_config(str(tmp_path / "prometheus.yml"), str(ray_dir / SD_FILE), scrape_interval_s=2,
                                     rule_files=[str(rules)], alertmanagers=[f"127.0.0.1:{am_port}"])
    status_url = f"http://127.0.0.1:{port}/alive/monitor/status"
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    names = ("monitor", "prometheus", "alertmanager")
    logs = {n: open(tmp_path / f"{n}.log", "wb") for n in names}
    procs: dict[str, subprocess.Popen] = {}

    def tails() -> str:
        return "\n".join(f"--- {n}:\n" + (tmp_path / f"{n}.log").read_text(errors="replace")[-2000:] for n in names)

    def wait(check, timeout: float, what: str) -> None:
        wait_while_serving(check, timeout, what, procs.values(), tails)

    try:
        procs["monitor"] = subprocess.Popen([sys.executable, "-m", "raypipe", "monitor", str(spec_file), "--serve"],
                                            stdout=logs["monitor"], stderr=subprocess.STDOUT)
        with httpx.Client(timeout=30) as http:
            def drifted_check() -> bool:
                s = http.get(status_url).json()
                return s.get("state") == "ok" and any(c["drifted"] for r in s["last"]["reports"]
                                                      for c in r["columns"].values())

            wait(drifted_check, 240, "a monitor check that finds the drift")
            # Prometheus scrapes and evaluates the rules while the endpoint is deployed; Alertmanager starts once
            # the endpoint serves, so the alert (and the retrain it starts, which swaps the endpoint) cannot reach
            # the monitor before. Prometheus sends a firing alert again every 1 s (its default: 1 min), so it
            # reaches Alertmanager soon after that starts.
            procs["prometheus"] = subprocess.Popen(
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--rules.alert.resend-delay=1s"],
                stdout=logs["prometheus"], stderr=subprocess.STDOUT)
            # the endpoint, in the monitor's Ray (a retrain swaps it there)
            gcs_port = next((ray_dir / "session_latest").glob("gcs_server_port_*")).read_text().strip()
            address = f"127.0.0.1:{gcs_port}"  # raypipe's local Ray keeps its control plane on loopback
            served = subprocess.run([sys.executable, "-m", "raypipe", "serve", str(spec_file), "--address", address],
                                    capture_output=True, text=True, timeout=300)
            assert served.returncode == 0, served.stderr[-3000:]
            assert http.get(f"http://127.0.0.1:{port}/alive/healthz").json()["version"] == result.version
            procs["alertmanager"] = subprocess.Popen(
                [alertmanager, f"--config.file={am_file}", f"--storage.path={tmp_path / 'am-data'}",
                 f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                stdout=logs["alertmanager"], stderr=subprocess.STDOUT)

            def firing() -> bool:
                alerts = http.get(f"{api}/alerts").json()["data"]["alerts"]
                return any(a["labels"]["alertname"] == "RaypipeFeatureDrift" and a["state"] == "firing" for a in alerts)

            wait(firing, 120, "RaypipeFeatureDrift firing in Prometheus")

            def posted() -> bool:
                s = http.get(status_url).json()
                return any(a["alertname"] == "RaypipeFeatureDrift" for a in s.get("alerts", {}).get("last", [])) \
                    and s["inbox"]["duplicates"] >= 1

            wait(posted, 60, "Alertmanager's post (and a repeat) at the monitor's webhook")
            s = http.get(status_url).json()

            def promoted() -> bool:
                last = (http.get(status_url).json().get("retrain") or {}).get("last") or {}
                assert last.get("status") in (None, "promoted"), last  # rejected or failed: say why
                return last.get("status") == "promoted"

            wait(promoted, 300, "the retrain the alert started, promoted")
            retrain = http.get(status_url).json()["retrain"]["last"]
            answer = http.post(f"http://127.0.0.1:{port}/alive/predict", json=json.loads(
                generate_transactions(1, seed=5).drop(columns=["is_fraud"]).to_json(orient="records"))[0]).json()
        drift = [a for a in s["alerts"]["last"] if a["alertname"] == "RaypipeFeatureDrift"]
        reported = {col for r in s["last"]["reports"] for col, c in r["columns"].items() if c["drifted"]}
        alerted = {a["labels"]["feature"] for a in drift}
        assert alerted <= reported and alerted & SHIFTED and not alerted & UNSHIFTED, (alerted, reported)
        assert len({(a["fingerprint"], a["startsAt"]) for a in drift}) == len(drift)  # each alert once
        assert all(a["labels"]["pipeline"] == "t-alive" and a["labels"]["severity"] == "warning" for a in drift)
        print(json.dumps({"alerts": s["alerts"]["received"], "inbox": {k: v for k, v in s["inbox"].items()
                                                                       if k != "last"}}))
        # alert -> retrain -> gate -> promotion -> the endpoint answers with the new version
        assert re.match(r"alert Raypipe\w*Drift firing", retrain["trigger"]) and retrain["parent"] == result.version
        assert retrain["version"] > result.version and retrain["endpoint"].endswith("/alive")
        assert answer["version"] == retrain["version"]
        events = [e for e in raypipe.Registry(data["storage"], "t-alive").audit_log() if e.get("action") == "retrain"]
        assert [(e["verdict"], e["candidate"], e["run_id"]) for e in events] == [("promoted", retrain["version"],
                                                                                    retrain["run_id"])]
    finally:
        for name in ("prometheus", "alertmanager"):
            if name in procs:
                procs[name].terminate()
        if "monitor" in procs:
            procs["monitor"].send_signal(signal.SIGINT)  # shuts Serve and its Ray down
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()
        shutil.rmtree(ray_dir, ignore_errors=True)
