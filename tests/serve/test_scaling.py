"""Replicas under load: autoscaling up and back down, and a killed replica that clients
never notice (with the retry raypipe documents, :mod:`raypipe.serve.client`)."""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

import raypipe
from raypipe.progress import Progress
from raypipe.serve.client import post_predict
from raypipe.serve.deploy import deploy, sample_request
from tests.conftest import free_port, small_spec


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    storage = tmp_path_factory.mktemp("scaling") / "store"
    spec = raypipe.load_spec(small_spec(storage, name="t-scaling", deploy={"port": free_port()}))
    result = raypipe.run(spec, progress=Progress(quiet=True))
    return spec, sample_request(spec, result.version, n=8)


def with_deploy(spec: Any, **deploy_settings: Any) -> Any:
    data = spec.model_dump(mode="json", by_alias=True)
    data["deploy"] = {**data["deploy"], **deploy_settings}
    return raypipe.load_spec(data)


def replicas(app: str) -> dict[str, int]:
    """Running replicas of an application: actor id -> pid."""
    from ray.util.state import list_actors

    return {a.actor_id: a.pid for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
            if a.class_name.startswith("ServeReplica") and f"::{app}#" in (a.name or "")}


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


class Clients:
    """Closed-loop clients using the documented retry; counts outcomes until stopped."""

    def __init__(self, url: str, rows: list[dict[str, Any]], n: int, payload_rows: int = 1) -> None:
        self.url, self.rows, self.payload_rows = url, rows, payload_rows
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.ok = 0
        self.failed: list[Any] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                body = self.rows[i % len(self.rows)] if self.payload_rows == 1 else self.rows * (self.payload_rows // len(self.rows))
                try:
                    r = post_predict(http, self.url, body)
                    outcome = r.status_code
                except httpx.HTTPError as e:
                    outcome = repr(e)
                with self.lock:
                    if outcome == 200:
                        self.ok += 1
                    else:
                        self.failed.append(outcome)

    def __enter__(self) -> "Clients":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_sustained_load_adds_a_replica_and_idle_time_removes_it(trained):
    spec, rows = trained
    s = with_deploy(spec, route_prefix="/autoscale", max_ongoing_requests=64,
                    autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                                 "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2})
    endpoint = deploy(s, app_name="autoscale")
    wait_for(lambda: len(replicas("autoscale")) == 1, 60, "one replica")
    with Clients(endpoint.url, rows, n=16, payload_rows=64) as load:
        wait_for(lambda: len(replicas("autoscale")) == 2, 90, "a second replica under load")
    assert load.ok > 0 and not load.failed, load.failed[:5]
    wait_for(lambda: len(replicas("autoscale")) == 1, 90, "the idle deployment to scale back to one replica")


def test_a_killed_replica_is_replaced_and_retried_requests_all_succeed(trained):
    spec, rows = trained
    s = with_deploy(spec, route_prefix="/resilient", autoscaling={"min_replicas": 2, "max_replicas": 2})
    endpoint = deploy(s, app_name="resilient")
    wait_for(lambda: len(replicas("resilient")) == 2, 60, "two replicas")
    before = replicas("resilient")
    with Clients(endpoint.url, rows, n=8) as load:
        time.sleep(2)
        victim_id, victim_pid = next(iter(before.items()))
        os.kill(victim_pid, signal.SIGKILL)
        time.sleep(2)
        wait_for(lambda: len(replicas("resilient")) == 2 and victim_id not in replicas("resilient"), 90,
                 "a replacement replica")
        time.sleep(2)
    assert load.ok > 50 and not load.failed, (load.ok, load.failed[:5])  # 100 % answered, with the retry
    after = replicas("resilient")
    assert victim_pid not in after.values() and len(after) == 2
