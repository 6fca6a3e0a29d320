"""Serve's control plane and ingress killed under load (real Ray, real Serve, real processes).

Clients send requests in a closed loop with the retry raypipe documents
(:mod:`raypipe.serve.client`) while the Serve controller is SIGKILLed twice, the second
time in the middle of a promotion, and then Serve's HAProxy once. Every request must be
answered, the promotion must converge on the new version, and the replicas must be the
same processes throughout: neither the controller nor the ingress is on their path.

The mid-promotion kill is placed, not timed: the deploying client is caught right after
the controller accepted the new ``user_config`` and before the rollout is reported done
(Serve's client then waits for the application to be RUNNING), and the controller is
killed there.
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

import raypipe
from raypipe.progress import Progress
from raypipe.registry import Registry
from raypipe.serve.deploy import deploy, sample_request
from tests.conftest import free_port, small_spec
from tests.serve.helpers import ClosedLoop, alive_actors, replicas, wait_for, with_deploy

APP = "ctl"


@pytest.fixture(scope="module")
def two_versions(ray_session, tmp_path_factory):
    """Two registered versions of one pipeline, v1 the champion."""
    storage = tmp_path_factory.mktemp("faults-serve") / "store"
    spec = raypipe.load_spec(small_spec(storage, name="t-ctl", rows=1500, deploy={"port": free_port()}))
    first = raypipe.run(spec, progress=Progress(quiet=True))
    other = raypipe.load_spec(small_spec(storage, name="t-ctl", rows=1500, deploy={"port": spec.deploy.port},
                                         model={"kind": "sklearn:sklearn.linear_model:LogisticRegression",
                                                "params": {"max_iter": 300, "C": 0.01}}))
    second = raypipe.run(other, progress=Progress(quiet=True))
    reg = Registry(spec.storage, spec.name)
    reg.set_alias("champion", first.version, reason="test: v1 serves first")
    return spec, reg, first.version, second.version, sample_request(spec, first.version, n=8)


def _controller_pid() -> int | None:
    alive = [a for a in alive_actors() if a.class_name == "ServeController"]
    return alive[0].pid if alive else None


def _kill_controller() -> int:
    """SIGKILL the Serve controller's process; returns its pid (Ray restarts the actor)."""
    pid = _controller_pid()
    assert pid, "no Serve controller alive"
    os.kill(pid, signal.SIGKILL)
    return pid


def _haproxy_pids() -> list[int]:
    """HAProxy processes of this session's Ray (their command line names its config folder)."""
    folder = os.path.dirname(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "haproxy" in cmd.split(" ")[0] and folder in cmd:
            found.append(int(pid))
    return found


def test_controller_killed_twice_once_mid_promotion_and_haproxy_once_under_load(two_versions, monkeypatch):
    from ray.serve._private.client import ServeControllerClient

    spec, reg, v1, v2, rows = two_versions
    s = with_deploy(spec, route_prefix="/ctl", autoscaling={"min_replicas": 2, "max_replicas": 2})
    endpoint = deploy(s, app_name=APP)
    wait_for(lambda: len(replicas(APP)) == 2, 60, "two replicas")
    replica_pids = set(replicas(APP).values())
    killed: list[int] = []
    try:
        with ClosedLoop(endpoint.url, rows, clients=4, retry=True) as load:
            time.sleep(2)
            # 1. The controller, while it only watches.
            killed.append(_kill_controller())
            wait_for(lambda: _controller_pid() not in (None, *killed), 60, "a restarted Serve controller")
            time.sleep(2)

            # 2. The controller again, in the middle of a promotion.
            original = ServeControllerClient._wait_for_application_running

            def kill_then_wait(self, name, *args, **kwargs):
                if name == APP and len(killed) == 1:
                    killed.append(_kill_controller())  # the new user_config is accepted, the rollout is not done
                return original(self, name, *args, **kwargs)

            monkeypatch.setattr(ServeControllerClient, "_wait_for_application_running", kill_then_wait)
            reg.set_alias("champion", v2, reason="test: promote while the controller dies")
            promoted = deploy(s, app_name=APP)  # the same call `registry promote --update-serving` makes
            monkeypatch.undo()
            assert len(killed) == 2 and promoted.version == v2
            wait_for(lambda: _controller_pid() not in (None, *killed), 60, "a restarted Serve controller")
            converged_at = time.monotonic()
            time.sleep(2)

            # 3. HAProxy: Serve restarts it once its manager fails its health checks.
            haproxy = _haproxy_pids()
            assert haproxy, "no HAProxy process of this Ray"
            for pid in haproxy:
                os.kill(pid, signal.SIGKILL)
            killed_proxy_at = time.monotonic()
            wait_for(lambda: any(t > killed_proxy_at and code == 200 for t, code, _ in list(load.answers)), 90,
                     "an answer through a restarted HAProxy")
            time.sleep(2)
    finally:
        reg.set_alias("champion", v1, reason="test: restore")
    try:
        assert len(load.answers) > 200 and not load.failures, load.failures[:5]  # 100 % answered
        after = Counter(v for t, _, v in load.answers if t >= converged_at)
        assert set(after) == {v2}, after  # the promotion converged: everything sent after it is v2
        assert _controller_pid() not in killed
        assert not set(_haproxy_pids()) & set(haproxy)  # a new HAProxy answered
        assert set(replicas(APP).values()) == replica_pids  # same replica processes throughout
    finally:
        from ray import serve

        serve.delete(APP)
