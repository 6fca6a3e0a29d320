"""Secrets at rest (issue 18): no planted secret reaches storage, MLflow, Ray's logs or Serve's config.

Every place a spec takes a secret gets its own distinct, greppable value (a prefix and random
hex): ``password_env`` (PostgreSQL), ``token_env``, ``headers_env`` and ``params_env`` (an HTTP
API), literal ``headers`` and ``params`` values (allowed, masked in what is stored) and
``deploy.auth``'s API key. Two real runs use them all, each exported to MLflow on sqlite:

1. a SQL source on a throwaway PostgreSQL that accepts only the planted password; the champion
   is then served with the API key and answers one authorised request;
2. an HTTP source on a loopback server that answers only when every HTTP secret is presented.

Then every file is read as bytes and searched for every secret: both storage trees (parquet,
JSON, HTML reports, manifests, the registry), the MLflow database and artifact folders, the
Ray session folder (all of ``logs/``), HAProxy's config folder, what the runs printed, and
Serve's config and details (``serve.status()``, the controller's details, the dashboard's REST
API, Serve's checkpoints in Ray's GCS). A hit names the secret and where it was found. The
search is proven to work first: it finds canaries planted in a storage tree and in a Ray
worker's log, and the servers prove each secret was really presented.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
import pytest

import raypipe
from raypipe.ingest.sql import PostgresConnect
from raypipe.progress import Progress
from raypipe.serve.deploy import sample_request
from tests.conftest import free_port
from tests.ingest.pg import USER, PostgresMissing, pg_bindir, start_postgres

ROWS = 400
LOGREG = {"kind": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 300}}
CHUNK = 1 << 20

# Where each secret is planted -> (its prefix, the environment variable holding it, or None for a literal).
PLACES = {
    "password_env": ("pgpw", "RP_E2E_PG_PASSWORD"),
    "token_env": ("tok", "RP_E2E_API_TOKEN"),
    "headers_env": ("hdr", "RP_E2E_API_HEADER"),
    "params_env": ("qp", "RP_E2E_API_PARAM"),
    "headers (literal)": ("lit", None),
    "params (literal)": ("litq", None),
    "deploy.auth": ("apikey", "RP_E2E_API_KEY"),
}
# What the HTTP API checks: where -> (how a request presents it, the name of the header or query parameter).
HTTP_SECRETS = {
    "token_env": ("header", "Authorization"),
    "headers_env": ("header", "X-Api-Secret"),
    "params_env": ("query", "api_key"),
    "headers (literal)": ("header", "X-Tenant-Key"),
    "params (literal)": ("query", "tenant"),
}


@pytest.fixture(scope="module")
def planted() -> dict[str, str]:
    """One fresh secret per place, e.g. ``{"password_env": "pgpw-3f9a..."}``."""
    return {where: f"{prefix}-{secrets.token_hex(12)}" for where, (prefix, _) in PLACES.items()}


@pytest.fixture(scope="module")
def secret_env(planted: dict[str, str]) -> Iterator[None]:
    """The ``*_env`` secrets exported, as a deployer would before ``raypipe run`` and ``raypipe serve``."""
    with pytest.MonkeyPatch.context() as mp:
        for where, (_, var) in PLACES.items():
            if var:
                mp.setenv(var, planted[where])
        yield


# --- the data and its two sources -----------------------------------------------------------
def payments() -> list[dict[str, Any]]:
    """``ROWS`` rows of a small, learnable classification problem (the label follows amount and device)."""
    rng = np.random.default_rng(7)
    amount = rng.lognormal(3.0, 1.0, ROWS).round(2)
    hour = rng.integers(0, 24, ROWS)
    device = rng.choice(["web", "ios", "android"], ROWS)
    score = 2 * (np.log(amount) - 3.0) + (device == "web") - 0.4 + rng.normal(0, 0.5, ROWS)
    return [{"id": i, "amount": float(a), "hour": int(h), "device": str(d), "label": int(s > 0)}
            for i, (a, h, d, s) in enumerate(zip(amount, hour, device, score))]


@pytest.fixture(scope="module")
def postgres(planted: dict[str, str]) -> Iterator[str]:
    """A throwaway PostgreSQL whose only password is the planted one, with table ``payments``; its URL."""
    try:
        pg_bindir()
    except PostgresMissing as e:
        pytest.fail(str(e))
    url, password, stop = start_postgres(tempfile.mkdtemp(prefix="rp-pg-", dir="/tmp"))
    try:
        with PostgresConnect(url, password)() as conn:
            conn.execute(f"ALTER ROLE {USER} PASSWORD '{planted['password_env']}'")  # hex: nothing to quote
            conn.execute("CREATE TABLE payments (id integer PRIMARY KEY, amount double precision, hour integer, "
                         "device text, label integer)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO payments VALUES (%(id)s, %(amount)s, %(hour)s, %(device)s, %(label)s)",
                                payments())
        yield url
    finally:
        stop()


class _Api(BaseHTTPRequestHandler):
    """``GET /payments?page=N&per_page=M``: a page of records, only for a request presenting every secret."""

    server: _ApiServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        presented = {where: (self.headers.get(name, "") if how == "header" else query.get(name, ""))
                     for where, (how, name) in HTTP_SECRETS.items()}
        presented["token_env"] = presented["token_env"].removeprefix("Bearer ")
        ok = presented == self.server.expected
        with self.server.lock:
            self.server.requests.append((presented, ok))
        if not ok:
            return self._send(401, b'{"error": "missing or wrong credentials"}')
        page, size = int(query["page"]), int(query["per_page"])
        rows = self.server.rows[(page - 1) * size: page * size]
        self._send(200, json.dumps({"data": rows}).encode())

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, expected: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", free_port()), _Api)
        self.expected, self.rows = expected, payments()
        self.lock = threading.Lock()
        self.requests: list[tuple[dict[str, str], bool]] = []


@pytest.fixture(scope="module")
def api(planted: dict[str, str]) -> Iterator[_ApiServer]:
    server = _ApiServer({where: planted[where] for where in HTTP_SECRETS})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


# --- the two runs -----------------------------------------------------------------------------
@dataclass
class Run:
    """One pipeline run: its spec, result, storage, everything it printed, and its endpoint if served."""

    spec: Any
    result: Any
    storage: Path
    console: io.StringIO
    endpoint: Any = None


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the MLflow sqlite database both runs export to."""
    return tmp_path_factory.mktemp("mlflow")


