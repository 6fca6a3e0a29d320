"""``raypipe.ingest.http`` against a real HTTP server on a loopback port."""
from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pytest

from raypipe.errors import HttpSourceError, RaypipeError, SpecError
from raypipe.ingest.http import _fetch_table, iter_pages, read_http, request_headers
from raypipe.spec import HttpSource
from tests.conftest import free_port

TOKEN = "s3cret-T0KEN-value"
# 250 records; the last 50 have a key the others lack.
ITEMS = [{"id": i, "value": i * 1.5, "name": f"item-{i}", **({"note": "late"} if i >= 200 else {})} for i in range(250)]
ENDLESS_BYTES = 256 * 2**20  # what /endless sends to a client that never stops reading


class _Api(BaseHTTPRequestHandler):
    """Routes: /items (page), /cursor, /bare, /flaky/<k>, /always503, /limited/<k>, /missing, /secure,
    /html, /nested, /slow, /wrongpath, /mixed, /badtypes, /away, /here, /big, /endless, /declared, /cut."""

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
    assert [q["page"] for _, q, _ in sent] == ["1", "2", "3"]  # 100, 100, 50: the short page ends it
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
    recs = records(source(api, "/secure", token_env="RP_TEST_TOKEN"))
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


def test_pages_become_one_table_with_unified_columns(api: _Server) -> None:
    src = source(api, "/mixed", pagination={"page_size": 2})
    rows, table = _fetch_table(src, request_headers(src))
    assert rows == 4
    assert table.schema.field("v").type == pa.float64()  # int page + float page
    assert table.to_pylist() == [
        {"id": 1, "v": 1.0, "tag": None}, {"id": 2, "v": 2.0, "tag": None},
        {"id": 3, "v": 2.5, "tag": "t"}, {"id": 4, "v": None, "tag": None},
    ]
    with pytest.raises(HttpSourceError, match="mixes types"):
        _fetch_table(source(api, "/badtypes"), {})


# --- read_http (Ray) ----------------------------------------------------------------------
def test_read_http_builds_a_dataset_in_a_ray_task(api: _Server, ray_session) -> None:
    ds = read_http(source(api, "/items"))
    df = ds.to_pandas().sort_values("id").reset_index(drop=True)
    assert len(df) == ds.count() == 250
    assert df["id"].tolist() == list(range(250))
    assert df["value"].tolist() == [i * 1.5 for i in range(250)]
    assert df["note"].isna().sum() == 200 and (df["note"][200:] == "late").all()  # keys missing -> nulls

    with pytest.raises(HttpSourceError, match="404"):
        read_http(source(api, "/missing"))


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
