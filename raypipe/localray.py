"""`raypipe up` / `raypipe down`: a local Ray kept running between runs.

A cold ``raypipe run`` on a 2-core machine spends ~10 s in ``ray.init`` before its first
stage. A developer who runs the pipeline many times a day can start one background Ray
with ``raypipe up`` instead: every later run (``runtime.connect`` without an address)
joins it and pays only for a new driver (see :func:`raypipe.runtime.connect`).

What it starts is what a run's own local Ray would be: the same logical CPUs
(max(4, cores)), Ray Train's and Serve's environment (:func:`runtime.train_env`,
:func:`runtime.serve_env`, set in the ``ray start`` process, so every Ray process
inherits them and Serve reads them at import), token authentication on, the dashboard on
127.0.0.1 (a long-lived dev Ray: its UI and state API are worth the ~3 s once), and its
own session folder (never /tmp/ray: a test session's or a plain ``ray.init``'s Ray on the
same host is left alone; ``raypipe down`` stops only the processes of this one).

Measured with benchmarks/startup_bench.py (2 cores shared with other test sessions, medians
of 4 fresh drivers, rough): joining it takes 0.46 s against 5.1-5.6 s for a new local
``ray.init``. Workers belong to a job, and Ray prestarts workers for a Ray's first driver
only, so a later driver pays for its own: its first task (importing pandas, pyarrow,
scikit-learn and raypipe in a new worker) took 3.4 s, four more in parallel 3.3 s (Ray
starts two workers at a time here), against 2.1 s and 0.01 s on a fresh Ray, whose
prestarted workers start during ``ray.init``. What a run saves is Ray's own start and
stop, and Serve's first start (10-15 s) when it deploys: see benchmarks/pipeline_bench.py.

Its address and folder are kept in ``$RAYPIPE_HOME/localray.json`` (default
``~/.raypipe``), readable by the user only. A state file whose Ray is gone (a reboot, a
killed process) is stale: :func:`find` ignores it and says so.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("raypipe")
STATE_FILE = "localray.json"


@dataclass
class LocalRay:
    """One background Ray started by :func:`up`."""

    address: str          # the GCS address, host:port, as Ray reports it
    temp_dir: str         # the Ray's own --temp-dir (its sessions live under it)
    session_dir: str      # the session folder (logs, metrics, sockets)
    dashboard_url: str    # http://127.0.0.1:PORT
    num_cpus: int
    ingress: str          # Serve's ingress (haproxy or proxy)
    env: dict[str, str] = field(default_factory=dict)  # what the Ray's processes got beyond our own environment
    started: float = 0.0  # time.time() when it came up


def home() -> Path:
    """raypipe's per-user folder: ``$RAYPIPE_HOME`` or ``~/.raypipe``."""
    return Path(os.environ.get("RAYPIPE_HOME") or "~/.raypipe").expanduser()


def state_path() -> Path:
    return home() / STATE_FILE


def read_state() -> LocalRay | None:
    """The recorded Ray, alive or not (None when there is no readable state file)."""
    try:
        data = json.loads(state_path().read_text())
        return LocalRay(**data)
    except (OSError, ValueError, TypeError):
        return None


def _write_state(ray_: LocalRay) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(ray_), f, indent=2)
    os.replace(tmp, path)


def _gcs_open(address: str, timeout: float = 1.0) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def alive(ray_: LocalRay) -> bool:
    """Whether that Ray still runs: its GCS answers and a process of its session is alive.

    Both, because after a reboot another program may hold the port.
    """
    return _gcs_open(ray_.address) and bool(_session_pids(ray_.temp_dir))


def find(note: bool = True) -> LocalRay | None:
    """The running Ray that `raypipe up` started, or None. A stale state file is noted and ignored."""
    ray_ = read_state()
    if ray_ is None:
        return None
    if alive(ray_):
        return ray_
    if note:
        log.warning("ignoring %s: the Ray started by `raypipe up` at %s is not running any more "
                    "(`raypipe up` starts a new one, `raypipe down` forgets it)", state_path(), ray_.address)
    return None


