"""Model swaps and traffic splits on a live endpoint: promotion under load with zero failed
requests, a canary share, and shadow scoring that never changes a response."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

import raypipe
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.serve.deploy import deploy, sample_request
from tests.conftest import free_port, small_spec
from tests.serve.helpers import ClosedLoop, replicas, wait_until_serving, with_deploy


@pytest.fixture(scope="module")
def two_versions(ray_session, tmp_path_factory):
    """Two registered versions of one pipeline (different regularisation), v1 the champion."""
    storage = tmp_path_factory.mktemp("rollout") / "store"
    spec = raypipe.load_spec(small_spec(storage, name="t-rollout", deploy={"port": free_port()}))
    first = raypipe.run(spec, progress=Progress(quiet=True))
    other = raypipe.load_spec(small_spec(storage, name="t-rollout", deploy={"port": spec.deploy.port},
                                         model={"kind": "sklearn:sklearn.linear_model:LogisticRegression",
                                                "params": {"max_iter": 300, "C": 0.01}}))
    second = raypipe.run(other, progress=Progress(quiet=True))
    assert second.version == first.version + 1
    reg = Registry(spec.storage, spec.name)
    reg.set_alias("champion", first.version, reason="test: v1 serves first")
    reg.set_alias("challenger", second.version, reason="test")
    return spec, reg, first.version, second.version, sample_request(spec, first.version, n=8)


def test_promotion_under_load_swaps_in_place_with_zero_failures(two_versions):
    spec, reg, v1, v2, rows = two_versions
    s = with_deploy(spec, route_prefix="/swap", autoscaling={"min_replicas": 2, "max_replicas": 2})
    endpoint = deploy(s, app_name="swap")
    assert endpoint.version == v1
    pids_before = set(replicas("swap").values())
    try:
        with ClosedLoop(endpoint.url, rows, clients=6) as load:
            time.sleep(3)
            reg.set_alias("champion", v2, reason="test: promote under load")
            swapped = deploy(s, app_name="swap")  # same spec, new champion: reconfigure on the running replicas
            _wait_running("swap")
            switched_at = time.monotonic()
            assert swapped.version == v2
            time.sleep(3)
    finally:
        reg.set_alias("champion", v1, reason="test: restore")
    assert not load.failures, load.failures[:5]
    before = Counter(v for t, _, v in load.answers if t < switched_at)
    after = Counter(v for t, _, v in load.answers if t >= switched_at)
    assert before[v1] > 20 and after[v2] > 20, (before, after)
    assert set(after) == {v2}, after  # every request sent after the swap returned is answered by v2
    assert len(pids_before) == 2 and set(replicas("swap").values()) == pids_before  # updated in place: no replica restarted


def test_canary_share_and_shadow_scoring(two_versions):
    spec, reg, v1, v2, rows = two_versions
    canary = deploy(with_deploy(spec, route_prefix="/canary", canary={"alias": "challenger", "percent": 30}),
                    app_name="canary")
    with httpx.Client(timeout=30) as http:
        versions = Counter(http.post(f"{canary.url}/predict", json=rows[i % len(rows)]).json()["version"]
                           for i in range(300))
    assert set(versions) == {v1, v2}
    assert 0.18 <= versions[v2] / 300 <= 0.42, versions  # 30 % +- 4 standard deviations
    meta = httpx.get(f"{canary.url}/metadata", timeout=30).json()
    assert meta["version"] == v1 and meta["challenger"] == {"version": v2, "canary_percent": 30.0, "shadow": False}

    shadow = deploy(with_deploy(spec, route_prefix="/shadow", shadow=True), app_name="shadow")
    champion = raypipe.model.predictor.Predictor.from_version(reg.version_store(v1), v1).predict_records(rows)
    with httpx.Client(timeout=30) as http:
        answers = [http.post(f"{shadow.url}/predict", json=row).json() for row in rows]
    assert {a["version"] for a in answers} == {v1}  # shadow never answers
    # Equal up to float32 rounding: the replica scores its own batch, whose size changes BLAS's summation order.
    assert [a["scores"]["1"] for a in answers] == pytest.approx([c["scores"]["1"] for c in champion], rel=1e-6)


def _wait_running(app: str, timeout: float = 60) -> None:
    """Until Serve reports the application RUNNING (every replica updated)."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while serve.status().applications[app].status != "RUNNING":
        assert time.monotonic() < deadline, serve.status().applications[app]
        time.sleep(0.1)


