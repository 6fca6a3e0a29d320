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

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raypipe.localstate import LocalRay, find, psutil_module, read_state, session_pids, state_path, write_state

__all__ = ["LocalRay", "down", "find", "read_state", "state_path", "up"]


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
    from raypipe.errors import RaypipeError, SpecError
    from raypipe.runtime import free_port, serve_env, train_env

    running = find()
    if running is not None:
        return running, False
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode != "token" and not allow_insecure:
        raise SpecError(f"RAY_AUTH_MODE={mode!r} would start a Ray without authentication: anyone on this host could "
                        "run code through it. Unset RAY_AUTH_MODE, or `raypipe up --allow-insecure` to accept that")
    stale = read_state()
    if stale is not None:  # what is left of it (a GCS that died under a live raylet, its folders) goes first
        _remove(stale, grace_s=5)
    env_extra = {**train_env(), **serve_env(ingress)}
    if mode == "token":
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
        _stop_pids(session_pids(temp_dir))
        tail = out.read_text(errors="replace")[-2000:]
        raise RaypipeError(f"`ray start --head` failed (exit {proc.returncode}); its output ({out}):\n{tail}")
    address = (Path(temp_dir) / "ray_current_cluster").read_text().strip()
    session = os.path.realpath(os.path.join(temp_dir, "session_latest"))
    ray_ = LocalRay(address=address, temp_dir=temp_dir, session_dir=session,
                    dashboard_url=f"http://127.0.0.1:{dash_port}" if dashboard else "", num_cpus=cpus,
                    ingress="haproxy" if env_extra.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy",
                    env=env_extra, started=time.time())
    write_state(ray_)
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
    _remove(ray_, grace_s)
    state_path().unlink(missing_ok=True)
    return ray_


def _remove(ray_: LocalRay, grace_s: float) -> None:
    """Stop that Ray's processes and delete its temp dir and HAProxy folder."""
    import shutil

    _stop_pids(session_pids(ray_.temp_dir), grace_s)
    shutil.rmtree(ray_.temp_dir, ignore_errors=True)
    haproxy = ray_.env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if haproxy:
        shutil.rmtree(haproxy, ignore_errors=True)


def _stop_pids(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM in `ray stop`'s order (the GCS last: a raylet whose GCS is gone first waits for it
    before exiting), then SIGKILL what is left after ``grace_s``."""
    psutil = psutil_module()
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
