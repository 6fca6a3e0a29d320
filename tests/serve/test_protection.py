"""Endpoints that bad input cannot break: a fuzz of malformed payloads, API keys, size limits,
time-outs, back-pressure and health, each against a live Serve application over HTTP."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import raypipe
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.serve.deploy import sample_request
from tests.conftest import free_port, small_spec
from tests.serve.helpers import with_deploy

KEY_ENV = "RAYPIPE_TEST_API_KEY"


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    """One trained pipeline; each test deploys it under its own name and settings."""
    storage = tmp_path_factory.mktemp("protect") / "store"
    spec = raypipe.load_spec(small_spec(storage, name="t-protect", deploy={"port": free_port()}))
    result = raypipe.run(spec, progress=Progress(quiet=True))
    rows = sample_request(spec, result.version, n=8)
    return spec, result, rows


def deployed(spec: Any, name: str, **deploy: Any) -> tuple[Any, Any]:
    """The trained version served as its own application ``name`` (route /name) with these deploy settings."""
    from raypipe.serve.deploy import deploy as serve_deploy

    s = with_deploy(spec, **deploy, route_prefix=f"/{name}")
    return s, serve_deploy(s, app_name=name)


VALID = {"number": (int, float), "integer": (int,), "boolean": (bool,), "string": (str,), "text": (str,)}


def valid_for(kind: str, value: Any) -> bool:
    if isinstance(value, bool) and kind != "boolean":
        return False
    return isinstance(value, VALID[kind])


def malformed(row: dict[str, Any], types: dict[str, str], required: set[str]) -> list[tuple[str, bytes, dict[str, str]]]:
    """(what, body, headers) for >= 1,000 payloads that must each get a 4xx (``types``: column -> schema type)."""
    schema_cols = list(types)
    rng = random.Random(0)
    js = {"content-type": "application/json"}
    out: list[tuple[str, bytes, dict[str, str]]] = []

    def add(what: str, value: Any, headers: dict[str, str] = js) -> None:
        out.append((what, value if isinstance(value, bytes) else json.dumps(value).encode(), headers))

    wrong_values = ["text", "", "12", True, False, [], [1, 2], {}, {"a": 1}]
    huge = ["1e999", "-1e999", "1" + "0" * 400, "-1" + "0" * 400]  # beyond float64: inf, or an int too big
    for col in schema_cols:
        for v in wrong_values:
            bad = dict(row)
            bad[col] = v
            if valid_for(types[col], v):
                continue  # a value of the column's own type (a category, a flag) is valid
            add(f"{col}={v!r}", bad)
        if types[col] in ("number", "integer"):
            for token in huge + ["NaN", "Infinity", "-Infinity"]:  # too big for float64/int64, or not finite
                body = json.dumps({**row, col: "__X__"}).replace('"__X__"', token).encode()
                out.append((f"{col}={token[:12]}", body, js))
            if types[col] == "integer":
                add(f"{col} float for integer", {**row, col: 0.5})
                for v in (2**63, -(2**63) - 1, 10**30):  # beyond int64
                    add(f"{col}={v}", {**row, col: v})
        if col in required:
            add(f"missing {col}", {k: v for k, v in row.items() if k != col})
    for i in range(120):
        add(f"extra field {i}", {**row, f"extra_{i}": rng.choice([1, "x", None, [1]])})
    for depth in (64, 1_000, 10_000, 100_000):
        out.append((f"deep array {depth}", b"[" * depth + b"]" * depth, js))
        out.append((f"deep object {depth}", b'{"a":' * depth + b"1" + b"}" * depth, js))
        nested = json.dumps({**row, schema_cols[0]: "__X__"}).replace('"__X__"', "[" * depth + "]" * depth)
        out.append((f"deep field {depth}", nested.encode(), js))
    for ctype in ("text/plain", "application/xml", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                  "image/png", "application/octet-stream"):
        out.append((f"content-type {ctype}", json.dumps(row).encode(), {"content-type": ctype}))
    for body in (b"", b" ", b"\n\t ", b"null", b"0", b"-1", b'"row"', b"true", b"[null]", b"[1, 2]", b'[{"a": 1}]',
                 b"{", b"}", b"[", b'{"amount": }', b"{'single': 'quotes'}", b"\xff\xfe\x00", b"\x00" * 64,
                 json.dumps(row).encode()[:-1], json.dumps(row).encode() + b"garbage"):
        add(f"body {body[:20]!r}", body)
    for i in range(1000):  # random bytes, and random single-byte corruptions of a valid body
        if i % 2:
            add(f"random bytes {i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        else:
            good = bytearray(json.dumps(row).encode())
            for _ in range(3):
                good[rng.randrange(len(good))] = rng.choice(b'{}[]",:xX\\\x00')
            try:
                parsed = json.loads(good)
                if isinstance(parsed, dict) and set(parsed) == set(row):
                    continue  # the corruption kept a valid row: not malformed
            except ValueError:
                pass
            add(f"corrupted {i}", bytes(good))
    for i in range(60):  # lists with one bad row among good ones
        rows = [dict(row) for _ in range(5)]
        rows[i % 5][schema_cols[i % len(schema_cols)]] = ["wrong"]
        add(f"list with bad row {i}", rows)
    return out


def test_fuzz_1000_malformed_payloads_each_get_a_4xx_and_the_endpoint_keeps_answering(trained):
    spec, _, rows = trained
    _, endpoint = deployed(spec, "fuzz")
    schema = Registry(spec.storage, spec.name).version_store(endpoint.version).read_json("schema.json")
    cols = [c for c in rows[0] if c not in schema["id_columns"]]
    required = {c for c in cols if not schema["columns"][c].get("nullable", True)}
    assert required, "the built-in data should have required columns"
    cases = malformed(rows[0], {c: schema["columns"][c]["type"] for c in cols}, required)
    assert len(cases) >= 1000, len(cases)

    def send(case: tuple[str, bytes, dict[str, str]]) -> tuple[str, int, Any]:
        what, body, headers = case
        r = http.post(f"{endpoint.url}/predict", content=body, headers=headers)
        try:
            reason = r.json().get("error")
        except ValueError:
            reason = r.text[:80]
        return what, r.status_code, reason

    # One client for all threads: a new httpx client per request costs ~54 ms of CPU here.
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=8)) as http, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, cases))
    not_4xx = [(w, c, r) for w, c, r in answers if not 400 <= c < 500]
    assert not not_4xx, not_4xx[:10]
    assert all(reason for _, _, reason in answers)  # every refusal says why
    codes = {c for _, c, _ in answers}
    assert {400, 415, 422} <= codes
    ok = httpx.post(f"{endpoint.url}/predict", json=rows[1], timeout=30)
    assert ok.status_code == 200 and ok.json()["version"] == endpoint.version
    health = httpx.get(f"{endpoint.url}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_api_key_is_required_compared_and_never_stored_or_logged(trained, monkeypatch, ray_session):
    spec, _, rows = trained
    key = "rp-" + os.urandom(16).hex()
    monkeypatch.setenv(KEY_ENV, key)
    _, endpoint = deployed(spec, "auth", auth={"api_key_env": KEY_ENV})
    url = f"{endpoint.url}/predict"
    assert httpx.post(url, json=rows[0], timeout=30).status_code == 401
    wrong = httpx.post(url, json=rows[0], headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert httpx.post(url, json=rows[0], headers={"X-API-Key": key[:-1]}, timeout=30).status_code == 401
    assert httpx.post(url, json=rows[0], headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    assert httpx.post(url, json=rows[0], headers={"X-API-Key": key}, timeout=30).status_code == 200
    # Lineage, the schema and the docs need the key too; only the health check answers without it.
    for route in ("metadata", "docs", "openapi.json"):
        assert httpx.get(f"{endpoint.url}/{route}", timeout=30).status_code == 401, route
        assert httpx.get(f"{endpoint.url}/{route}", headers={"X-API-Key": key}, timeout=30).status_code == 200, route
    assert httpx.get(f"{endpoint.url}/healthz", timeout=30).status_code == 200
    # The replicas got only its digest: the key is in no Serve config and no Ray log.
    from ray.serve.context import _get_global_client

    details = json.dumps(_get_global_client().get_serve_details(), default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert key not in details and digest not in details  # no fast digest either: a salted scrypt hash (test_apikey)
    session = Path(ray_session._private.worker._global_node.get_session_dir_path())
    for path in glob.glob(str(session / "logs" / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            data = Path(path).read_bytes()
            assert key.encode() not in data and digest.encode() not in data, path


def test_bad_deploy_settings_are_spec_errors(monkeypatch):
    """Checked before anything is deployed: each names its field, the value and the fix."""
    from types import SimpleNamespace

    from raypipe.errors import SpecError
    from raypipe.serve.deploy import api_key_digest, serving_config

    monkeypatch.delenv(KEY_ENV, raising=False)
    spec = SimpleNamespace(name="p", deploy=SimpleNamespace(auth=SimpleNamespace(api_key_env=KEY_ENV)))
    with pytest.raises(SpecError, match=f"deploy.auth.api_key_env: .*{KEY_ENV}.*export it"):
        api_key_digest(spec)
    reg = SimpleNamespace(aliases=lambda: {}, version_store=lambda v: SimpleNamespace(full_uri=lambda: "/m"),
                          check_version=lambda v: "0" * 64)
    spec.deploy = SimpleNamespace(shadow=False, canary=SimpleNamespace(alias="beta", percent=10.0))
    with pytest.raises(SpecError, match=r"deploy.canary.alias: no registry alias 'beta' in 'p'.*--alias beta"):
        serving_config(spec, reg, 1)
    spec.deploy = SimpleNamespace(shadow=True, canary=None)
    with pytest.raises(SpecError, match=r"deploy.shadow: no registry alias 'challenger'"):
        serving_config(spec, reg, 1)


def test_missing_api_key_variable_is_a_clear_error(trained, monkeypatch):
    spec, _, _ = trained
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=f"deploy.auth.api_key_env.*{KEY_ENV}"):
        deployed(spec, "auth-missing", auth={"api_key_env": KEY_ENV})


def test_body_limit_413_and_timeout_408(trained):
    spec, _, rows = trained
    _, small = deployed(spec, "small", max_body_bytes=4096)
    big = [rows[0]] * 100
    r = httpx.post(f"{small.url}/predict", json=big, timeout=30)
    assert r.status_code == 413 and "deploy.max_body_bytes" in r.json()["error"]
    assert httpx.post(f"{small.url}/predict", json=rows[:2], timeout=30).status_code == 200
    # a time-out shorter than the batch wait: every prediction is answered with a 408, fast
    _, hasty = deployed(spec, "hasty", request_timeout_s=0.001, batching={"max_batch_size": 64, "batch_wait_timeout_s": 0.5})
    t0 = time.monotonic()
    r = httpx.post(f"{hasty.url}/predict", json=rows[0], timeout=30)
    assert r.status_code == 408 and "deploy.request_timeout_s" in r.json()["error"]
    assert time.monotonic() - t0 < 0.5


def test_back_pressure_answers_503_fast_and_never_hangs(trained):
    spec, _, rows = trained
    _, tight = deployed(spec, "tight", max_ongoing_requests=1, max_queued_requests=1,
                        batching={"max_batch_size": 1, "batch_wait_timeout_s": 0.0})
    payload = [rows[0]] * 2000  # each request takes a while to score

    def send(_: int) -> tuple[int, float]:
        t0 = time.monotonic()
        r = httpx.post(f"{tight.url}/predict", json=payload, timeout=60)
        return r.status_code, time.monotonic() - t0

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(send, range(64)))
    codes = [c for c, _ in answers]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) > 0
    assert max(t for c, t in answers if c == 503) < 10


def test_check_health_fails_until_a_model_is_loaded(trained):
    """Serve's health check: a replica without a model (before reconfigure, or after a failed first load) is unhealthy."""
    from raypipe.registry import Registry as Reg
    from raypipe.serve.app import ModelServer

    spec, result, _ = trained
    server = ModelServer(spec.name)
    with pytest.raises(RuntimeError, match="model not loaded"):
        server.check_health()
    uri = Reg(spec.storage, spec.name).version_store(result.version).full_uri()
    with pytest.raises(Exception):
        server.reconfigure({"champion": {"uri": uri + "-gone", "version": result.version + 99}})
    with pytest.raises(RuntimeError, match="model not loaded"):
        server.check_health()  # a failed load leaves it unhealthy, not half-configured
    server.reconfigure({"champion": {"uri": uri, "version": result.version}})
    server.check_health()
    assert server.routing.champion.version == result.version