def test_prometheus_scrapes_serve_and_raypipe_metrics(two_versions, tmp_path):
    """A real Prometheus (Debian's package) scraping a Ray that serves with `raypipe serve`, with the
    configuration raypipe writes.

    That Ray is a fresh one (`raypipe serve` in a subprocess, as a user runs it): a node's
    metrics page keeps every Ray Data series of the Ray's life, and the session Ray's was
    28 MB, 32 s to answer, late in the suite, over any scrape timeout.
    """
    import signal
    import sys

    import yaml

    from raypipe.serve.metrics_config import SD_FILE, write_prometheus_config

    binary = shutil.which("prometheus")
    assert binary, "needs Prometheus: apt-get install prometheus (.ci/run installs it)"
    spec, _, v1, v2, rows = two_versions
    data = with_deploy(spec, route_prefix="/observed", shadow=True, port=free_port()).model_dump(mode="json", by_alias=True)
    ray_dir = Path(tempfile.mkdtemp(prefix="rp-prom-", dir="/tmp"))  # short: Ray's socket paths stop at 107 bytes
    data["ray"]["temp_dir"] = str(ray_dir)
    spec_file = tmp_path / "observed.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    server_log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "raypipe", "serve", str(spec_file), "--blocking"],
                              stdout=server_log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{data['deploy']['port']}/observed"
    proc, log = None, None
    try:
        wait_until_serving(server, f"{url}/healthz", 180, tmp_path / "serve.log")
        config = write_prometheus_config(str(tmp_path / "prometheus.yml"), str(ray_dir / SD_FILE),
                                         scrape_interval_s=2)
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{port}/api/v1"

        def value(query: str) -> float:
            result = httpx.get(f"{api}/query", params={"query": query}, timeout=10).json()["data"]["result"]
            return sum(float(r["value"][1]) for r in result)

        app = f'application="{spec.name}"'
        wanted = {
            "champion answers": f'sum(ray_raypipe_predictions_total{{{app},role="champion"}})',
            "shadow answers": f'sum(ray_raypipe_predictions_total{{{app},role="shadow",version="{v2}"}})',
            "shadow agreement": f'sum(ray_raypipe_shadow_agreement_total{{{app}}})',
            "rejections": f'sum(ray_raypipe_rejected_requests_total{{{app},reason="schema"}})',
            "batch sizes": f'sum(ray_raypipe_batch_size_count{{{app}}})',
            "version info": f'max(ray_raypipe_model_version_info{{{app},role="champion",version="{v1}"}})',
            "serve requests": f'sum(ray_serve_deployment_request_counter_total{{{app}}})',
            "serve latency": f'sum(ray_serve_deployment_processing_latency_ms_count{{{app}}})',
            # from the replica, with HAProxy's own request metrics off (runtime.serve_env)
            "serve http requests": f'sum(ray_serve_num_http_requests_total{{{app},status_code="200"}})',
            # the prediction log (monitor.log, on by default): rows accepted, then written within flush_seconds
            "log rows buffered": f'sum(ray_raypipe_prediction_log_rows_total{{{app},state="buffered"}})',
            "log rows written": f'sum(ray_raypipe_prediction_log_rows_total{{{app},state="written"}})',
        }
        deadline, missing = time.monotonic() + 150, dict(wanted)
        with httpx.Client(timeout=30) as http:
            while missing:
                for row in rows:
                    assert http.post(f"{url}/predict", json=row).status_code == 200
                assert http.post(f"{url}/predict", json={**rows[0], "nope": 1}).status_code == 422
                try:
                    missing = {k: q for k, q in missing.items() if value(q) <= 0}
                except (httpx.HTTPError, KeyError):
                    pass  # Prometheus still starting
                assert time.monotonic() < deadline, _scrape_report(api, config, tmp_path / "prometheus.log", missing)
                time.sleep(1)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
            log.close()
        server.send_signal(signal.SIGINT)  # `raypipe serve --blocking` shuts Serve and its Ray down on Ctrl-C
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        shutil.rmtree(ray_dir, ignore_errors=True)


