"""Replicas under load: autoscaling up and back down, and a killed replica that clients
never notice (with the retry raypipe documents, :mod:`raypipe.serve.client`)."""
from __future__ import annotations

import os
import signal
import time

import pytest

import raypipe
from raypipe.progress import Progress
from raypipe.serve.deploy import deploy, sample_request
from tests.conftest import free_port, small_spec
from tests.serve.helpers import ClosedLoop, replicas, wait_for, with_deploy


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    storage = tmp_path_factory.mktemp("scaling") / "store"
    spec = raypipe.load_spec(small_spec(storage, name="t-scaling", deploy={"port": free_port()}))
    result = raypipe.run(spec, progress=Progress(quiet=True))
    return spec, sample_request(spec, result.version, n=8)


def test_sustained_load_adds_a_replica_and_idle_time_removes_it(trained):
    spec, rows = trained
    s = with_deploy(spec, route_prefix="/autoscale", max_ongoing_requests=64,
                    autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                                 "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2})
    endpoint = deploy(s, app_name="autoscale")
    wait_for(lambda: len(replicas("autoscale")) == 1, 60, "one replica")
    with ClosedLoop(endpoint.url, rows, clients=16, retry=True, rows_per_request=64) as load:
        wait_for(lambda: len(replicas("autoscale")) == 2, 90, "a second replica under load")
    assert load.answers and not load.failures, load.failures[:5]
    wait_for(lambda: len(replicas("autoscale")) == 1, 90, "the idle deployment to scale back to one replica")


def test_a_killed_replica_is_replaced_and_retried_requests_all_succeed(trained):
    spec, rows = trained
    s = with_deploy(spec, route_prefix="/resilient", autoscaling={"min_replicas": 2, "max_replicas": 2})
    endpoint = deploy(s, app_name="resilient")
    wait_for(lambda: len(replicas("resilient")) == 2, 60, "two replicas")
    before = replicas("resilient")
    with ClosedLoop(endpoint.url, rows, clients=8, retry=True) as load:
        time.sleep(2)
        victim_id, victim_pid = next(iter(before.items()))
        os.kill(victim_pid, signal.SIGKILL)
        time.sleep(2)
        wait_for(lambda: len(replicas("resilient")) == 2 and victim_id not in replicas("resilient"), 90,
                 "a replacement replica")
        time.sleep(2)
    assert len(load.answers) > 50 and not load.failures, load.failures[:5]  # 100 % answered, with the retry
    after = replicas("resilient")
    assert victim_pid not in after.values() and len(after) == 2
