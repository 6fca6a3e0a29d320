"""The documented client retry against a real local HTTP server: what is retried, what never is."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from raypipe.serve.client import post_predict
from tests.conftest import free_port


class _Scripted(BaseHTTPRequestHandler):
    """Answers POST /app/predict with the next (status, content type, body) of the server's script."""

    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.server.lock:
            self.server.hits += 1
            status, ctype, body = self.server.script[min(self.server.hits, len(self.server.script)) - 1]
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _serve(port: int, script: list[tuple[int, str, str]]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Scripted)
    server.script, server.hits, server.lock = script, 0, threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


OK = (200, "application/json", json.dumps({"prediction": 1, "version": 3}))
ROUTE_MISS = (404, "text/plain", "Path '/app/predict' not found. Ping http://.../-/routes for available routes.")


def test_gateway_errors_and_an_ingress_route_miss_are_retried_until_the_model_answers():
    server = _serve(free_port(), [(500, "text/html", "Internal Server Error"), (503, "text/plain", "busy"),
                                  ROUTE_MISS, OK])
    try:
        with httpx.Client(timeout=5) as http:
            r = post_predict(http, f"http://127.0.0.1:{server.server_port}/app", {"x": 1}, backoff_s=0.01)
        assert r.status_code == 200 and r.json()["version"] == 3
        assert server.hits == 4
    finally:
        server.shutdown()


@pytest.mark.parametrize("answer", [(404, "application/json", '{"detail": "Not Found"}'),
                                    (422, "application/json", '{"detail": [{"loc": ["body", "x"]}]}'),
                                    (401, "application/json", '{"detail": "missing API key"}')])
def test_answers_of_the_model_server_are_returned_at_once(answer):
    server = _serve(free_port(), [answer, OK])
    try:
        with httpx.Client(timeout=5) as http:
            r = post_predict(http, f"http://127.0.0.1:{server.server_port}/app", {"x": 1}, backoff_s=0.01)
        assert r.status_code == answer[0] and server.hits == 1
    finally:
        server.shutdown()


def test_a_closed_port_is_retried_until_the_server_comes_back():
    """A killed HAProxy: connections are refused until it is restarted on the same port."""
    port = free_port()
    started: list[ThreadingHTTPServer] = []
    timer = threading.Timer(1.0, lambda: started.append(_serve(port, [OK])))
    timer.start()
    try:
        with httpx.Client(timeout=5) as http:
            r = post_predict(http, f"http://127.0.0.1:{port}/app", {"x": 1}, retry_for_s=30)
        assert r.status_code == 200 and started and started[0].hits == 1
    finally:
        timer.join()
        for s in started:
            s.shutdown()


def test_retrying_stops_when_time_is_up():
    port = free_port()  # nothing listens
    with httpx.Client(timeout=5) as http:
        start = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            post_predict(http, f"http://127.0.0.1:{port}/app", {"x": 1}, retry_for_s=0.5, backoff_s=0.05)
    assert time.monotonic() - start < 10  # gave up: bounded, not forever
    server = _serve(free_port(), [(503, "text/plain", "busy")])
    try:
        with httpx.Client(timeout=5) as http:
            r = post_predict(http, f"http://127.0.0.1:{server.server_port}/app", {"x": 1}, retry_for_s=0.3,
                             backoff_s=0.05)
        assert r.status_code == 503 and server.hits > 1  # the last answer, after retrying
    finally:
        server.shutdown()
