"""`raypipe up` / `raypipe down` (localray.py, and its record in localstate.py): a real background
Ray, real `raypipe` subprocesses.

One `ray start` for the module (~10-15 s here); the tests run in file order and the last
one stops it. Each test's RAYPIPE_HOME is private, so a developer's own `raypipe up` on
the host is never touched.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import small_spec

USING = "using the local Ray started by `raypipe up`"


def _raypipe(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raypipe", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A Ray started by `raypipe up` in a private RAYPIPE_HOME; stopped at the end in any case."""
    from raypipe import localray

    home = tmp_path_factory.mktemp("rphome")
    env = {**os.environ, "RAYPIPE_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    started = _raypipe(["up"], env)
    assert started.returncode == 0, started.stderr
    old = os.environ.get("RAYPIPE_HOME")
    os.environ["RAYPIPE_HOME"] = str(home)
    try:
        state = localray.read_state()
        assert state is not None and "local Ray started" in started.stderr, started.stderr
        yield state, env, home, started.stderr
    finally:
        localray.down(grace_s=5)
        if old is None:
            os.environ.pop("RAYPIPE_HOME", None)
        else:
            os.environ["RAYPIPE_HOME"] = old


def _process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_up_starts_a_ray_with_token_auth_a_loopback_dashboard_and_a_private_state_file(kept) -> None:
    from ray._raylet import AuthenticationTokenLoader

    from raypipe.localstate import session_pids, state_path

    state, _, home, out = kept
    assert state_path() == home / "localray.json"
    assert stat.S_IMODE(state_path().stat().st_mode) == 0o600
    assert state.dashboard_url in out and state.session_dir in out
    assert state.temp_dir.startswith("/tmp/rpup-") and not state.session_dir.startswith("/tmp/ray/")
    assert os.path.isdir(state.session_dir)
    # the cluster's processes run with token authentication and raypipe's Train and Serve settings
    raylets = [p for p in session_pids(state.temp_dir) if Path(f"/proc/{p}/comm").read_text().strip() == "raylet"]
    assert len(raylets) == 1
    env = _process_env(raylets[0])
    assert env.get("RAY_AUTH_MODE") == "token"
    assert env.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S") and env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
    # the dashboard (its job API runs code) listens on loopback and wants the token
    host, port = state.dashboard_url.removeprefix("http://").rsplit(":", 1)
    assert host == "127.0.0.1"
    assert httpx.get(f"{state.dashboard_url}/api/jobs/", timeout=30).status_code in (401, 403)
    token = AuthenticationTokenLoader.instance().get_raw_token(ignore_auth_mode=True)
    authed = httpx.get(f"{state.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert authed.status_code == 200, authed.text
    addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for addr in {a for a in addrs if not a.startswith("127.")}:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, int(port))) != 0, f"the dashboard answers on {addr}"


def test_up_again_says_it_is_already_up_and_status_shows_it(kept) -> None:
    state, env, _, _ = kept
    again = _raypipe(["up"], env)
    assert again.returncode == 0 and "already up" in again.stderr and state.address in again.stderr, again.stderr
    shown = _raypipe(["up", "--status"], env)
    assert shown.returncode == 0 and state.address in shown.stderr


def test_runs_in_new_processes_join_it_and_leave_it_running(kept, tmp_path) -> None:
    from raypipe import localray

    state, env, _, _ = kept
    # ray.small_data: tasks: small stages run as Ray tasks, so the run needs a Ray (under auto it needs none, below)
    spec = small_spec(tmp_path / "store", name="t-kept", rows=600, deploy={"enabled": False},
                      ray={"small_data": "tasks"})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    first = _raypipe(["run", str(spec_file), "--json"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert USING in first.stderr and state.address in first.stderr and state.session_dir in first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1])["status"] == "ok"
    # a second driver (a fully cached run never connects: recompute the first stage only)
    second = _raypipe(["run", str(spec_file), "--force", "ingest", "--until", "ingest"], env)
    assert second.returncode == 0 and USING in second.stderr, second.stderr[-3000:]
    assert localray.find() == state  # both drivers gone, the Ray still up
    # ray.small_data: auto (the default): every stage's data is small, so this run joins no Ray at all
    spec_file.write_text(yaml.safe_dump({**spec, "ray": {}}))
    third = _raypipe(["run", str(spec_file), "--force", "ingest", "--until", "train"], env)
    assert third.returncode == 0 and USING not in third.stderr, third.stderr[-3000:]
    assert "without starting Ray" in third.stderr


def test_ray_address_still_wins_and_a_spec_can_opt_out(kept, ray_session) -> None:
    from raypipe.runtime import dashboard_needed
    from raypipe.spec import load_spec

    minimal = {"name": "x", "data": {"source": {"type": "builtin", "name": "iris"}, "target": "target"}}
    assert load_spec(minimal).ray.reuse_local is True
    assert load_spec({**minimal, "ray": {"reuse_local": False}}).ray.reuse_local is False
    assert dashboard_needed(load_spec(minimal)) is False
    # RAY_ADDRESS (inside `ray job submit`, or exported) names another Ray: the driver joins that one
    _, env, _, _ = kept
    session = ray_session.get_runtime_context().gcs_address
    code = "import ray, raypipe.runtime as r\nr.connect()\nprint(ray.get_runtime_context().gcs_address)\n"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "RAY_ADDRESS": session,
                                                             "RAY_AUTH_MODE": "token"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == session and USING not in out.stderr


def test_down_stops_that_ray_only(kept, ray_session) -> None:
    from raypipe import localstate

    state, env, home, _ = kept
    stopped = _raypipe(["down"], env)
    assert stopped.returncode == 0 and state.address in stopped.stderr, stopped.stderr
    assert not (home / "localray.json").exists()
    assert not localstate._gcs_open(state.address) and localstate.session_pids(state.temp_dir) == []
    assert ray_session.get(ray_session.remote(lambda: 7).remote()) == 7  # the test session's Ray is still up
    assert _raypipe(["up", "--status"], env).returncode == 1
    assert "no local Ray" in _raypipe(["down"], env).stderr


def test_a_stale_state_file_is_ignored_with_a_note(tmp_path, monkeypatch, caplog) -> None:
    from raypipe import localstate, runtime

    monkeypatch.setenv("RAYPIPE_HOME", str(tmp_path))
    dead = localstate.LocalRay(address="127.0.0.1:1", temp_dir=str(tmp_path / "gone"), session_dir=str(tmp_path / "gone"),
                             dashboard_url="", num_cpus=4, ingress="proxy")
    localstate.write_state(dead)
    with caplog.at_level("WARNING", logger="raypipe"):
        assert runtime._kept_local_ray() is None
    assert "not running any more" in caplog.text and str(localstate.state_path()) in caplog.text
    assert localstate.read_state() == dead  # kept until `raypipe up` or `raypipe down` replaces it


def test_up_refuses_a_ray_without_authentication_unless_asked(tmp_path) -> None:
    env = {**os.environ, "RAYPIPE_HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    refused = _raypipe(["up"], env)
    assert refused.returncode == 2 and "--allow-insecure" in refused.stderr, refused.stderr
    assert not (tmp_path / "localray.json").exists()