def test_a_planted_factory_is_refused_by_predict_and_by_a_replica(trained, tmp_path):
    """A version whose re-sealed model.json names torch.hub.load on a local folder: no process runs it."""
    import pandas as pd

    from raypipe.errors import ArtifactError
    from tests.test_registry import planted_factory_version

    spec, result, rows = trained
    v, canary = planted_factory_version(tmp_path, Registry(spec.storage, spec.name), source_version=result.version)
    src = tmp_path / "rows.parquet"
    pd.DataFrame.from_records(rows).to_parquet(src)
    with pytest.raises(ArtifactError, match="does not trust"):
        raypipe.predict(spec, str(src), str(tmp_path / "out"), version=v)
    from ray import serve

    from raypipe.serve.deploy import deploy as serve_deploy

    try:
        with pytest.raises(Exception):  # every replica refuses to load it, so the deployment fails
            serve_deploy(with_deploy(spec, route_prefix="/planted"), version=v, app_name="planted")
    finally:
        serve.delete("planted")
    assert not canary.exists()


def test_a_client_that_never_finishes_its_body_gets_a_408_and_holds_no_slot(trained):
    import socket
    from urllib.parse import urlsplit

    spec, _, rows = trained
    _, endpoint = deployed(spec, "slow", request_timeout_s=2.0)
    url = urlsplit(endpoint.url)
    slow = []
    for _ in range(4):  # more stalled bodies than the replica's batch would hold
        s = socket.create_connection((url.hostname, url.port), timeout=60)
        s.sendall(f"POST {url.path}/predict HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
                  "Content-Length: 1000\r\n\r\n{\"amount\": ".encode())
        slow.append(s)
    ok = httpx.post(f"{endpoint.url}/predict", json=rows[0], timeout=30)  # answered while they stall
    assert ok.status_code == 200
    for s in slow:
        with s:
            status = s.recv(4096).split(b"\r\n", 1)[0]  # the socket's 60 s timeout: an answer must come before
            assert b" 408 " in status, status
