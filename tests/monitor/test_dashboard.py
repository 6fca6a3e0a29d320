"""`raypipe dashboard`: the Grafana dashboard as code, its upload, and its queries against a real Prometheus.

No Grafana server runs here (none in Debian 12, none on PyPI), so the dashboard is never rendered:
its JSON is checked against the grafana-foundation-sdk's model, its upload against a small HTTP
server that answers as Grafana's HTTP API does, and every PromQL query it holds runs against a
real Prometheus scraping a real endpoint and monitor after real traffic.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

import raypipe
from raypipe.cli import app
from raypipe.monitor import dashboard
from tests.conftest import free_port, small_spec
from tests.serve.helpers import wait_until_serving

ROWS = ["Traffic", "Model", "Data", "Quality", "Capacity"]


@pytest.fixture
def spec_file(tmp_path):
    data = small_spec(tmp_path / "store", name="t-dash", evaluate={"gate": {"min": {"roc_auc": 0.6, "accuracy": 0.7}}})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_dashboard_json_has_the_rows_variables_gate_lines_and_round_trips_through_the_sdk_model(spec_file, tmp_path):
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    out = tmp_path / "dashboard.json"
    result = CliRunner().invoke(app, ["dashboard", str(spec_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    board = json.loads(out.read_text())
    assert board["uid"] == "raypipe-t-dash" and board["title"] == "raypipe: t-dash"
    assert [p["title"] for p in board["panels"] if p["type"] == "row"] == ROWS
    assert [v["name"] for v in board["templating"]["list"]] == ["pipeline", "version"]
    version = board["templating"]["list"][1]
    assert version["multi"] and version["includeAll"] and version["allValue"] == ".*"
    assert [a["name"] for a in board["annotations"]["list"]] == ["promotions", "retrains"]
    # one quality panel per gate minimum, the minimum drawn as a threshold line
    quality = {p["title"]: p for p in board["panels"] if p["title"].endswith(")") and "gate minimum" in p["title"]}
    assert set(quality) == {"roc_auc (gate minimum 0.6)", "accuracy (gate minimum 0.7)"}
    auc = quality["roc_auc (gate minimum 0.6)"]["fieldConfig"]["defaults"]
    assert auc["thresholds"]["steps"][1] == {"value": 0.6, "color": "green"}
    assert auc["custom"]["thresholdsStyle"] == {"mode": "line"}
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) == 14 and all(p["datasource"]["uid"] == dashboard.DATASOURCE for p in panels)
    assert all(p["targets"] for p in panels)
    # rows stack: every panel lies below its row header and above the next
    ys = [p["gridPos"]["y"] for p in board["panels"]]
    assert ys == sorted(ys)
    # through the SDK's model and back: nothing lost, nothing the model does not know
    assert json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder)) == board


def test_the_monitor_exports_the_windows_invalid_rows_for_the_quarantine_panel():
    from raypipe.monitor.service import GAUGES, gauge_values

    summary = {"pipeline": "p", "reports": [{"version": 3, "rows": 200, "valid_rows": 188, "columns": {},
                                             "prediction_drift": None, "multivariate": {}, "performance": {}}]}
    values = {name: (tags, v) for name, tags, v in gauge_values(summary)}
    assert values["window_invalid_rows"] == ({"pipeline": "p", "version": "3"}, 12.0)
    assert values["window_rows"] == ({"pipeline": "p", "version": "3"}, 200.0)
    assert "window_invalid_rows" in GAUGES


class FakeGrafana(BaseHTTPRequestHandler):
    """Grafana's HTTP API as far as the upload uses it, checking method, path, auth and body shape."""

    token = "glsa_test-token"
    datasources: dict = {}
    dashboards: dict = {}
    calls: list = []

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        self.calls.append((self.command, self.path, body))
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._answer(401, {"message": "Unauthorized"})
        if self.command == "GET" and self.path.startswith("/api/datasources/name/"):
            name = self.path.rsplit("/", 1)[1]
            if name not in self.datasources:
                return self._answer(404, {"message": "Data source not found"})
            return self._answer(200, self.datasources[name])
        if self.command == "POST" and self.path == "/api/datasources":
            if not (isinstance(body, dict) and body.get("name") and body.get("type") and body.get("access")):
                return self._answer(400, {"message": "bad data source"})
            self.datasources[body["name"]] = {**body, "id": len(self.datasources) + 1}
            return self._answer(200, {"message": "Datasource added", "id": len(self.datasources), "name": body["name"],
                                      "datasource": self.datasources[body["name"]]})
        if self.command == "POST" and self.path == "/api/dashboards/db":
            d = (body or {}).get("dashboard")
            if not (isinstance(d, dict) and d.get("title") and d.get("uid") and isinstance(d.get("panels"), list)
                    and d.get("id") is None and set(body) <= {"dashboard", "overwrite", "folderUid", "message"}):
                return self._answer(400, {"message": "bad dashboard"})
            if d["uid"] in self.dashboards and not body.get("overwrite"):
                return self._answer(412, {"status": "version-mismatch", "message": "exists"})
            version = self.dashboards.get(d["uid"], {}).get("version", 0) + 1
            self.dashboards[d["uid"]] = {"dashboard": d, "folderUid": body.get("folderUid"), "version": version}
            return self._answer(200, {"id": 1, "uid": d["uid"], "url": f"/d/{d['uid']}/raypipe", "status": "success",
                                      "version": version, "slug": "raypipe"})
        return self._answer(404, {"message": "Not found"})

    do_GET = do_POST = _handle

    def log_message(self, *args) -> None:
        pass


