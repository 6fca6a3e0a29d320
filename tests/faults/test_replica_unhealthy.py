"""A replica whose health check starts failing is replaced by Serve, and no request fails.

The replica is raypipe's own (a test build whose ``check_health`` also fails when a flag
file names its pid, :mod:`tests.faults.unhealthy_server`), deployed with raypipe's own
deployment options and constructor arguments. The flag is written while clients send
requests in a closed loop with the documented retry.
"""
from __future__ import annotations

import time

import pytest

import raypipe
from raypipe.progress import Progress
from raypipe.serve.deploy import deployment_options, init_args, sample_request
from tests.conftest import free_port, small_spec
from tests.serve.helpers import ClosedLoop, replicas, wait_for, with_deploy

APP = "unhealthy"
PERIOD_S, TIMEOUT_S = 1.0, 2.0
UNHEALTHY_THRESHOLD = 3  # Serve's REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD: failed checks in a row


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    storage = tmp_path_factory.mktemp("faults-health") / "store"
    spec = raypipe.load_spec(small_spec(storage, name="t-health", rows=1500, deploy={"port": free_port()}))
    result = raypipe.run(spec, progress=Progress(quiet=True))
    return spec, result.version, sample_request(spec, result.version, n=8)


def test_a_replica_failing_its_health_check_is_replaced_and_no_request_fails(trained, tmp_path):
    from ray import serve

    from tests.faults.unhealthy_server import FailOnDemandDeployment

    spec, version, rows = trained
    s = with_deploy(spec, route_prefix="/unhealthy", health_check_period_s=PERIOD_S, health_check_timeout_s=TIMEOUT_S,
                    autoscaling={"min_replicas": 2, "max_replicas": 2})
    flags = tmp_path / "flags"
    flags.mkdir()
    app = FailOnDemandDeployment.options(**deployment_options(s, version)).bind(flag_dir=str(flags), **init_args(s))
    serve.run(app, name=APP, route_prefix=s.route_prefix, blocking=False)
    url = f"http://127.0.0.1:{serve.context._get_global_client().http_config.port}{s.route_prefix}"
    try:
        wait_for(lambda: len(replicas(APP)) == 2, 60, "two replicas")
        before = replicas(APP)
        victim_id, victim_pid = next(iter(before.items()))
        with ClosedLoop(url, rows, clients=4, retry=True) as load:
            time.sleep(2)
            (flags / str(victim_pid)).touch()
            flagged_at = time.monotonic()
            # Serve gives up on a replica after UNHEALTHY_THRESHOLD failed checks, PERIOD_S apart (a failing
            # check answers at once; TIMEOUT_S bounds one that hangs); then it starts a replacement.
            bound = UNHEALTHY_THRESHOLD * (PERIOD_S + TIMEOUT_S) + 60  # + the new replica's start on 2 cores
            wait_for(lambda: victim_id not in replicas(APP) and len(replicas(APP)) == 2, bound,
                     "the unhealthy replica replaced")
            replaced_after = time.monotonic() - flagged_at
            time.sleep(2)
        print(f"unhealthy replica replaced {replaced_after:.1f} s after its check started failing")
        assert len(load.answers) > 100 and not load.failures, load.failures[:5]
        after = replicas(APP)
        assert victim_pid not in after.values() and len(after) == 2
        assert set(before.values()) - {victim_pid} <= set(after.values())  # the healthy one was left alone
        assert {v for _, _, v in load.answers} == {version}
    finally:
        serve.delete(APP)
