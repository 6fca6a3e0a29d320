"""Alerts: the rules `raypipe monitor --emit-rules` writes pass `promtool check rules` and fire on
exactly the series that cross the spec's thresholds (`promtool test rules`); the Alertmanager
configuration passes `amtool check-config`; the webhook hands each firing alert to the monitor's
hook once; and the whole chain runs for real on loopback: Prometheus scraping a drift gauge,
evaluating the emitted rules, Alertmanager (emitted configuration) posting to a real
MonitorService's `POST /monitor/alerts`.

No Ray here: the spec is only loaded, and the MonitorService runs in uvicorn without its check loop.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

import raypipe
from raypipe.monitor.webhook import AlertInbox, BadAlertPayload, handle_post
from tests.conftest import free_port, small_spec
from tests.monitor.helpers import monitor_cli, wait_while_serving

NAME = "t-alerts"
LABELS = {"severity": "page", "team": "ml"}


def _spec_data(tmp_path: Path, **alerts) -> dict:
    data = small_spec(tmp_path / "store", name=NAME, rows=300,
                      deploy={"port": 18123, "route_prefix": "/al",
                              "autoscaling": {"min_replicas": 1, "max_replicas": 3},
                              "slo": {"p99_ms": 150, "max_error_rate": 0.02}},
                      monitor={"interval_s": 60,
                               "drift": {"threshold": 0.1, "per_column": {"amount": 0.3},
                                         "prediction_threshold": 0.15, "multivariate_auc": 0.6},
                               "alerts": {"drift_windows": 3, "rate_window_s": 300, "for_s": 120,
                                          "no_traffic_minutes": 10, "replicas_at_max_minutes": 10,
                                          "labels": LABELS, **alerts}})
    data["evaluate"] = {"gate": {"min": {"accuracy": 0.8}}}
    return data


@pytest.fixture
def emitted(tmp_path, capsys):
    """(spec file, rules file, alertmanager file) written by the CLI."""
    spec_file = tmp_path / "pipeline.yaml"
    spec_file.write_text(yaml.safe_dump(_spec_data(tmp_path)))
    rules, am = tmp_path / "rules.yml", tmp_path / "alertmanager.yml"
    code, out, err = monitor_cli(capsys, str(spec_file), "--emit-rules", str(rules), "--emit-alertmanager", str(am))
    assert code == 0, err
    assert out == {"rules": str(rules), "alertmanager": str(am)}
    return spec_file, rules, am


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"needs {name}: apt-get install prometheus prometheus-alertmanager (scripts/test-deps.sh installs them)"
    return path


def test_emitted_rules_and_alertmanager_config_pass_promtool_and_amtool(emitted):
    _, rules, am = emitted
    check = subprocess.run([_binary("promtool"), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    names = [r["alert"] for r in yaml.safe_load(rules.read_text())["groups"][0]["rules"]]
    assert names == ["RaypipeFeatureDrift", "RaypipePredictionDrift", "RaypipeMultivariateDrift",
                     "RaypipePerformanceBelowGate", "RaypipeServerErrors", "RaypipeClientErrors", "RaypipeLatencyP99",
                     "RaypipeReplicasAtMax", "RaypipePredictionLogDrops", "RaypipeNoTraffic", "RaypipeMonitorFailing"]
    assert f"SUCCESS: {len(names)} rules found" in check.stdout
    amc = subprocess.run([_binary("amtool"), "check-config", str(am)], capture_output=True, text=True)
    assert amc.returncode == 0, amc.stdout + amc.stderr
    config = yaml.safe_load(am.read_text())
    assert config["receivers"][0]["webhook_configs"][0]["url"] == "http://127.0.0.1:18123/al/monitor/alerts"


def test_webhook_url_override_and_the_api_key_file_with_deploy_auth(tmp_path, capsys):
    data = _spec_data(tmp_path)
    data["deploy"]["auth"] = {"api_key_env": "RP_AL_KEY"}
    spec_file = tmp_path / "auth.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    am = tmp_path / "am.yml"
    code, _, err = monitor_cli(capsys, str(spec_file), "--emit-alertmanager", str(am))
    assert code == 2 and "--webhook-key-file" in err
    code, _, err = monitor_cli(capsys, str(spec_file), "--emit-alertmanager", str(am), "--webhook-url",
                               "http://mon.example:9000/x/monitor/alerts", "--webhook-key-file", "/etc/am/key")
    assert code == 0, err
    hook = yaml.safe_load(am.read_text())["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://mon.example:9000/x/monitor/alerts"
    assert hook["http_config"] == {"authorization": {"type": "Bearer", "credentials_file": "/etc/am/key"}}
    code, _, err = monitor_cli(capsys, str(spec_file), "--emit-rules", str(tmp_path / "r.yml"), "--last", "1h")
    assert code == 2 and "check nothing" in err


# -- promtool test rules ------------------------------------------------------------------------------
def _render(template: str, labels: dict[str, str], value: float) -> str:
    """The three template forms the rules use, as Prometheus renders them (Go's %v of a float64)."""
    v = repr(float(value))
    v = v[:-2] if v.endswith(".0") else v
    out = template.replace("{{ $value | humanizePercentage }}", "%.4g%%" % (value * 100)).replace("{{ $value }}", v)
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), out)