def test_publish_creates_the_missing_data_source_then_uploads_and_never_shows_the_token(spec_file, monkeypatch):
    FakeGrafana.datasources, FakeGrafana.dashboards, FakeGrafana.calls = {}, {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["dashboard", str(spec_file), "--publish", url, "--token-env", "RP_GRAFANA", "--prometheus-url",
            "http://prom:9090", "--folder-uid", "ml"]
    try:
        monkeypatch.setenv("RP_GRAFANA", FakeGrafana.token)
        first = CliRunner().invoke(app, args)
        assert first.exit_code == 0, first.output
        assert [(m, p) for m, p, _ in FakeGrafana.calls] == [
            ("GET", f"/api/datasources/name/{dashboard.DATASOURCE}"), ("POST", "/api/datasources"),
            ("POST", "/api/dashboards/db")]
        ds = FakeGrafana.datasources[dashboard.DATASOURCE]
        assert ds["type"] == "prometheus" and ds["url"] == "http://prom:9090" and ds["uid"] == dashboard.DATASOURCE
        stored = FakeGrafana.dashboards["raypipe-t-dash"]
        assert stored["folderUid"] == "ml" and stored["version"] == 1
        assert stored["dashboard"]["panels"] == dashboard.to_json(raypipe.load_spec(spec_file))["panels"]
        assert "data source created" in first.output and FakeGrafana.token not in first.output

        FakeGrafana.calls = []  # again: the data source is there now, the dashboard is overwritten
        again = CliRunner().invoke(app, args)
        assert again.exit_code == 0, again.output
        assert [(m, p) for m, p, _ in FakeGrafana.calls] == [
            ("GET", f"/api/datasources/name/{dashboard.DATASOURCE}"), ("POST", "/api/dashboards/db")]
        assert FakeGrafana.dashboards["raypipe-t-dash"]["version"] == 2 and "data source exists" in again.output

        monkeypatch.setenv("RP_GRAFANA", "wrong")  # Grafana refuses: the command fails, no upload
        FakeGrafana.calls = []
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code != 0 and [m for m, _, _ in FakeGrafana.calls] == ["GET"]
        monkeypatch.delenv("RP_GRAFANA")
        missing = CliRunner().invoke(app, args)
        assert missing.exit_code != 0 and "RP_GRAFANA" in str(missing.exception)
    finally:
        server.shutdown()


SERVER = """
import sys
import raypipe.api
spec = raypipe.api.as_spec(sys.argv[1])
endpoint = raypipe.api.serve(spec)
print("monitor", raypipe.api.monitor_serve(spec), flush=True)
endpoint.wait()
"""


def _has_sent_refusal(where: str, found: list) -> bool:
    """The refusals this test sends (422, schema) are among the series of the panels that break them down."""
    label = {"panel '4xx / 5xx by code' A": ("status_code", "422"), "panel 'rejected requests' A": ("reason", "schema")}
    if where not in label:
        return True
    key, value = label[where]
    return any(r["metric"].get(key) == value for r in found)


def test_every_dashboard_query_returns_data_from_a_real_prometheus_after_real_traffic(ray_session, tmp_path):
    """A fresh Ray (a subprocess serving the endpoint, with a shadow, and the monitor) scraped by
    Debian's Prometheus with raypipe's scrape config: each panel target, variable and annotation,
    its variables filled in as Grafana would, answers at least one series."""
    from raypipe.progress import Progress
    from raypipe.registry import Registry
    from raypipe.serve.deploy import sample_request
    from raypipe.serve.metrics_config import SD_FILE, write_prometheus_config
    from tests.serve.test_rollout import _scrape_report

    binary = shutil.which("prometheus")
    assert binary, "needs Prometheus: apt-get install prometheus (scripts/test-deps.sh installs it)"
    data = small_spec(tmp_path / "store", name="t-dash", deploy={"port": free_port(), "route_prefix": "/dash",
                                                                 "shadow": True,
                                                                 "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
                      monitor={"log": {"flush_rows": 1000, "flush_seconds": 0.5}, "drift": {"min_rows": 50},
                               "interval_s": 2, "window_s": 3600})
    result = raypipe.run(data, progress=Progress(quiet=True))
    assert result.status == "ok"
    v = result.version
    Registry(raypipe.load_spec(data).storage, "t-dash").set_alias("challenger", v, reason="test: shadow itself")
    rows = sample_request(raypipe.load_spec(data), v, n=20)
    board = dashboard.to_json(raypipe.load_spec(data))

    ray_dir = Path(tempfile.mkdtemp(prefix="rp-dash-", dir="/tmp"))  # short: Ray's socket paths stop at 107 bytes
    data.setdefault("ray", {})["temp_dir"] = str(ray_dir)
    spec_file = tmp_path / "served.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    server_log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(spec_file)], stdout=server_log,
                              stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    url = f"http://127.0.0.1:{data['deploy']['port']}/dash"
    proc, log = None, None
    try:
        wait_until_serving(server, f"{url}/monitor/status", 240, tmp_path / "serve.log")
        config = write_prometheus_config(str(tmp_path / "prometheus.yml"), str(ray_dir / SD_FILE), scrape_interval_s=2)
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{port}/api/v1"

        def fill(expr: str) -> str:  # Grafana's variables as Grafana fills them: one pipeline, version All
            return (expr.replace("$__rate_interval", "1m").replace("$pipeline", "t-dash").replace("$version", ".*"))

        def answer(expr: str) -> list:
            if expr.startswith("label_values("):  # a variable: Grafana asks the series API for the label's values
                selector, label = expr[len("label_values("):-1].rsplit(",", 1)
                r = httpx.get(f"{api}/label/{label.strip()}/values", params={"match[]": fill(selector)}, timeout=10)
                return r.json()["data"]
            return httpx.get(f"{api}/query", params={"query": fill(expr)}, timeout=10).json()["data"]["result"]

        wanted = dict(dashboard.queries(board))
        assert len(wanted) == 18, wanted  # 14 targets (one gate metric), 2 variables, 2 annotations
        missing, seen = dict(wanted), {}
        deadline = time.monotonic() + 240
        with httpx.Client(timeout=30) as http:
            while missing:
                assert http.post(f"{url}/predict", json=rows).status_code == 200
                assert http.post(f"{url}/predict", json={**rows[0], "nope": 1}).status_code == 422
                for where, expr in list(missing.items()):
                    try:
                        found = answer(expr)
                    except (httpx.HTTPError, KeyError):
                        continue  # Prometheus still starting
                    # a rate over a window where nothing moved yet is NaN (0/0): data, but not the answer to keep;
                    # the panels by code and reason wait for the series of the 422s sent here (a transient 404 of
                    # the ingress while it learns the route can reach Prometheus first)
                    if found and not any(isinstance(r, dict) and r["value"][1] == "NaN" for r in found) \
                            and _has_sent_refusal(where, found):
                        seen[where] = found
                        del missing[where]
                assert time.monotonic() < deadline, _scrape_report(api, config, tmp_path / "prometheus.log", missing)
                time.sleep(1)
        assert seen["variable pipeline"] == ["t-dash"] and seen["variable version"] == [str(v)]
        # the shadow is the champion itself: every shadow answer agrees; no row of the log is quarantined
        assert [float(r["value"][1]) for r in seen["panel 'shadow agreement' A"]] == [1.0]
        assert [float(r["value"][1]) for r in seen["panel 'quarantine rate' A"]] == [0.0]
        assert {r["metric"]["status_code"] for r in seen["panel '4xx / 5xx by code' A"]} >= {"422"}
        assert {r["metric"]["reason"] for r in seen["panel 'rejected requests' A"]} >= {"schema"}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
            log.close()
        server.send_signal(signal.SIGINT)  # Endpoint.wait shuts Serve down on Ctrl-C, and the Ray with the process
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        shutil.rmtree(ray_dir, ignore_errors=True)
