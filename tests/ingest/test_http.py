"""``raypipe.ingest.http`` against a real HTTP server on a loopback port."""
from __future__ import annotations

import functools
import json
import queue
import shutil
import threading
import time
import tracemalloc
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.errors import HttpSourceError, RaypipeError, SpecError
from raypipe.ingest.http import _fetch_pages, iter_pages, read_http, request_headers
from raypipe.spec import HttpSource
from raypipe.store import Store
from tests.conftest import free_port

TOKEN = "s3cret-T0KEN-value"
# 250 records; the last 50 have a key the others lack.
ITEMS = [{"id": i, "value": i * 1.5, "name": f"item-{i}", **({"note": "late"} if i >= 200 else {})} for i in range(250)]
ENDLESS_BYTES = 256 * 2**20  # what /endless sends to a client that never stops reading
BIG_PAGE_ROWS = 1000  # /pages: rows of ~1 KB each, about 1 MB a page


@functools.cache
def big_page(page: int) -> bytes:
    """Page ``page`` of /pages, encoded once (the server then sends it without allocating)."""
    first = (page - 1) * BIG_PAGE_ROWS
    return json.dumps({"data": [{"id": i, "pad": f"{i:08d}" * 125} for i in range(first, first + BIG_PAGE_ROWS)]}).encode()