RULE_LABELS = {**LABELS, "pipeline": NAME}
SERVE = {"application": NAME, "deployment": "ModelServer"}


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


# Samples every minute for 30 minutes; evaluated at 25m. "over": every rule's condition holds (for
# drift: from minute 2 on, so the 3-window minimum crosses at 5m and fires 2 windows later);
# "under": the same series just under each threshold (amount: over the default 0.1, under its own 0.3).
CASES = {
    # rule -> (over series, under series, expected (labels, value) when over)
    "RaypipeFeatureDrift": (
        [_series("ray_raypipe_feature_drift", {"pipeline": NAME, "version": "1", "feature": "hour",
                                               "statistic": "psi"}, "0.02 0.02 0.5x28"),
         _series("ray_raypipe_feature_drift", {"pipeline": NAME, "version": "1", "feature": "amount",
                                               "statistic": "psi"}, "0.25x30")],
        [_series("ray_raypipe_feature_drift", {"pipeline": NAME, "version": "1", "feature": "hour",
                                               "statistic": "psi"}, "0.5x23 0.09 0.5x6"),  # one window under, 1 min ago
         _series("ray_raypipe_feature_drift", {"pipeline": NAME, "version": "1", "feature": "amount",
                                               "statistic": "psi"}, "0.25x30")],
        [({"version": "1", "feature": "hour", "statistic": "psi"}, 0.5)]),
    "RaypipePredictionDrift": (
        [_series("ray_raypipe_prediction_drift", {"pipeline": NAME, "version": "2", "part": "score",
                                                  "statistic": "wasserstein"}, "0.25x30")],
        [_series("ray_raypipe_prediction_drift", {"pipeline": NAME, "version": "2", "part": "score",
                                                  "statistic": "wasserstein"}, "0.14x30")],
        [({"version": "2", "part": "score", "statistic": "wasserstein"}, 0.25)]),
    "RaypipeMultivariateDrift": (
        [_series("ray_raypipe_multivariate_drift", {"pipeline": NAME, "version": "2"}, "0.75x30")],
        [_series("ray_raypipe_multivariate_drift", {"pipeline": NAME, "version": "2"}, "0.55x30")],
        [({"version": "2"}, 0.75)]),
    "RaypipePerformanceBelowGate": (
        [_series("ray_raypipe_performance", {"pipeline": NAME, "version": "2", "metric": "accuracy",
                                             "kind": "estimated"}, "0.75x30")],
        [_series("ray_raypipe_performance", {"pipeline": NAME, "version": "2", "metric": "accuracy",
                                             "kind": "estimated"}, "0.75x23 0.85 0.75x6")],  # one window passes
        [({"version": "2", "metric": "accuracy", "kind": "estimated"}, 0.75)]),
    "RaypipeServerErrors": (
        [_series("ray_serve_num_http_requests_total", {**SERVE, "status_code": "200"}, "0+96x30"),
         _series("ray_serve_num_http_requests_total", {**SERVE, "status_code": "503"}, "0+4x30")],
        [_series("ray_serve_num_http_requests_total", {**SERVE, "status_code": "200"}, "0+99x30"),
         _series("ray_serve_num_http_requests_total", {**SERVE, "status_code": "500"}, "0+1x30")],
        [({"application": NAME}, 0.04)]),
    "RaypipeClientErrors": (
        [_series("ray_serve_num_http_requests_total", {**SERVE, "status_code": "200"}, "0+96x30"),
         _series("ray_serve_num_http_requests_total", {**SERVE, "status_code": "422"}, "0+4x30")],
        [_series("ray_serve_num_http_requests_total", {**SERVE, "status_code": "200"}, "0+99x30"),
         _series("ray_serve_num_http_requests_total", {**SERVE, "status_code": "404"}, "0+1x30")],
        [({"application": NAME}, 0.04)]),
    "RaypipeLatencyP99": (  # every request between 100 and 228 ms: p99 = 100 + 0.99 * 128
        [_series("ray_serve_deployment_processing_latency_ms_bucket", {**SERVE, "le": le}, v)
         for le, v in (("100", "0x30"), ("228", "0+100x30"), ("+Inf", "0+100x30"))],
        [_series("ray_serve_deployment_processing_latency_ms_bucket", {**SERVE, "le": le}, v)
         for le, v in (("100", "0+100x30"), ("228", "0+100x30"), ("+Inf", "0+100x30"))],
        [({"application": NAME, "deployment": "ModelServer"}, 100 + 0.99 * 128)]),
    "RaypipeReplicasAtMax": (
        [_series("ray_serve_deployment_replica_healthy", SERVE, "3x30")],
        [_series("ray_serve_deployment_replica_healthy", SERVE, "3x20 2 3x9")],  # one scrape below 4 min ago: not 10 min
        [({"application": NAME, "deployment": "ModelServer"}, 3)]),
    "RaypipePredictionLogDrops": (
        [_series("ray_raypipe_prediction_log_dropped_total", SERVE, "0x22 7x7")],
        [_series("ray_raypipe_prediction_log_dropped_total", SERVE, "0x5 7x24")],  # long ago: out of the window
        [({"application": NAME}, 7)]),
    "RaypipeNoTraffic": (
        [_series("ray_raypipe_predictions_total", {**SERVE, "role": "champion"}, "0+50x5 250x24"),
         _series("ray_raypipe_predictions_total", {**SERVE, "role": "shadow"}, "0+50x30")],  # shadow: not traffic
        [_series("ray_raypipe_predictions_total", {**SERVE, "role": "champion"}, "0+50x5 250x14 251x10")],
        [({}, 0)]),
    "RaypipeMonitorFailing": (
        [_series("ray_raypipe_monitor_check_ok", {"pipeline": NAME}, "1x22 0x7")],
        [_series("ray_raypipe_monitor_check_ok", {"pipeline": NAME}, "1x23 0 1 0")],  # never two failed checks in a row
        [({}, 0)]),
}