def up(num_cpus: int | None = None, ingress: str = "haproxy", allow_insecure: bool = False,
       dashboard: bool = True, timeout_s: float = 120.0) -> tuple[LocalRay, bool]:
    """Start the background Ray unless one is up; returns it and whether it was started now.

    ``ray start --head`` in a child process with its own temp dir and ports picked from
    :func:`runtime.free_port` (a test session's Ray or HAProxy on the host keeps its own).
    Token authentication: ``RAY_AUTH_MODE=token`` in the Ray's environment, with a token
    generated in ``~/.ray/auth_token`` when there is none (``ray start``, unlike ``ray.init``,
    turns it on only when a token already exists). ``RAY_AUTH_MODE=disabled`` in the
    environment is refused unless ``allow_insecure`` (as for a run's own local Ray).
    """
    from raypipe.errors import RaypipeError
    from raypipe.runtime import free_port, require_token_auth, serve_env, train_env

    running = find()
    if running is not None:
        return running, False
    require_token_auth(allow_insecure)
    env_extra = {**train_env(), **serve_env(ingress)}
    secure = os.environ.get("RAY_AUTH_MODE", "token") == "token"
    if secure:
        env_extra["RAY_AUTH_MODE"] = "token"
        _ensure_token()
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    # Short and under /tmp: Ray's socket paths (<temp>/session_.../sockets/plasma_store) stop at 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rpup-", dir="/tmp")
    gcs_port, dash_port, client_port, metrics_port = (free_port() for _ in range(4))
    args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
            f"--port={gcs_port}", f"--num-cpus={cpus}", f"--temp-dir={temp_dir}",
            f"--include-dashboard={'true' if dashboard else 'false'}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
            f"--ray-client-server-port={client_port}", f"--metrics-export-port={metrics_port}",
            "--disable-usage-stats"]
    out = Path(temp_dir) / "raypipe-up.log"
    with open(out, "wb") as f:
        proc = subprocess.run(args, env={**os.environ, **env_extra}, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout_s, check=False)
    if proc.returncode != 0:
        _stop_pids(_session_pids(temp_dir))
        tail = out.read_text(errors="replace")[-2000:]
        raise RaypipeError(f"`ray start --head` failed (exit {proc.returncode}); its output ({out}):\n{tail}")
    address = (Path(temp_dir) / "ray_current_cluster").read_text().strip()
    session = os.path.realpath(os.path.join(temp_dir, "session_latest"))
    ray_ = LocalRay(address=address, temp_dir=temp_dir, session_dir=session,
                    dashboard_url=f"http://127.0.0.1:{dash_port}" if dashboard else "", num_cpus=cpus,
                    ingress="haproxy" if env_extra.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy",
                    env=env_extra, started=time.time())
    _write_state(ray_)
    return ray_, True


def _ensure_token() -> None:
    """A Ray token in ``~/.ray/auth_token`` (or wherever RAY_AUTH_TOKEN[_PATH] points) exists."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        generate_and_save_token()
        AuthenticationTokenLoader.instance().reset_cache()


def down(grace_s: float = 10.0) -> LocalRay | None:
    """Stop the Ray `raypipe up` started (only its processes) and forget it; None when none was recorded."""
    ray_ = read_state()
    if ray_ is None:
        return None
    _stop_pids(_session_pids(ray_.temp_dir), grace_s)
    state_path().unlink(missing_ok=True)
    import shutil

    shutil.rmtree(ray_.temp_dir, ignore_errors=True)
    haproxy = ray_.env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if haproxy:
        shutil.rmtree(haproxy, ignore_errors=True)
    return ray_


def _psutil() -> Any:
    import ray  # noqa: F401 - Ray carries psutil in ray/thirdparty_files and puts it on sys.path
    import psutil

    return psutil


def _session_pids(temp_dir: str) -> list[int]:
    """The processes of the Ray whose temp dir is ``temp_dir``: those naming it on their command line
    (GCS, raylet, dashboard, monitors) and all their descendants (agents, workers, HAProxy)."""
    psutil = _psutil()
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if any(temp_dir in arg for arg in cmd) and p.pid != os.getpid():
            roots.append(p)
    pids = set()
    for p in roots:
        pids.add(p.pid)
        try:
            pids.update(c.pid for c in p.children(recursive=True))
        except psutil.Error:
            pass
    pids.discard(os.getpid())
    return sorted(pids)


def _stop_pids(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM in `ray stop`'s order (the GCS last: a raylet whose GCS is gone first waits for it
    before exiting), then SIGKILL what is left after ``grace_s``."""
    psutil = _psutil()
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass

    def name(p: Any) -> str:
        try:
            return p.name()
        except psutil.Error:
            return ""

    gcs = [p for p in procs if name(p) == "gcs_server"]
    rest = sorted((p for p in procs if p not in gcs), key=lambda p: name(p) != "raylet")  # the raylet first
    deadline = time.monotonic() + grace_s
    for group in (rest, gcs):
        for p in group:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        psutil.wait_procs(group, timeout=max(0.1, deadline - time.monotonic()) if group is rest else 3)
    for p in procs:
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)
