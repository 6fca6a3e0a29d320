"""Shared by the Serve tests: spec variants, replica lookup and closed-loop load."""
from __future__ import annotations

import threading
import time
from typing import Any

import httpx

import raypipe
from raypipe.serve.client import post_predict


def with_deploy(spec: Any, **deploy_settings: Any) -> Any:
    """The spec with some ``deploy`` settings replaced."""
    data = spec.model_dump(mode="json", by_alias=True)
    data["deploy"] = {**data["deploy"], **deploy_settings}
    return raypipe.load_spec(data)


def alive_actors() -> list[Any]:
    """The live actors of this process's Ray (by its address: other Rays may run on the host)."""
    import ray
    from ray.util.state import list_actors

    return list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                       limit=10_000)


def replicas(app: str) -> dict[str, int]:
    """Running replicas of a Serve application: actor id -> pid."""
    return {a.actor_id: a.pid for a in alive_actors()
            if a.class_name.startswith("ServeReplica") and f"::{app}#" in (a.name or "")}


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def wait_until_serving(server: Any, url: str, timeout: float, log_path: Any) -> None:
    """Wait for a server process started by the test to answer 200 at ``url``; fail with its log's tail
    if it exits or does not answer within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} never answered; the server's log ends:\n" + log_path.read_text()[-3000:])


class ClosedLoop:
    """Clients each sending the next request as soon as the last is answered, until the block ends.

    Every answer is recorded as (sent at, status, version or error). ``retry`` uses the
    documented client retry (:func:`raypipe.serve.client.post_predict`).
    """

    def __init__(self, url: str, rows: list[dict[str, Any]], clients: int, *, retry: bool = False,
                 rows_per_request: int = 1) -> None:
        self.url, self.rows, self.retry, self.rows_per_request = url, rows, retry, rows_per_request
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.answers: list[tuple[float, int, Any]] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _body(self, n: int) -> Any:
        if self.rows_per_request == 1:
            return self.rows[n % len(self.rows)]
        return [self.rows[(n + k) % len(self.rows)] for k in range(self.rows_per_request)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = i
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = (post_predict(http, self.url, self._body(n)) if self.retry
                         else http.post(f"{self.url}/predict", json=self._body(n)))
                    got = (sent, r.status_code, r.json().get("version") if r.status_code == 200 else r.text[:200])
                except httpx.HTTPError as e:
                    got = (sent, -1, repr(e))
                with self.lock:
                    self.answers.append(got)
                n += 1

    @property
    def failures(self) -> list[tuple[float, int, Any]]:
        return [a for a in self.answers if a[1] != 200]

    def __enter__(self) -> "ClosedLoop":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