def _unit_tests(rules: Path) -> dict:
    """The promtool test file: one test per rule and side, evaluated at 25m."""
    by_name = {r["alert"]: r for r in yaml.safe_load(rules.read_text())["groups"][0]["rules"]}
    assert set(by_name) == set(CASES)
    tests = []
    for alert, (over, under, expected) in CASES.items():
        rule = by_name[alert]
        exp = []
        for extra, value in expected:
            labels = {**extra, **rule["labels"]}
            exp.append({"exp_labels": labels,
                        "exp_annotations": {k: _render(t, labels, value) for k, t in rule["annotations"].items()}
                        if value is not None else None})
        tests.append({"name": f"{alert} over", "interval": "1m", "input_series": over,
                      "alert_rule_test": [{"eval_time": "25m", "alertname": alert, "exp_alerts": exp}]})
        tests.append({"name": f"{alert} under", "interval": "1m", "input_series": under,
                      "alert_rule_test": [{"eval_time": "25m", "alertname": alert, "exp_alerts": []}]})
    return {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}


def test_promtool_unit_tests_fire_over_each_threshold_and_stay_quiet_under(emitted, tmp_path):
    _, rules, _ = emitted
    assert RULE_LABELS.items() <= yaml.safe_load(rules.read_text())["groups"][0]["rules"][0]["labels"].items()
    tests = _unit_tests(rules)
    for t in tests["tests"]:  # alerts whose value is not checked: no annotations to compare
        for case in t["alert_rule_test"]:
            for e in case["exp_alerts"]:
                if e["exp_annotations"] is None:
                    del e["exp_annotations"]
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    run = subprocess.run([_binary("promtool"), "test", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]


# -- the webhook ----------------------------------------------------------------------------------------
def _payload(status: str = "firing", starts: str = "2026-01-01T00:00:00Z", fingerprint: str = "f1",
             group: str = '{}:{alertname="RaypipeFeatureDrift"}', version: str = "4", **labels) -> dict:
    """An Alertmanager webhook post (version 4) of one alert."""
    alert_labels = {"alertname": "RaypipeFeatureDrift", "pipeline": NAME, "feature": "hour", **labels}
    return {"version": version, "groupKey": group, "status": status, "receiver": f"raypipe-{NAME}",
            "groupLabels": {"alertname": "RaypipeFeatureDrift"}, "commonLabels": alert_labels,
            "commonAnnotations": {}, "externalURL": "http://am", "truncatedAlerts": 0,
            "alerts": [{"status": status, "labels": alert_labels, "annotations": {"summary": "hour drifted"},
                        "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph",
                        "fingerprint": fingerprint}]}


def test_the_inbox_hands_on_each_firing_alert_once_and_ignores_resolved_ones():
    inbox, handed = AlertInbox(), []
    post = lambda p: handle_post(inbox, json.dumps(p).encode(), handed.extend)  # noqa: E731
    assert post(_payload()) == (200, {"accepted": 1, "duplicates": 0, "resolved": 0})
    assert post(_payload()) == (200, {"accepted": 0, "duplicates": 1, "resolved": 0})  # Alertmanager's repeat
    assert post(_payload(fingerprint="f2", feature="amount")) == (200, {"accepted": 1, "duplicates": 0,
                                                                        "resolved": 0})  # another alert of the group
    assert post(_payload(status="resolved")) == (200, {"accepted": 0, "duplicates": 0, "resolved": 1})
    assert post(_payload(starts="2026-01-01T01:00:00Z")) == (200, {"accepted": 1, "duplicates": 0, "resolved": 0})
    assert [(a["fingerprint"], a["startsAt"]) for a in handed] == [
        ("f1", "2026-01-01T00:00:00Z"), ("f2", "2026-01-01T00:00:00Z"), ("f1", "2026-01-01T01:00:00Z")]
    assert handed[0]["alertname"] == "RaypipeFeatureDrift" and handed[0]["labels"]["feature"] == "hour"
    assert handed[0]["annotations"] == {"summary": "hour drifted"} and handed[0]["groupKey"].startswith("{}")
    s = inbox.summary()
    assert {k: s[k] for k in ("posts", "alerts", "accepted", "duplicates", "resolved", "bad_posts")} == \
        {"posts": 5, "alerts": 5, "accepted": 3, "duplicates": 1, "resolved": 1, "bad_posts": 0}
    assert inbox.receive(_payload(fingerprint="f3")) and not inbox.receive(_payload(fingerprint="f3"))


@pytest.mark.parametrize("body, reason", [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps(_payload(version="3")).encode(), "version '3'"),
    (json.dumps({**_payload(), "alerts": {}}).encode(), "alerts is missing or not a list"),
    (json.dumps({**_payload(), "alerts": [{"status": "firing", "labels": {}}]}).encode(), "alerts[0].fingerprint"),
    (json.dumps({**_payload(), "alerts": [7]}).encode(), "alerts[0] is not an object"),
])
def test_a_bad_payload_is_a_400_with_its_reason(body, reason):
    inbox, handed = AlertInbox(), []
    code, answer = handle_post(inbox, body, handed.extend)
    assert code == 400 and reason in answer["error"] and not handed
    assert inbox.summary()["bad_posts"] == 1 and inbox.summary()["accepted"] == 0
    with pytest.raises(BadAlertPayload):
        inbox.receive(json.loads(body) if body != b"not json" else None)