class _Api(BaseHTTPRequestHandler):
    """Routes: /items (page), /cursor, /bare, /flaky/<k>, /always503, /limited/<k>, /missing, /secure,
    /html, /nested, /slow, /wrongpath, /mixed, /disagree, /badtypes, /away, /here, /big, /endless, /declared, /cut, /pages."""

    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = dict(parse_qsl(url.query))
        srv = self.server
        with srv.lock:
            srv.hits[url.path] += 1
            hits = srv.hits[url.path]
            srv.requests.append((url.path, q, dict(self.headers)))
        path = url.path
        if path == "/items":
            items = ITEMS[: int(q.get("n", len(ITEMS)))]
            page, size = int(q["page"]), int(q["per_page"])
            self._json({"data": items[(page - 1) * size: page * size]})
        elif path == "/capped":  # asks for per_page, gets at most 40 (APIs cap page sizes): a short page is no end
            page, size = int(q["page"]), min(40, int(q["per_page"]))
            self._json({"data": ITEMS[(page - 1) * size: page * size]})
        elif path == "/clamped":  # any page number past the end answers the last page again
            page = min(int(q["page"]), 3)
            self._json({"data": ITEMS[(page - 1) * 100: page * 100]})
        elif path == "/hasmore":  # its own end marker: no empty page is ever asked for
            page = int(q["page"])
            self._json({"data": ITEMS[(page - 1) * 100: page * 100], "meta": {"has_more": page * 100 < len(ITEMS)}})
        elif path == "/samecursor":  # hands back the cursor it was asked with
            self._json({"data": ITEMS[:3], "next_cursor": q.get("cursor", "a")})
        elif path == "/cursor":
            start = int(q.get("cursor", 0))
            nxt = str(start + 70) if start + 70 < len(ITEMS) else None
            self._json({"result": {"items": ITEMS[start: start + 70]}, "meta": {"next": nxt}})
        elif path == "/bare":
            self._json(ITEMS[:3])
        elif path.startswith("/flaky/"):
            self._json({"data": ITEMS[:5]}) if hits > 2 else self._send(503, b"busy", "text/plain")
        elif path.startswith("/always503"):
            self._send(503, b"down for maintenance", "text/plain")
        elif path.startswith("/limited/"):
            if hits > 1:
                self._json({"data": ITEMS[:2]})
            else:
                self._send(429, b"slow down", "text/plain", {"Retry-After": q.get("after", "1")})
        elif path == "/secure":
            auth = self.headers.get("Authorization", "")
            if auth != f"Bearer {TOKEN}":  # echoes what it got, as some APIs do
                self._send(401, f"invalid credentials: {auth}".encode(), "text/plain")
            else:
                self._json({"data": ITEMS[:4]})
        elif path == "/html":
            self._send(200, b"<html><body>login page</body></html>", "text/html")
        elif path == "/nested":
            self._json({"data": [{"id": 1, "owner": {"name": "a"}}]})
        elif path == "/wrongpath":
            self._json({"items": ITEMS[:2], "count": 2})
        elif path == "/mixed":  # page 1: ints; page 2: floats, a key page 1 lacks, and a null
            page = int(q["page"])
            data = {1: [{"id": 1, "v": 1}, {"id": 2, "v": 2}],
                    2: [{"id": 3, "v": 2.5, "tag": "t"}, {"id": 4, "v": None, "tag": None}], 3: []}[page]
            self._json({"data": data})
        elif path == "/disagree":  # id: an int on page 1, a string on page 2
            self._json({"data": [{"id": {1: 1, 2: "two", 3: 3}.get(int(q["page"]))}]})
        elif path == "/badtypes":
            self._json({"data": [{"id": 1}, {"id": "one"}]})
        elif path == "/away":  # a redirect to another origin (the port in ?to=)
            self._send(302, b"", "text/plain", {"Location": f"http://127.0.0.1:{q['to']}/bare"})
        elif path == "/here":  # a redirect within the origin
            self._send(302, b"", "text/plain", {"Location": "/bare"})
        elif path == "/big":
            self._json({"data": [{"id": i, "pad": "x" * 1000} for i in range(3000)]})
        elif path == "/slow":
            time.sleep(1.0)
            self._json({"data": []})
        elif path == "/endless":
            self._endless()
        elif path in ("/declared", "/cut"):  # announces 1 GB (or 2 KB), sends 1 KB and hangs up
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(10**9 if path == "/declared" else 2048))
            self.end_headers()
            self.wfile.write(b" " * 1024)
        elif path == "/pages":  # ?page=k of q["pages"], ~1 MB each
            page = int(q["page"])
            self._send(200, big_page(page) if page <= int(q["pages"]) else b'{"data": []}', "application/json")
        else:
            self._send(404, b"no such endpoint", "text/plain")

    def _endless(self) -> None:
        """A body without Content-Length (it ends when the connection does), sent until the client hangs up
        or ENDLESS_BYTES have gone; how many bytes went is put on ``server.streamed``."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        chunk, sent = b" " * 2**16, 0
        try:
            while sent < ENDLESS_BYTES:
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.server.streamed.put(sent)

    def _json(self, value: Any) -> None:
        self._send(200, json.dumps(value).encode(), "application/json")

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Api)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.streamed: queue.Queue[int] = queue.Queue()


@pytest.fixture(scope="module")
def api():
    server = _Server(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def base(api: _Server) -> str:
    return f"http://127.0.0.1:{api.server_address[1]}"


def source(api: _Server, path: str, **kw: Any) -> HttpSource:
    kw.setdefault("backoff_s", 0.0)
    return HttpSource(type="http", url=base(api) + path, **kw)


def records(src: HttpSource) -> list[dict[str, Any]]:
    return [r for page in iter_pages(src) for r in page]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits httpx-retries sleeps between attempts, recorded instead of slept."""
    import httpx_retries.retry

    recorded: list[float] = []
    monkeypatch.setattr(httpx_retries.retry, "time", SimpleNamespace(sleep=recorded.append))
    return recorded