def _scrape_report(api: str, config: str, log_file, missing: dict) -> str:
    """What Prometheus saw, for a failure message: its targets (URL, health, last error) and its log."""
    try:
        targets = [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError")}
                   for t in httpx.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]]
        for t in targets:  # how long a node takes to answer, and how much
            start = time.monotonic()
            page = httpx.get(t["scrapeUrl"], timeout=60).content
            t["fetch"] = f"{len(page)} bytes in {time.monotonic() - start:.2f} s"
    except Exception as e:  # noqa: BLE001 - a report, never the failure itself
        targets = f"targets unavailable: {e!r}"
    import yaml

    sd_file = yaml.safe_load(open(config))["scrape_configs"][0]["file_sd_configs"][0]["files"][0]
    sd = open(sd_file).read() if os.path.exists(sd_file) else f"{sd_file} missing"
    log_tail = open(log_file, errors="replace").read()[-2000:]
    return f"never scraped with a value > 0: {sorted(missing)}; targets: {targets}; service discovery: {sd}; log: {log_tail}"


def test_emitted_serve_config_is_what_serve_deploy_accepts(two_versions, tmp_path):
    """`raypipe serve --emit-config` -> Serve's own schema -> the declarative deploy path `serve deploy` uses."""
    import yaml
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema
    from typer.testing import CliRunner

    from raypipe.cli import app

    spec, _, v1, _, rows = two_versions
    spec_file = tmp_path / "pipeline.yaml"
    data = spec.model_dump(mode="json", by_alias=True)
    data["deploy"]["route_prefix"] = "/declared"
    spec_file.write_text(yaml.safe_dump(data))
    out, manifest = tmp_path / "serve.yaml", tmp_path / "rayservice.yaml"
    result = CliRunner().invoke(app, ["serve", str(spec_file), "--emit-config", str(out), "--rayservice", str(manifest)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "raypipe.serve.app:build_app"
    assert application["deployments"][0]["user_config"]["champion"]["version"] == v1
    service = yaml.safe_load(manifest.read_text())
    assert service["kind"] == "RayService" and yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    # Serve's declarative path (as `serve deploy`): it would delete other *declared* apps; serve.run's stay.
    running = _get_global_client().http_config  # the session's Serve keeps the port it started with
    config["http_options"] = {"host": running.host, "port": running.port}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    url = f"http://127.0.0.1:{running.port}/declared/predict"
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.post(url, json=rows[0], timeout=10)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the declared application never answered"
        time.sleep(0.5)
    assert r.json()["version"] == v1
    serve.delete(spec.name)


def test_checked_in_rayservice_example_is_what_raypipe_emits():
    """clusters/kuberay-rayservice.yaml is a copy of `--rayservice` output: regenerated from its own
    serveConfigV2 and the example's spec it must come out the same (Serve settings included)."""
    import yaml

    from raypipe.serve.deploy import rayservice_manifest

    root = Path(__file__).resolve().parents[2]
    checked_in = yaml.safe_load((root / "clusters" / "kuberay-rayservice.yaml").read_text())
    spec = raypipe.load_spec(root / "examples" / "fraud_detection" / "pipeline.yaml")
    assert rayservice_manifest(spec, yaml.safe_load(checked_in["spec"]["serveConfigV2"])) == checked_in
