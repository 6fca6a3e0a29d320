"""Helpers for tests that start their own multi-node Ray cluster with ``ray start --block``.

Other people may run Ray on this host: such a cluster uses its own temp dir and free
ports, never ``ray stop``, and ends only the processes its test started (each
``ray start`` runs in a session of its own, so its process group is that node).
The cluster imports raypipe from this checkout (``PYTHONPATH``), not from wherever
the interpreter's editable install points.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raypipe.runtime import free_port

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAY = Path(PYTHON).parent / "ray"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports outside the ranges Ray itself draws from (``runtime.free_port``)."""
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def cluster_env(token: str) -> dict[str, str]:
    """This process's environment without any RAY_* setting, plus token auth.

    The pytest process may be connected to a local Ray (RAY_ADDRESS and friends):
    nothing of it may leak into the cluster or the job client. ``PYTHONPATH`` starts
    with this checkout, so the nodes, their workers and the job run the code under test.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    return env


def node_ports_args(ports: list[int]) -> list[str]:
    """Free ports for every per-node port that defaults to a fixed number (6 ports).

    Other Ray clusters on this host use the defaults, and two nodes on one host
    must not share them either.
    """
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [f"{name}={port}" for name, port in zip(names, ports)]


def start_node(args: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """``ray start --block <args>`` in a new session of its own.

    Its process group holds ``ray start`` and the node's raylet and agents; the raylet
    gives each worker a process group of its own (see :func:`node_processes`).
    """
    with open(log_path, "w") as log:
        return subprocess.Popen([str(RAY), "start", "--block", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)


def join_node(args: list[str], log_path: Path, env: dict[str, str], cwd: Path, tries: int = 3,
              timeout: float = 180.0) -> subprocess.Popen:
    """A worker node (``ray start --block --address ...``) that has joined, on fresh ports; tried again if it fails.

    Ray waits a fixed 30 s for a new raylet to appear in the GCS and gives up after that:
    on this shared 2-core host under a load of 50 a node failed so. Each try logs to
    ``<log_path>`` with ``.1``, ``.2`` ... before the suffix for the later tries.
    """
    for attempt in range(tries):
        log = log_path if attempt == 0 else log_path.with_suffix(f".{attempt}{log_path.suffix}")
        proc = start_node([*args, *node_ports_args(free_ports(6))], log, env, cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if "block forever" in tail(log):  # printed once the node is up and registered
                return proc
            time.sleep(0.5)
        if proc.poll() is None:
            stop_node(proc)
            pytest.fail(f"`ray start` did not come up in {timeout:.0f}s:\n{tail(log)}")
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the failed start left running in its group
        except ProcessLookupError:
            pass
        print(f"`ray start` failed (exit {proc.returncode}, try {attempt + 1} of {tries}):\n{tail(log, 600)}")
    pytest.fail(f"`ray start` failed {tries} times; the last:\n{tail(log)}")


def stop_node(proc: subprocess.Popen | None, grace: float = 60.0) -> None:
    """SIGTERM one `ray start --block` (it stops its node's Ray processes), then wait."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        # Last resort: its whole process group (started with start_new_session=True,
        # so the group holds only this node's Ray processes).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def stop_nodes(*procs: subprocess.Popen | None, grace: float = 60.0) -> None:
    """:func:`stop_node` for several nodes at once: SIGTERM them all, then wait for each."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        stop_node(proc, grace)


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every live process."""
    table = {}
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            stat = (pid_dir / "stat").read_text()
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces and parentheses): state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] not in ("Z", "X"):  # zombies and the dying are gone
            table[int(pid_dir.name)] = (int(fields[1]), int(fields[2]), cmd)
    return table


def node_processes(root: int) -> dict[int, str]:
    """pid -> command line of ``root`` (a `ray start`), its process group and all its descendants."""
    table = _proc_table()
    found = {pid for pid, (_, pgrp, _) in table.items() if pgrp == root} | ({root} & set(table))
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return {pid: table[pid][2] for pid in found}


def kill_node(proc: subprocess.Popen, timeout: float = 30.0) -> dict[int, str]:
    """SIGKILL a whole node at once: its `ray start` process group, then any descendant outside it.

    Returns the processes killed (pid -> command line) once every one of them is gone
    (a zombie counts as gone). They are collected before the first signal, since a
    killed parent's children are re-parented.
    """
    victims = node_processes(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while (alive := set(victims) & set(_proc_table())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"SIGKILLed processes still alive after {timeout:.0f}s: {sorted(alive)}"
    return victims


def kill_leftovers(temp_dir: Path) -> list[str]:
    """SIGKILL any process still running from this cluster's temp dir (none expected).

    Every process of a Ray node (gcs_server, raylet, workers, agents) carries its
    session folder on its command line, and the temp dir is unique to this test.
    """
    killed = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in cmd and int(pid_dir.name) != os.getpid():
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
                killed.append(f"{pid_dir.name}: {cmd[:120]}")
            except ProcessLookupError:
                pass
    return killed


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_for(what: str, check, timeout: float, procs: dict[str, tuple[subprocess.Popen, Path]], every: float = 1.0):
    """Poll ``check()`` until it returns something truthy; fail if a node's `ray start` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"`ray start` ({name}) exited with {proc.returncode} while waiting for {what}:\n{tail(log)}")
        result = check()
        if result:
            return result
        time.sleep(every)
    logs = "\n".join(f"--- {name} ---\n{tail(log)}" for name, (_, log) in procs.items())
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def alive_nodes(gcs_address: str, env: dict[str, str]) -> int:
    """Number of alive nodes as `ray status` reports them (0 when it cannot tell yet)."""
    try:
        out = subprocess.run([str(RAY), "status", "--address", gcs_address], check=False, env=env,
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 0
    if out.returncode != 0:
        return 0
    active = re.search(r"Active:\n(.*?)\n\s*Pending:", out.stdout, re.DOTALL)
    return len(re.findall(r"node_", active.group(1))) if active else 0