def run_pipeline(name: str, source: dict[str, Any], root: Path, mlflow_dir: Path, **sections: Any) -> Run:
    """Run a small sklearn pipeline on ``source``, exported to MLflow; its progress is kept, not shown."""
    storage = root / "store"
    spec = raypipe.load_spec({
        "name": name, "storage": str(storage),
        "data": {"source": source, "target": "label", "id_columns": ["id"]},
        "model": LOGREG,
        "evaluate": {"gate": {"min": {"roc_auc": 0.6}}},
        "tracking": {"mlflow_uri": f"sqlite:///{mlflow_dir / 'mlflow.db'}"},
        **sections,
    })
    console = io.StringIO()
    result = raypipe.run(spec, progress=Progress(stream=console))
    return Run(spec, result, storage, console)


@pytest.fixture(scope="module")
def sql_run(ray_session, secret_env, postgres: str, mlflow_dir: Path, tmp_path_factory) -> Iterator[Run]:
    """Run 1: PostgreSQL through ``password_env``; the champion served with ``deploy.auth``."""
    from ray import serve

    source = {"type": "sql", "url": postgres, "query": "SELECT * FROM payments",
              "password_env": PLACES["password_env"][1]}
    deploy = {"port": free_port(), "auth": {"api_key_env": PLACES["deploy.auth"][1]}}
    run = run_pipeline("t-secrets-sql", source, tmp_path_factory.mktemp("secrets-sql"), mlflow_dir, deploy=deploy)
    run.endpoint = raypipe.serve(run.spec)
    try:
        yield run
    finally:
        serve.delete(run.endpoint.app_name)


@pytest.fixture(scope="module")
def http_run(ray_session, secret_env, api: _ApiServer, planted: dict[str, str], mlflow_dir: Path,
             tmp_path_factory) -> Run:
    """Run 2: the HTTP API through ``token_env``, ``headers_env``, ``params_env`` and literal values."""
    source = {"type": "http", "url": f"http://127.0.0.1:{api.server_address[1]}/payments", "records": "data",
              "pagination": {"style": "page", "page_size": 100}, "backoff_s": 0,
              "token_env": PLACES["token_env"][1],
              "headers_env": {HTTP_SECRETS["headers_env"][1]: PLACES["headers_env"][1]},
              "params_env": {HTTP_SECRETS["params_env"][1]: PLACES["params_env"][1]},
              "headers": {HTTP_SECRETS["headers (literal)"][1]: planted["headers (literal)"]},
              "params": {HTTP_SECRETS["params (literal)"][1]: planted["params (literal)"]}}
    return run_pipeline("t-secrets-http", source, tmp_path_factory.mktemp("secrets-http"), mlflow_dir)


