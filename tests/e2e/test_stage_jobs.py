"""One stage at a time (``--only``, an orchestrator's task per stage) and stage retries (``runner.retries``)
on a real local Ray, with a real HTTP API that drops its first connections."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

import raypipe
from raypipe.errors import HttpSourceError, SpecError
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.runtime import free_port
from raypipe.runner import STAGE_NAMES
from tests.conftest import small_spec, statuses

quiet = Progress(quiet=True)


def _manifest(result) -> dict:
    return json.loads(Path(result.manifest_path).read_text())


def test_only_needs_the_earlier_stages(tmp_path):
    spec = small_spec(tmp_path / "store", name="t-only-missing", rows=500)
    with pytest.raises(SpecError) as info:
        raypipe.run(spec, only="features", progress=quiet)
    text = str(info.value)
    assert "--only features needs the 'ingest' stage complete, with fingerprint" in text
    assert "raypipe run SPEC --until ingest" in text
    # the command exits 2 with that message, before any Ray starts
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "raypipe", "run", str(path), "--only", "train"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs the 'ingest' stage complete" in proc.stderr, proc.stderr[-2000:]
    with pytest.raises(SpecError, match="drop --until"):
        raypipe.run(spec, only="train", until="evaluate", progress=quiet)
    with pytest.raises(SpecError, match="'deploy' is not a stage"):
        raypipe.run(spec, only="deploy", progress=quiet)


def test_each_stage_alone_then_the_whole_run_is_cached(ray_session, tmp_path):
    spec = small_spec(tmp_path / "store", name="t-only", rows=1500)
    for i, name in enumerate(STAGE_NAMES):
        result = raypipe.run(spec, only=name, progress=quiet)
        assert statuses(result) == {**{s: "cached" for s in STAGE_NAMES[:i]}, name: "ran"}, name
        assert _manifest(result)["only"] == name
    assert result.version == 1 and Registry(str(tmp_path / "store"), "t-only").alias("champion") == 1
    assert result.metrics["roc_auc"] > 0.6  # register's run reports the evaluation it registered
    again = raypipe.run(spec, progress=quiet)
    assert statuses(again) == {s: "cached" for s in STAGE_NAMES} and again.version == 1
    # --force with --only recomputes that stage alone
    forced = raypipe.run(spec, only="evaluate", force="evaluate", progress=quiet)
    assert statuses(forced)["evaluate"] == "ran" and "register" not in statuses(forced)


# --- a flaky API ---------------------------------------------------------------------------------------

def _rows(n: int = 400, seed: int = 5) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    return [{"id": i, "x1": float(a), "x2": float(b), "label": int(c)} for i, ((a, b), c) in enumerate(zip(x, y))]


class _Flaky(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server: _Api = self.server  # type: ignore[assignment]
        with server.lock:
            server.hits += 1
            drop = server.hits <= server.drop_first
        if drop:  # no answer at all: the client sees the connection closed under it
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        body = json.dumps({"data": server.rows}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Api(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, drop_first: int) -> None:
        super().__init__(("127.0.0.1", free_port()), _Flaky)
        self.lock, self.hits, self.drop_first, self.rows = threading.Lock(), 0, drop_first, _rows()


@pytest.fixture
def api():
    servers: list[_Api] = []

    def start(drop_first: int) -> _Api:
        server = _Api(drop_first)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _http_spec(storage: Path, server: _Api, retries: dict, path: str = "/records") -> dict:
    return {
        "name": "t-retries", "storage": str(storage),
        "runner": {"retries": retries},
        "data": {"source": {"type": "http", "url": f"http://127.0.0.1:{server.server_address[1]}{path}",
                            "pagination": {"style": "none"}, "retries": 0},  # the source's own retries off
                 "target": "label", "id_columns": ["id"]},
        "model": {"kind": "sklearn:sklearn.linear_model:LogisticRegression"},
    }


def test_a_source_that_fails_its_first_two_reads_is_retried(ray_session, tmp_path, api):
    server = api(drop_first=2)
    spec = _http_spec(tmp_path / "store", server, {"count": 2, "backoff_s": 0.1})
    result = raypipe.run(spec, until="validate", progress=quiet)
    assert statuses(result) == {"ingest": "ran", "validate": "ran"} and server.hits == 3
    ingest = _manifest(result)["stages"][0]
    assert [r["attempt"] for r in ingest["retries"]] == [1, 2]
    assert [r["waited_s"] for r in ingest["retries"]] == [0.1, 0.2]  # backoff doubles
    assert all(r["error"].startswith("HttpSourceError: GET http://127.0.0.1") for r in ingest["retries"])
    assert result.summary()["data"]["rows"]["train"] > 200  # the third read's data went on


def test_retries_run_out_and_the_error_is_the_sources(ray_session, tmp_path, api):
    server = api(drop_first=2)
    spec = _http_spec(tmp_path / "store", server, {"count": 1, "backoff_s": 0.0})
    with pytest.raises(HttpSourceError, match="Server disconnected|RemoteProtocolError") as info:
        raypipe.run(spec, until="validate", progress=quiet)
    assert info.value.transient and server.hits == 2
    runs = sorted((tmp_path / "store" / "runs").glob("*/manifest.json"))
    ingest = json.loads(runs[-1].read_text())["stages"][0]
    assert ingest["status"] == "failed" and len(ingest["retries"]) == 1


def test_a_final_failure_is_never_retried(ray_session, tmp_path, api):
    server = api(drop_first=0)
    spec = _http_spec(tmp_path / "store", server, {"count": 3, "backoff_s": 0.0}, path="/missing")
    with pytest.raises(HttpSourceError, match="HTTP 404"):
        raypipe.run(spec, until="ingest", progress=quiet)
    assert server.hits == 1  # a wrong URL stays wrong: asked once