def test_a_failing_hook_is_a_500_and_alertmanagers_retry_is_handed_on():
    inbox, calls = AlertInbox(), []

    def hook(alerts):
        calls.append(alerts)
        if len(calls) == 1:
            raise RuntimeError("retrain queue down")

    body = json.dumps(_payload()).encode()
    code, answer = handle_post(inbox, body, hook)
    assert code == 500 and "retrain queue down" in answer["error"]
    assert handle_post(inbox, body, hook) == (200, {"accepted": 1, "duplicates": 0, "resolved": 0})
    assert len(calls) == 2 and inbox.summary()["accepted"] == 1 and len(inbox.summary()["last"]) == 1


class _Uvicorn:
    """A MonitorService (no check loop, no Ray) behind uvicorn on loopback, as Serve would call it."""

    def __init__(self, service, port: int) -> None:
        import uvicorn
        from starlette.requests import Request

        async def app(scope, receive, send):
            response = await service(Request(scope, receive))
            await response(scope, receive, send)

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def _service(tmp_path: Path, port: int, api_key: str | None = None, **alerts):
    from raypipe.apikey import hash_key
    from raypipe.monitor.service import MonitorService

    data = _spec_data(tmp_path, **alerts)
    data["deploy"]["port"] = port
    return MonitorService(raypipe.load_spec(data).model_dump(mode="json", by_alias=True),
                          hash_key(api_key, NAME) if api_key else None, start=False)


