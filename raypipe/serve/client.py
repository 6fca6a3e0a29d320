"""The client retry raypipe documents for its endpoints.

A replica that dies (a node lost, an OOM kill) takes the requests it was holding with
it: the client sees a dropped connection, or a 502/503/504 from the ingress, while Serve
replaces the replica. Predictions are idempotent, so the right response is to send the
request again after a short, jittered back-off. :func:`post_predict` does that, and
nothing else: a 4xx (bad input, wrong key) is returned at once, never retried.

    from raypipe.serve.client import post_predict
    with httpx.Client() as http:
        answer = post_predict(http, "http://host:8000/fraud", row)
"""
from __future__ import annotations

import random
import time
from typing import Any

import httpx

RETRY_STATUS = frozenset({502, 503, 504})


def post_predict(http: httpx.Client, url: str, rows: dict[str, Any] | list[dict[str, Any]], *, attempts: int = 5,
                 backoff_s: float = 0.2, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST ``rows`` to ``<url>/predict``; retry dropped connections and 502/503/504 with jittered back-off."""
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