# --- where secrets could land, and the search -------------------------------------------------
def files_under(root: Path) -> list[Path]:
    """Every regular file under ``root`` (sockets, links and folders left out)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def ray_node() -> Any:
    """This process's Ray node (Ray has no public API for its session folder or dashboard address)."""
    from ray._private import worker

    return worker._global_node


def ray_session_dir() -> Path:
    return Path(ray_node().get_session_dir_path())


def stored_places(runs: Iterable[Run], mlflow_dir: Path) -> dict[str, list[Path]]:
    """Folder label -> its files: the storage trees, MLflow's database and artifacts, Ray's session, HAProxy's config."""
    from mlflow.tracking import MlflowClient

    roots = {f"storage of {r.spec.name}": r.storage for r in runs}
    roots["MLflow database folder"] = mlflow_dir
    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_dir / 'mlflow.db'}")
    for r in runs:
        location = urlsplit(client.get_experiment_by_name(r.spec.name).artifact_location).path
        roots[f"MLflow artifacts of {r.spec.name}"] = Path(location)
    roots["Ray session folder"] = ray_session_dir()
    if os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"):
        roots["HAProxy config folder"] = Path(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
    return {label: files_under(root) for label, root in roots.items()}


def serve_documents() -> dict[str, bytes]:
    """Serve's config and details as they are now: label -> bytes."""
    from ray import serve
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list
    from ray.serve.context import _get_global_client

    docs = {
        "serve.status()": json.dumps(dataclasses.asdict(serve.status()), default=str).encode(),
        "Serve controller's get_serve_details()": json.dumps(_get_global_client().get_serve_details(),
                                                             default=str).encode(),
    }
    # The dashboard's REST API, with Ray's token (a local Ray runs with token authentication).
    r = httpx.get(f"http://{ray_node().webui_url}/api/serve/applications/",
                  headers=get_auth_headers_if_auth_enabled({}), timeout=30)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    docs["dashboard GET /api/serve/applications/"] = r.content
    for key in _internal_kv_list(b"", namespace=b"serve"):  # Serve's checkpoints (applications, deployments)
        docs[f"GCS key serve/{key.decode(errors='replace')}"] = _internal_kv_get(key, namespace=b"serve") or b""
    return docs


def file_holds(path: Path, needles: list[bytes]) -> set[bytes]:
    """The needles found in the file, read in chunks (logs can be large); a file gone meanwhile holds none."""
    overlap = max(map(len, needles)) - 1
    found: set[bytes] = set()
    try:
        with path.open("rb") as f:
            tail = b""
            while chunk := f.read(CHUNK):
                window = tail + chunk
                found |= {n for n in needles if n in window}
                tail = window[-overlap:]
    except FileNotFoundError:  # a log rotated away between listing and reading
        pass
    return found


def find(needles: dict[str, str], files: dict[str, list[Path]], documents: dict[str, bytes]) -> dict[str, list[str]]:
    """Label of each needle -> where its value was found (file paths, or document labels)."""
    by_bytes = {value.encode(): label for label, value in needles.items()}
    hits: dict[str, list[str]] = {label: [] for label in needles}
    for paths in files.values():
        for path in paths:
            for needle in file_holds(path, list(by_bytes)):
                hits[by_bytes[needle]].append(str(path))
    for where, data in documents.items():
        for needle, label in by_bytes.items():
            if needle in data:
                hits[label].append(where)
    return hits


# --- the tests --------------------------------------------------------------------------------
def test_every_planted_secret_was_really_used(sql_run: Run, http_run: Run, api: _ApiServer, planted: dict[str, str]):
    """Proves the runs used each secret: otherwise their absence from storage and logs would prove nothing."""
    # PostgreSQL authenticates with scram-sha-256 and knows only the planted password.
    assert sql_run.result.status == "ok" and sql_run.result.outputs["ingest"].outputs.input_rows == ROWS
    # The API answered only requests presenting every HTTP secret, and every request did.
    assert http_run.result.status == "ok" and http_run.result.outputs["ingest"].outputs.input_rows == ROWS
    assert len(api.requests) == ROWS // 100 + 1 and all(ok for _, ok in api.requests), api.requests
    # The endpoint wants the API key.
    endpoint = sql_run.endpoint
    rows = sample_request(sql_run.spec, endpoint.version, n=1)
    refused = httpx.post(f"{endpoint.url}/predict", json=rows[0], timeout=30)
    assert refused.status_code == 401
    answered = httpx.post(f"{endpoint.url}/predict", json=rows[0], headers={"X-API-Key": planted["deploy.auth"]},
                          timeout=30)
    assert answered.status_code == 200 and answered.json()["version"] == endpoint.version
    for run in (sql_run, http_run):  # exported to MLflow, so MLflow is among the places searched
        tracking = json.loads(Path(run.result.manifest_path).read_text())["tracking"]
        assert "mlflow_run_id" in tracking, tracking


def test_literal_header_and_parameter_values_are_stored_masked(http_run: Run, mlflow_dir: Path):
    """Literal values are kept as ``***`` (their names stay) in the run manifest and MLflow's params."""
    from mlflow.tracking import MlflowClient

    header, param = HTTP_SECRETS["headers (literal)"][1], HTTP_SECRETS["params (literal)"][1]
    source = json.loads(Path(http_run.result.manifest_path).read_text())["spec"]["data"]["source"]
    assert source["headers"] == {header: "***"} and source["params"] == {param: "***"}
    assert source["token_env"] == PLACES["token_env"][1]  # the variable's name, not its value
    tracking = json.loads(Path(http_run.result.manifest_path).read_text())["tracking"]
    params = MlflowClient(f"sqlite:///{mlflow_dir / 'mlflow.db'}").get_run(tracking["mlflow_run_id"]).data.params
    assert params[f"data.source.headers.{header}"] == "***" and params[f"data.source.params.{param}"] == "***"


def test_the_search_finds_what_is_there(sql_run: Run, http_run: Run, mlflow_dir: Path):
    """The search itself works: canaries in a storage tree (inside binary bytes) and in a Ray worker's log,
    the run id in MLflow's database and artifacts, the application in Serve's details."""
    import ray

    stored = sql_run.storage / "runs" / "canary" / "blob.bin"
    stored.parent.mkdir(parents=True)
    canaries = {"stored": f"canary-{secrets.token_hex(12)}", "logged": f"canary-{secrets.token_hex(12)}"}
    stored.write_bytes(os.urandom(3000) + canaries["stored"].encode() + os.urandom(3000))

    @ray.remote
    def shout(text: str) -> None:
        print(text, flush=True)  # a worker's stdout goes to <session>/logs/worker-*.out

    ray.get(shout.remote(canaries["logged"]))
    try:
        needles = {**canaries, "run id": sql_run.result.run_id, "application": sql_run.endpoint.app_name}
        hits = find(needles, stored_places([sql_run, http_run], mlflow_dir), serve_documents())
    finally:
        stored.unlink()
        stored.parent.rmdir()
    assert hits["stored"] == [str(stored)]
    logs = ray_session_dir() / "logs"
    assert any(Path(p).is_relative_to(logs) for p in hits["logged"]), hits["logged"]
    assert str(mlflow_dir / "mlflow.db") in hits["run id"]  # the run's tag in the sqlite file
    artifacts = sql_run.storage / "mlflow-artifacts"
    assert any(Path(p).is_relative_to(artifacts) for p in hits["run id"]), hits["run id"]  # lineage.json
    assert "Serve controller's get_serve_details()" in hits["application"]
    assert "dashboard GET /api/serve/applications/" in hits["application"]


def test_no_planted_secret_is_stored_logged_or_in_serve_config(sql_run: Run, http_run: Run, mlflow_dir: Path,
                                                               planted: dict[str, str]):
    """The check of issue 18: no secret in any file of storage, MLflow or Ray's session, nor in Serve's config."""
    files = stored_places([sql_run, http_run], mlflow_dir)
    empty = [label for label, paths in files.items() if not paths and label != "HAProxy config folder"]
    assert not empty, f"nothing to search in {empty}"
    documents = serve_documents()
    documents.update({f"progress of {r.spec.name}": r.console.getvalue().encode() for r in (sql_run, http_run)})
    hits = {label: where for label, where in find(planted, files, documents).items() if where}
    assert not hits, "planted secrets found:\n" + "\n".join(
        f"  {label} ({planted[label]}): {', '.join(where)}" for label, where in hits.items())