def test_the_monitor_service_takes_the_webhook_and_its_accepted_alerts_reach_monitor_on_alert(tmp_path):
    port = free_port()
    service = _service(tmp_path, port, api_key="al-key")
    seen = []
    on_alert = service.monitor.on_alert
    service.monitor.on_alert = lambda alerts: (seen.append(alerts), on_alert(alerts))  # the hook, spied on
    url = f"http://127.0.0.1:{port}/al/monitor"
    key = {"Authorization": "Bearer al-key"}
    with _Uvicorn(service, port), httpx.Client(timeout=10) as http:
        assert http.post(f"{url}/alerts", json=_payload()).status_code == 401
        r = http.post(f"{url}/alerts", json=_payload(), headers=key)
        assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0, "resolved": 0}
        assert http.post(f"{url}/alerts", json=_payload(), headers=key).json()["duplicates"] == 1
        bad = http.post(f"{url}/alerts", content=b"{", headers=key)
        assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
        assert http.post(f"{url}/alerts", content=b"x" * 2_000_000, headers=key).status_code == 413
        status = http.get(f"{url}/status", headers=key).json()
    assert len(seen) == 1 and seen[0][0]["labels"]["feature"] == "hour"
    assert status["alerts"]["received"] == 1
    assert status["alerts"]["last"][0]["alertname"] == "RaypipeFeatureDrift" and status["alerts"]["last"][0]["received_at"]
    assert {k: status["inbox"][k] for k in ("posts", "accepted", "duplicates", "bad_posts")} == \
        {"posts": 2, "accepted": 1, "duplicates": 1, "bad_posts": 2}


