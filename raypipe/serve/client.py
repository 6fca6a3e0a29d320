"""The client retry raypipe documents for its endpoints.

A replica that dies (a node lost, an OOM kill) takes the requests it was holding with
it: the client sees a dropped connection, or an error from the ingress, while Serve
replaces the replica. Ray's Python proxy answers 502/503/504; Serve's HAProxy config
rewrites those to a 500 ("Internal Server Error", its ``errorfile 502/503/504``), which a
killed replica's in-flight request got in the tests. raypipe's replica never answers 500
itself (bad input is a 4xx, checked by a 1,291-payload fuzz test), and predictions are
idempotent, so the right response to all four is to send the request again after a
short, jittered back-off. :func:`post_predict` does that, and nothing else: a 4xx (bad
input, wrong key) is returned at once, never retried.

    from raypipe.serve.client import post_predict
    with httpx.Client() as http:
        answer = post_predict(http, "http://host:8000/fraud", row)
"""
from __future__ import annotations

import random
import time
from typing import Any

import httpx

RETRY_STATUS = frozenset({500, 502, 503, 504})


def post_predict(http: httpx.Client, url: str, rows: dict[str, Any] | list[dict[str, Any]], *, attempts: int = 5,
                 backoff_s: float = 0.2, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST ``rows`` to ``<url>/predict``; retry dropped connections and 500/502/503/504 with jittered back-off."""
    for attempt in range(attempts):
        try:
            response = http.post(f"{url}/predict", json=rows, headers=headers)
            if response.status_code not in RETRY_STATUS or attempt == attempts - 1:
                return response
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
        time.sleep(backoff_s * (2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
