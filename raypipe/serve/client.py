"""The client retry raypipe documents for its endpoints.

What a client may see while the endpoint heals itself, all of it transient:

- a dropped or refused connection: a replica that dies (a node lost, an OOM kill) takes
  the requests it was holding with it, and a killed HAProxy leaves the port closed until
  Serve restarts it (~6 s on a local Ray, tests/faults/test_serve_faults.py);
- 500/502/503/504 from the ingress: Ray's Python proxy answers 502/503/504, and Serve's
  HAProxy rewrites those to a 500 (its ``errorfile``), which a killed replica's in-flight
  request got in the tests. raypipe's replica never answers 500 itself (bad input is a
  4xx, checked by a 1,291-payload fuzz test);
- a plain-text 404 from the ingress: a restarted HAProxy answers "Path ... not found"
  for a few seconds, until the controller has sent it the applications' routes.
  raypipe's own 404s are JSON, and are returned at once like every other 4xx.

Predictions are idempotent, so the right response to all of these is to send the request
again after a short, jittered back-off, for a bounded time (``retry_for_s``).
:func:`post_predict` does that, and nothing else: bad input and a wrong key are never retried.

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


def transient(response: httpx.Response) -> bool:
    """An answer from an ingress that is healing (see the module's docstring), not from the model server."""
    if response.status_code in RETRY_STATUS:
        return True
    return response.status_code == 404 and response.headers.get("content-type", "").startswith("text/plain")


def post_predict(http: httpx.Client, url: str, rows: dict[str, Any] | list[dict[str, Any]], *,
                 retry_for_s: float = 20.0, backoff_s: float = 0.2, max_backoff_s: float = 2.0,
                 headers: dict[str, str] | None = None, route: str = "/predict") -> httpx.Response:
    """POST ``rows`` to ``<url><route>`` (``/predict``; ``/act`` for a policy), retrying transient failures with jittered back-off for up to ``retry_for_s``.

    Returns the first answer that is not transient, or the last one when time is up (a
    transport error is raised then).
    """
    deadline = time.monotonic() + retry_for_s
    attempt = 0
    while True:
        try:
            response = http.post(f"{url}{route}", json=rows, headers=headers)
            if not transient(response):
                return response
        except httpx.TransportError:
            if time.monotonic() >= deadline:
                raise
        else:
            if time.monotonic() >= deadline:
                return response
        delay = min(max_backoff_s, backoff_s * 2 ** attempt) * (0.5 + random.random())
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        attempt += 1
