"""The record of the local Ray that `raypipe up` started: where it is and whether it still runs.

Kept apart from :mod:`raypipe.localray` (which starts and stops it, with
:mod:`raypipe.runtime`'s settings) so that :func:`raypipe.runtime.connect` can find it
without an import circle. The record lives in ``$RAYPIPE_HOME/localray.json`` (default
``~/.raypipe``), readable by the user only.
"""
from __future__ import annotations

import json
import logging
import os
import socket
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


def write_state(ray_: LocalRay) -> None:
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
    return _gcs_open(ray_.address) and bool(session_pids(ray_.temp_dir))


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


def psutil_module() -> Any:
    import ray  # noqa: F401 - Ray carries psutil in ray/thirdparty_files and puts it on sys.path
    import psutil

    return psutil


def session_pids(temp_dir: str) -> list[int]:
    """The processes of the Ray whose temp dir is ``temp_dir``: those naming it on their command line
    (GCS, raylet, dashboard, monitors) and all their descendants (agents, workers, HAProxy)."""
    psutil = psutil_module()
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
        except psutil.Error:
            continue
        # a Ray process (its program or script lives in Ray's package) naming that folder: not, say, a `tail -f`
        # of one of its logs
        if any(temp_dir in arg for arg in cmd) and "ray" in " ".join(cmd[:3]) and p.pid != os.getpid():
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