# -- the real chain on loopback -------------------------------------------------------------------------
class _Exporter:
    """A metrics page on loopback holding the monitor's gauges as Ray exports them; values settable."""

    def __init__(self) -> None:
        self.values = {'ray_raypipe_feature_drift{pipeline="%s",version="1",feature="hour",statistic="psi",'
                       'Component="core_worker",SessionName="s"}' % NAME: 0.05,
                       'ray_raypipe_monitor_check_ok{pipeline="%s"}' % NAME: 1.0}
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                page = "".join(f"{k} {v}\n" for k, v in exporter.values.items()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set_drift(self, value: float) -> None:
        self.values[next(k for k in self.values if "feature_drift" in k)] = value


def test_drift_over_the_threshold_fires_in_prometheus_and_alertmanager_posts_it_to_the_monitor_once(tmp_path,
                                                                                                   capsys):
    """Prometheus (Debian's) scrapes the drift gauge and evaluates the rules `--emit-rules` wrote;
    Alertmanager (Debian's) routes with the configuration `--emit-alertmanager` wrote to a real
    MonitorService's POST /monitor/alerts. Drift under the threshold: nothing; over it for 2 windows:
    the alert fires, the monitor's hook gets it once (Alertmanager repeats it every second: duplicates);
    back under: resolved, still once."""
    from raypipe.serve.metrics_config import write_prometheus_config

    prometheus, alertmanager = _binary("prometheus"), _binary("prometheus-alertmanager")
    hook_port, prom_port, am_port = free_port(), free_port(), free_port()
    while len({hook_port, prom_port, am_port}) < 3:
        am_port = free_port()
    service = _service(tmp_path, hook_port, drift_windows=2, group_wait_s=0.5, group_interval_s=1,
                       repeat_interval_s=1)
    data = _spec_data(tmp_path, drift_windows=2, group_wait_s=0.5, group_interval_s=1, repeat_interval_s=1)
    data["deploy"]["port"] = hook_port
    data["monitor"]["interval_s"] = 1
    spec_file = tmp_path / "chain.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    rules, am_file = tmp_path / "rules.yml", tmp_path / "alertmanager.yml"
    code, _, err = monitor_cli(capsys, str(spec_file), "--emit-rules", str(rules), "--emit-alertmanager", str(am_file))
    assert code == 0, err
    exporter = _Exporter()
    sd = tmp_path / "targets.json"
    sd.write_text(json.dumps([{"targets": [f"127.0.0.1:{exporter.port}"], "labels": {}}]))
    config = write_prometheus_config(str(tmp_path / "prometheus.yml"), str(sd), scrape_interval_s=0.5,
                                     rule_files=[str(rules)], alertmanagers=[f"127.0.0.1:{am_port}"])
    procs, logs = [], []
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    status_url = f"http://127.0.0.1:{hook_port}/al/monitor/status"
    try:
        with _Uvicorn(service, hook_port), httpx.Client(timeout=10) as http:
            for name, cmd in (("alertmanager", [alertmanager, f"--config.file={am_file}",
                                                f"--storage.path={tmp_path / 'am-data'}",
                                                f"--web.listen-address=127.0.0.1:{am_port}",
                                                "--cluster.listen-address="]),
                              ("prometheus", [prometheus, f"--config.file={config}",
                                              f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                              f"--web.listen-address=127.0.0.1:{prom_port}"])):
                logs.append(open(tmp_path / f"{name}.log", "wb"))
                procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT))

            def logs_tail() -> str:
                return "\n".join(f"--- {p.name}:\n" + p.read_text(errors="replace")[-1500:]
                                 for p in (tmp_path / "alertmanager.log", tmp_path / "prometheus.log"))

            def wait(check, timeout, what):
                wait_while_serving(check, timeout, what, procs, logs_tail, every=0.25)

            def samples() -> int:
                r = http.get(f"{api}/query", params={"query": "count_over_time(ray_raypipe_feature_drift[1m])"})
                return int(float(r.json()["data"]["result"][0]["value"][1]))

            def prom_alerts() -> list[dict]:
                return http.get(f"{api}/alerts").json()["data"]["alerts"]

            def status() -> dict:
                return http.get(status_url).json()

            wait(lambda: samples() >= 8 and http.get(f"http://127.0.0.1:{am_port}/-/ready").status_code == 200,
                 60, "Prometheus to scrape the gauge 8 times, Alertmanager to be ready")
            assert [a for a in prom_alerts() if a["labels"]["alertname"] == "RaypipeFeatureDrift"] == []
            assert "alerts" not in status() and status()["inbox"]["posts"] == 0

            exporter.set_drift(0.5)
            wait(lambda: any(a["labels"]["alertname"] == "RaypipeFeatureDrift" and a["state"] == "firing"
                             for a in prom_alerts()), 60, "RaypipeFeatureDrift firing in Prometheus")
            wait(lambda: status().get("alerts", {}).get("received") == 1, 60, "the webhook post")
            wait(lambda: status()["inbox"]["duplicates"] >= 2, 60, "Alertmanager's repeats")
            s = status()
            assert s["alerts"]["received"] == 1, s["alerts"]
            alert = s["alerts"]["last"][0]
            assert alert["alertname"] == "RaypipeFeatureDrift" and alert["status"] == "firing"
            assert {k: alert["labels"][k] for k in ("pipeline", "feature", "version", "severity", "team", "category")} \
                == {"pipeline": NAME, "feature": "hour", "version": "1", "severity": "page", "team": "ml",
                    "category": "drift"}
            assert "0.5" in alert["annotations"]["description"]

            exporter.set_drift(0.05)
            wait(lambda: status()["inbox"]["resolved"] >= 1, 60, "the resolved post")
            assert status()["alerts"]["received"] == 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()
        exporter.server.shutdown()