def requests_to(api: _Server, path: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    return [r for r in api.requests if r[0] == path]


# --- pagination ----------------------------------------------------------------------
def test_page_pagination_reads_every_page(api: _Server) -> None:
    api.requests.clear()
    recs = records(source(api, "/items", params={"api_key": "k-123"}, headers={"X-Client": "raypipe"}))
    assert [r["id"] for r in recs] == list(range(250))
    sent = requests_to(api, "/items")
    assert [q["page"] for _, q, _ in sent] == ["1", "2", "3", "4"]  # 100, 100, 50, then the empty page ends it
    assert all(q["per_page"] == "100" and q["api_key"] == "k-123" for _, q, _ in sent)
    assert all(h["X-Client"] == "raypipe" and "Authorization" not in h for _, _, h in sent)


def test_page_pagination_stops_at_an_empty_page(api: _Server) -> None:
    api.requests.clear()
    pag = {"page_size": 100, "start_page": 1}
    recs = records(source(api, "/items", params={"n": "200"}, pagination=pag))
    assert len(recs) == 200
    assert [q["page"] for _, q, _ in requests_to(api, "/items")] == ["1", "2", "3"]


def test_max_pages_reached_while_pages_continue(api: _Server) -> None:
    with pytest.raises(HttpSourceError, match="max_pages = 2"):
        records(source(api, "/items", pagination={"max_pages": 2}))


def test_cursor_pagination_follows_the_dotted_cursor(api: _Server) -> None:
    api.requests.clear()
    pag = {"style": "cursor", "cursor_field": "meta.next", "cursor_param": "cursor"}
    recs = records(source(api, "/cursor", records="result.items", pagination=pag))
    assert [r["id"] for r in recs] == list(range(250))
    assert [q.get("cursor") for _, q, _ in requests_to(api, "/cursor")] == [None, "70", "140", "210"]


def test_no_pagination_and_a_bare_list(api: _Server) -> None:
    recs = records(source(api, "/bare", records="", pagination={"style": "none"}))
    assert recs == ITEMS[:3]
    assert api.hits["/bare"] == 1


# --- retries and errors -------------------------------------------------------------------
def test_503_twice_then_success_is_retried(api: _Server) -> None:
    recs = records(source(api, "/flaky/a", retries=3, pagination={"style": "none"}))
    assert len(recs) == 5
    assert api.hits["/flaky/a"] == 3


def test_retries_exhausted_names_status_and_attempts(api: _Server) -> None:
    with pytest.raises(HttpSourceError) as e:
        records(source(api, "/always503", retries=2, pagination={"style": "none"}))
    assert api.hits["/always503"] == 3
    assert "503" in str(e.value) and "after 3 attempts" in str(e.value) and "down for maintenance" in str(e.value)


@pytest.mark.parametrize(("after", "expected"), [("2", 2.0), ("999", 30.0)])
def test_429_honours_retry_after_capped(api: _Server, waits: list[float], after: str, expected: float) -> None:
    src = source(api, f"/limited/{after}", params={"after": after}, backoff_s=5.0, pagination={"style": "none"})
    assert len(records(src)) == 2
    assert waits == [expected]  # the server's Retry-After, not backoff_s


def test_exponential_backoff(api: _Server, waits: list[float], caplog: pytest.LogCaptureFixture) -> None:
    src = source(api, "/always503/b", retries=3, backoff_s=0.5, pagination={"style": "none"})
    with pytest.raises(HttpSourceError, match="HTTP 503.*after 4 attempts"):
        records(src)
    assert waits == [0.5, 1.0, 2.0]
    assert [r.getMessage() for r in caplog.records if r.name == "raypipe.ingest.http"] == [
        f"http source: HTTP 503; retry {n} of 3" for n in (1, 2, 3)]


def test_404_names_status_and_url_without_query(api: _Server) -> None:
    with pytest.raises(HttpSourceError) as e:
        records(source(api, "/missing", params={"api_key": "k-secret-9"}, retries=3))
    msg = str(e.value)
    assert "404" in msg and f"{base(api)}/missing" in msg and "data.source.url" in msg
    assert "k-secret-9" not in msg
    assert api.hits["/missing"] == 1  # a 404 is not retried


def test_bearer_token_is_sent(api: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RP_TEST_TOKEN", TOKEN)
    recs = records(source(api, "/secure", token_env="RP_TEST_TOKEN", pagination={"style": "none"}))
    assert len(recs) == 4
    assert requests_to(api, "/secure")[-1][2]["Authorization"] == f"Bearer {TOKEN}"


def test_wrong_token_never_appears_in_the_error(api: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RP_TEST_TOKEN", "wrong-" + TOKEN)
    with pytest.raises(HttpSourceError) as e:
        records(source(api, "/secure", token_env="RP_TEST_TOKEN"))
    msg = str(e.value)
    assert "401" in msg and "token_env" in msg and "invalid credentials" in msg
    assert TOKEN not in msg and TOKEN not in repr(e.value)


def test_missing_token_variable_is_a_spec_error(api: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RP_TEST_NO_TOKEN", raising=False)
    with pytest.raises(SpecError, match="data.source.token_env.*RP_TEST_NO_TOKEN"):
        records(source(api, "/secure", token_env="RP_TEST_NO_TOKEN"))


def test_non_json_body(api: _Server) -> None:
    with pytest.raises(HttpSourceError, match="did not return JSON.*text/html.*login page"):
        records(source(api, "/html", pagination={"style": "none"}))


def test_records_path_not_found_or_not_a_list(api: _Server) -> None:
    with pytest.raises(HttpSourceError, match=r"no records 'data'.*\['count', 'items'\]"):
        records(source(api, "/wrongpath", pagination={"style": "none"}))
    with pytest.raises(HttpSourceError, match="records 'count' is a int, not a list"):
        records(source(api, "/wrongpath", records="count", pagination={"style": "none"}))


def test_nested_records_are_refused(api: _Server) -> None:
    with pytest.raises(HttpSourceError, match="'owner'.*nested object.*flatten"):
        records(source(api, "/nested", pagination={"style": "none"}))


def test_a_body_cut_short_is_retried(api: _Server, waits: list[float]) -> None:
    with pytest.raises(HttpSourceError, match=r"after 3 attempt\(s\): RemoteProtocolError"):
        records(source(api, "/cut", retries=2, backoff_s=0.25, pagination={"style": "none"}))
    assert api.hits["/cut"] == 3 and waits == [0.25, 0.5]  # errors while reading the body are retried too


def test_connection_refused_and_timeout(api: _Server, waits: list[float]) -> None:
    dead = HttpSource(type="http", url=f"http://127.0.0.1:{free_port()}/x", retries=2, backoff_s=0.25)
    with pytest.raises(HttpSourceError, match="after 3 attempt.*ConnectError"):
        records(dead)
    assert waits == [0.25, 0.5]  # retried with backoff
    with pytest.raises(HttpSourceError, match="ReadTimeout"):
        records(source(api, "/slow", retries=0, timeout_s=0.2, pagination={"style": "none"}))


MIXED_ROWS = [
    {"id": 1, "v": 1.0, "tag": None}, {"id": 2, "v": 2.0, "tag": None},
    {"id": 3, "v": 2.5, "tag": "t"}, {"id": 4, "v": None, "tag": None},
]


def test_each_page_is_a_file_and_the_schema_unifies_them(api: _Server, tmp_path) -> None:
    src = source(api, "/mixed", pagination={"page_size": 2})
    fetched = _fetch_pages(src, Store(tmp_path), request_headers(src))
    assert fetched.rows == 4
    assert fetched.files == [str(tmp_path / "page-00001.parquet"), str(tmp_path / "page-00002.parquet")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page-00001.parquet", "page-00002.parquet"]  # no temp names
    assert [pq.read_schema(f).names for f in fetched.files] == [["id", "v"], ["id", "v", "tag"]]  # each page as it came
    assert fetched.schema == pa.schema([("id", pa.int64()), ("v", pa.float64()), ("tag", pa.string())])  # int + float
    table = pa.concat_tables(pq.read_table(f, schema=fetched.schema) for f in fetched.files)
    assert table.to_pylist() == MIXED_ROWS


def test_page_errors_stay_clear(api: _Server, tmp_path) -> None:
    with pytest.raises(HttpSourceError, match="mixes types within a page"):
        _fetch_pages(source(api, "/badtypes"), Store(tmp_path / "a"), {})
    with pytest.raises(HttpSourceError, match=r"returned no records at records 'data'.*check data.source.url"):
        _fetch_pages(source(api, "/items", params={"n": "0"}), Store(tmp_path / "b"), {})
    api.requests.clear()
    with pytest.raises(HttpSourceError, match="pages disagree on the type of a field"):
        _fetch_pages(source(api, "/disagree", pagination={"page_size": 1}), Store(tmp_path / "c"), {})
    assert [q["page"] for _, q, _ in requests_to(api, "/disagree")] == ["1", "2"]  # refused before page 3


def test_the_task_holds_one_page_at_a_time(api: _Server, tmp_path) -> None:
    """40 pages of ~1 MB: the peak is one page's body, its records and its table (and ~1.3 MB of client and
    imports), not all 40 pages (the old task, which concatenated them, peaked above their total)."""
    n = 40
    total = sum(len(big_page(k)) for k in range(1, n + 1))  # encoded before tracing: the server only sends them
    src = source(api, "/pages", params={"pages": str(n)}, pagination={"page_size": BIG_PAGE_ROWS})
    arrow = pa.proxy_memory_pool(pa.default_memory_pool())  # arrow's allocations are not Python's: traced apart
    previous = pa.default_memory_pool()
    pa.set_memory_pool(arrow)
    tracemalloc.start()
    try:
        fetched = _fetch_pages(src, Store(tmp_path), request_headers(src))
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    assert fetched.rows == n * BIG_PAGE_ROWS and len(fetched.files) == n
    assert [pq.read_metadata(f).num_rows for f in fetched.files] == [BIG_PAGE_ROWS] * n
    peak = python_peak + arrow.max_memory()
    assert peak < total / 4, f"peak {peak:,} bytes (Python {python_peak:,}, arrow {arrow.max_memory():,}) of {total:,}"


# --- read_http (Ray) ----------------------------------------------------------------------
def test_read_http_builds_a_dataset_in_a_ray_task(api: _Server, ray_session, tmp_path) -> None:
    ds = read_http(source(api, "/items"))  # the pages in a temporary folder of this machine
    (folder,) = {Path(f).parent for f in ds.input_files()}
    assert folder.name.startswith("raypipe-http-")
    assert sorted(p.name for p in folder.iterdir()) == ["page-00001.parquet", "page-00002.parquet", "page-00003.parquet"]
    df = ds.to_pandas().sort_values("id").reset_index(drop=True)
    assert len(df) == ds.count() == 250
    assert df["id"].tolist() == list(range(250))
    assert df["value"].tolist() == [i * 1.5 for i in range(250)]
    assert df["note"].isna().sum() == 200 and (df["note"][200:] == "late").all()  # keys missing -> nulls
    shutil.rmtree(folder)

    with pytest.raises(HttpSourceError, match="404"):
        read_http(source(api, "/missing"), Store(tmp_path))


def test_read_http_reads_the_page_files_as_one_schema(api: _Server, ray_session, tmp_path) -> None:
    ds = read_http(source(api, "/mixed", pagination={"page_size": 2}), Store(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page-00001.parquet", "page-00002.parquet"]
    assert ds.schema().base_schema == pa.schema([("id", pa.int64()), ("v", pa.float64()), ("tag", pa.string())])
    assert sorted(ds.take_all(), key=lambda r: r["id"]) == MIXED_ROWS


def test_the_ingest_stage_reads_pages_from_storage_and_removes_them(api: _Server, ray_session, tmp_path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import raypipe
    from raypipe.progress import Progress
    from tests.conftest import small_spec

    removed: list[list[str]] = []
    delete = Store.delete

    def spy(store: Store, *parts: str) -> None:
        if parts == ("_source",):
            removed.append(store.listdir("_source"))
        delete(store, *parts)

    monkeypatch.setattr(Store, "delete", spy)
    data = {"source": {"type": "http", "url": base(api) + "/items", "backoff_s": 0.0}, "target": "value",
            "id_columns": ["id"], "split": {"stratify": False}}
    before = len(requests_to(api, "/items"))
    result = raypipe.run(small_spec(tmp_path / "store", name="t-http", data=data), until="ingest",
                         progress=Progress(quiet=True))
    ingest = result.outputs["ingest"]
    assert ingest.outputs.input_rows == 250 and len(requests_to(api, "/items")) - before == 4
    assert removed == [["page-00001.parquet", "page-00002.parquet", "page-00003.parquet"]]  # in the artifact's folder
    assert not ingest.store.exists("_source")  # the pages went once the splits were written
    assert not any(f.startswith("_source") for f in ingest.store.read_json("_COMPLETE.json")["files"])
    split = pa.concat_tables(pq.read_table(ingest.store.path(p)) for p in ingest.outputs.splits.values())
    assert sorted(split["id"].to_pylist()) == list(range(250)) and split["note"].null_count == 200


def test_http_source_error_is_a_raypipe_error() -> None:
    assert issubclass(HttpSourceError, RaypipeError) and issubclass(HttpSourceError, RuntimeError)
    assert HttpSourceError("x").exit_code == 1


def test_secret_params_and_headers_come_from_the_environment(api: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RP_TEST_KEY", "k-from-env-77")
    monkeypatch.setenv("RP_TEST_HDR", "h-from-env-88")
    src = source(api, "/items", params={"n": "120"}, params_env={"api_key": "RP_TEST_KEY"},
                 headers_env={"X-Api-Secret": "RP_TEST_HDR"})
    before = len(api.requests)
    assert len(records(src)) == 120
    sent = api.requests[before:]
    assert all(q["api_key"] == "k-from-env-77" and q["n"] == "120" for _, q, _ in sent)
    assert all(h["X-Api-Secret"] == "h-from-env-88" for _, _, h in sent)
    stored = json.dumps(src.model_dump(mode="json"))  # what a spec dump (manifest, MLflow) could hold
    assert "k-from-env-77" not in stored and "h-from-env-88" not in stored
    monkeypatch.delenv("RP_TEST_HDR")
    with pytest.raises(SpecError, match=r"data.source.headers_env: .*RP_TEST_HDR"):
        records(src)


def test_custom_headers_never_follow_a_redirect_to_another_origin(api: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    other = _Server(free_port())
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("RP_TEST_HDR", "h-secret-99")
        monkeypatch.setenv("RP_TEST_TOKEN", TOKEN)
        kw = {"headers_env": {"X-Api-Secret": "RP_TEST_HDR"}, "headers": {"X-Plain": "p"}, "token_env": "RP_TEST_TOKEN",
              "records": "", "pagination": {"style": "none"}}
        assert len(records(source(api, "/here", **kw))) == 3
        same = requests_to(api, "/bare")[-1][2]
        assert same["X-Api-Secret"] == "h-secret-99" and same["Authorization"] == f"Bearer {TOKEN}"
        assert len(records(source(api, "/away", params={"to": str(other.server_address[1])}, **kw))) == 3
        (_, _, elsewhere), = other.requests
        assert not {"X-Api-Secret", "X-Plain", "Authorization"} & set(elsewhere)
    finally:
        other.shutdown()
        other.server_close()


def test_a_response_over_the_size_limit_is_refused(api: _Server) -> None:
    with pytest.raises(HttpSourceError, match=r"bytes \(its Content-Length\), over data.source.max_response_mb=1"):
        records(source(api, "/big", max_response_mb=1, pagination={"style": "none"}))
    assert len(records(source(api, "/big", max_response_mb=8, pagination={"style": "none"}))) == 3000


def test_a_body_over_the_limit_is_not_read_to_its_end(api: _Server) -> None:
    t0 = time.perf_counter()
    with pytest.raises(HttpSourceError) as e:
        records(source(api, "/endless", params={"api_key": "k-secret-5"}, max_response_mb=1, retries=3,
                       pagination={"style": "none"}))
    msg = str(e.value)
    assert f"GET {base(api)}/endless (the request) returned more than 1,048,576 bytes" in msg
    assert "over data.source.max_response_mb=1; ask for smaller pages (pagination.page_size)" in msg
    assert "k-secret-5" not in msg
    sent = api.streamed.get(timeout=30)  # the server saw the client hang up
    assert sent < 32 * 2**20 < ENDLESS_BYTES, f"the server sent {sent:,} bytes"  # the limit plus socket buffers
    assert api.hits["/endless"] == 1  # not retried
    assert time.perf_counter() - t0 < 20


def test_a_content_length_over_the_limit_is_refused_before_the_body(api: _Server) -> None:
    with pytest.raises(HttpSourceError, match=r"returned 1,000,000,000 bytes \(its Content-Length\), over "
                                              r"data.source.max_response_mb=64"):
        records(source(api, "/declared", retries=3, pagination={"style": "none"}))
    assert api.hits["/declared"] == 1  # the 1 KB it did send was never waited for, nor the request retried


def test_a_page_shorter_than_asked_is_not_the_last(api: _Server) -> None:
    """The API caps per_page at 40: reading stops at the empty page, not the first short one."""
    recs = records(source(api, "/capped", pagination={"page_size": 100}))
    assert [r["id"] for r in recs] == list(range(250))


def test_the_api_end_marker_ends_a_page_read(api: _Server) -> None:
    api.requests.clear()
    recs = records(source(api, "/hasmore", pagination={"has_more_field": "meta.has_more"}))
    assert [r["id"] for r in recs] == list(range(250))
    assert [q["page"] for _, q, _ in requests_to(api, "/hasmore")] == ["1", "2", "3"]  # no extra empty page
    with pytest.raises(HttpSourceError, match=r"has_more_field 'meta.more' is missing.*\['data', 'meta'\]"):
        records(source(api, "/hasmore", pagination={"has_more_field": "meta.more"}))


def test_an_api_that_repeats_its_last_page_is_an_error_not_duplicates(api: _Server) -> None:
    with pytest.raises(HttpSourceError, match=r"page 4 repeats page 3.*has_more_field"):
        records(source(api, "/clamped"))


@pytest.mark.parametrize("field, found", [("meta.nxt", "is missing"), ("meta", "holds a dict, not a cursor")])
def test_a_wrong_cursor_field_is_an_error_naming_it(api: _Server, field: str, found: str) -> None:
    """Before: a missing cursor read as 'no next page', a quiet stop after the first 70 of 250 records."""
    src = source(api, "/cursor", records="result.items", pagination={"style": "cursor", "cursor_field": field})
    with pytest.raises(HttpSourceError, match=rf"cursor_field '{field}' {found} in response 1.*\['meta', 'result'\]"):
        records(src)


def test_a_cursor_that_never_moves_is_an_error(api: _Server) -> None:
    with pytest.raises(HttpSourceError, match="gives back the cursor it was asked with"):
        records(source(api, "/samecursor", pagination={"style": "cursor"}))


def test_an_api_that_is_not_paginated_read_as_pages_says_so(api: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RP_TEST_TOKEN", TOKEN)
    with pytest.raises(HttpSourceError, match="page 2 repeats page 1.*not paginated: set data.source.pagination.style: none"):
        records(source(api, "/secure", token_env="RP_TEST_TOKEN"))
