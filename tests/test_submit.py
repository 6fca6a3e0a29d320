"""What `raypipe submit` sends with a job: the spec with its paths made absolute, the entrypoint, the version
it requires (the Jobs API round trip itself: tests/e2e/test_cluster.py)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import yaml

from raypipe.errors import SpecError
from raypipe.submit import REQUIRE_VERSION_ENV, entrypoint, runtime_env, shipped_spec
from raypipe.version import __version__


def test_the_shipped_spec_has_absolute_paths_and_nothing_else_changed(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data.csv").write_text("a,b\n1,2\n")
    doc = {"name": "p", "storage": "./.raypipe",
           "data": {"source": {"type": "csv", "path": "data.csv"}, "target": "b"},
           "train": {"seed": 7}}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    shipped = shipped_spec(path)
    assert shipped["storage"] == str(folder / ".raypipe")
    assert shipped["data"]["source"]["path"] == str(folder / "data.csv")
    assert shipped["train"] == {"seed": 7} and "ray" not in shipped  # no defaults filled in, no other change

    env = runtime_env(shipped, tmp_path)
    assert env["env_vars"] == {REQUIRE_VERSION_ENV: __version__} and "pip" not in env
    assert yaml.safe_load((tmp_path / "pipeline.yaml").read_text()) == shipped


def test_a_bad_spec_fails_before_anything_is_sent(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "data": {"source": {"type": "builtin", "name": "nope"}}}))
    with pytest.raises(SpecError, match="data.source"):
        shipped_spec(path)


def test_entrypoint_passes_the_stage_options_on():
    args = shlex.split(entrypoint(only="train", run_key="manual__2026-12-07T00:00:00+00:00"))
    assert args[:3] == ["raypipe", "run", "pipeline.yaml"] and "--no-serve" in args and "--json" in args
    assert args[args.index("--only") + 1] == "train"
    assert args[args.index("--run-key") + 1] == "manual__2026-12-07T00:00:00+00:00"
    assert args[args.index("--address") + 1] == "auto"


def test_a_job_on_a_cluster_with_another_raypipe_stops_with_exit_2(tmp_path):
    env = {**os.environ, REQUIRE_VERSION_ENV: "0.0.0-other"}
    proc = subprocess.run([sys.executable, "-m", "raypipe", "run", "--until", "ingest"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"this cluster runs raypipe {__version__}, but the job was submitted by raypipe 0.0.0-other" in proc.stderr


def test_submit_without_an_address_says_how(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    proc = subprocess.run([sys.executable, "-m", "raypipe", "submit", "x.yaml"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--address http://head:8265" in proc.stderr


def test_stage_options_are_checked_before_the_cluster_is_asked(tmp_path):
    from raypipe.submit import submit

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "data": {"source": {"type": "builtin", "name": "iris"},
                                                          "target": "target"}}))
    nowhere = "http://127.0.0.1:9"  # nothing listens: a check that reached for the cluster would fail otherwise
    with pytest.raises(SpecError, match="drop --until evaluate"):
        submit(path, address=nowhere, only="train", until="evaluate")
    with pytest.raises(SpecError, match="'deploy' is not a stage"):
        submit(path, address=nowhere, only="deploy")
