"""``raypipe export kfp``: the compiled KFP v2 pipeline, without Kubernetes.

The YAML compiles and reloads (as YAML and through kfp's own loader), its DAG runs the
stages in order (the IR's ``root.dag.tasks[*].dependentTasks``), KFP's cache is off, and
the pipeline runs end to end with KFP's local ``SubprocessRunner`` on the built-in data —
each task a real ``raypipe run SPEC --only STAGE`` subprocess joining the session's Ray —
and registers a version. In ``rayjob`` mode it compiles, and the RayJob each task would
create passes the KubeRay manifest checks (:mod:`tests.export.kuberay_checks`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import raypipe
from raypipe.runner import STAGE_NAMES
from tests.conftest import small_spec
from tests.export.kuberay_checks import check_manifest

from raypipe.export.kfp import export_kfp  # imports kfp only when called

# The task bodies below run without kfp; compiling and KFP's local runner need it.
needs_kfp = pytest.mark.skipif(importlib.util.find_spec("kfp") is None,
                               reason="the kfp extra is not installed: pip install 'raypipe[kfp]'")


def _write_spec(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(small_spec(tmp_path / "store", name="t-kfp", **sections)))
    return path


def _stage_order(ir: dict) -> list[str]:
    """The stages (task display names) in the order the DAG's dependencies allow, checking it is a chain."""
    tasks = ir["root"]["dag"]["tasks"]
    by_task = {name: t["taskInfo"]["name"] for name, t in tasks.items()}
    deps = {by_task[name]: [by_task[d] for d in t.get("dependentTasks", [])] for name, t in tasks.items()}
    order, done = [], set()
    while len(order) < len(deps):
        ready = sorted(s for s, d in deps.items() if s not in done and set(d) <= done)
        assert len(ready) == 1, f"the DAG is not one chain: ready together {ready} (dependencies {deps})"
        order.append(ready[0])
        done.add(ready[0])
    for stage, before in zip(order[1:], order):
        assert deps[stage] == [before], f"{stage} must depend on {before} only (got {deps[stage]})"
    return order


@needs_kfp
def test_compiles_reloads_and_orders_the_stages(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path)
    out = tmp_path / "pipeline-kfp.yaml"
    summary = export_kfp(spec, out, image="reg/raypipe:1.2")
    assert summary["stages"] == list(STAGE_NAMES)

    ir = yaml.safe_load(out.read_text())
    assert ir["pipelineInfo"]["name"] == "t-kfp"
    assert _stage_order(ir) == list(STAGE_NAMES)
    tasks = ir["root"]["dag"]["tasks"].values()
    assert all(t.get("cachingOptions", {}).get("enableCache") in (None, False) for t in tasks)  # KFP's cache off
    stages = {t["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"] for t in tasks}
    assert stages == set(STAGE_NAMES)
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert params["spec"]["defaultValue"] == str(spec)
    assert params["spec_sha256"]["defaultValue"] == summary["spec_sha256"]
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {"reg/raypipe:1.2"}

    from kfp import components

    loaded = components.load_component_from_file(str(out))  # kfp's own loader reads it back
    assert loaded.name == "t-kfp"
    assert set(loaded.component_spec.inputs) == {"spec", "address", "spec_sha256"}


@needs_kfp
def test_cli_writes_the_pipeline_and_refuses_a_bad_mode(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path)
    out = tmp_path / "p.yaml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(raypipe.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    ok = subprocess.run([sys.executable, "-m", "raypipe", "export", "kfp", str(spec), "-o", str(out), "--json"],
                        capture_output=True, text=True, timeout=120, env=env, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["path"] == str(out)
    assert out.is_file()
    bad = subprocess.run([sys.executable, "-m", "raypipe", "export", "kfp", str(spec), "--mode", "argo"],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert bad.returncode == 2 and "--mode must be one of container, rayjob" in bad.stderr
    before = spec.read_text()
    over = subprocess.run([sys.executable, "-m", "raypipe", "export", "kfp", str(spec), "-o", str(spec)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert over.returncode == 2 and "is the spec itself" in over.stderr and spec.read_text() == before


@needs_kfp
def test_rayjob_mode_compiles_and_its_rayjobs_pass_the_manifest_checks(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path)
    out = tmp_path / "rayjob-kfp.yaml"
    export_kfp(spec, out, image="reg/raypipe:1.2", mode="rayjob", spec_in_image="/app/pipeline.yaml")
    ir = yaml.safe_load(out.read_text())
    assert _stage_order(ir) == list(STAGE_NAMES)
    for task in ir["root"]["dag"]["tasks"].values():
        stage = task["taskInfo"]["name"]
        manifest = json.loads(task["inputs"]["parameters"]["manifest"]["runtimeValue"]["constant"])
        assert check_manifest(manifest) == [], stage
        assert manifest["spec"]["entrypoint"] == \
            f"raypipe run /app/pipeline.yaml --only {stage} --address auto --no-serve --json"
        assert manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] \
            == "reg/raypipe:1.2"


@needs_kfp
def test_runs_end_to_end_with_kfp_local_runner(ray_session, tmp_path: Path, monkeypatch) -> None:
    """Each task is a lightweight component: its body runs ``raypipe run --only STAGE`` as a subprocess."""
    from kfp import local

    gcs = ray_session.get_runtime_context().gcs_address
    spec = _write_spec(tmp_path, ray={"address": gcs})  # each stage joins the session's Ray instead of starting one
    out = tmp_path / "pipeline-kfp.yaml"
    export_kfp(spec, out, image="python:3.11")
    # the tasks' subprocesses import this raypipe (not another install) and get the session's auth env (os.environ)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(raypipe.__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    from kfp import components

    pipeline = components.load_component_from_file(str(out))  # what a KFP cluster would receive
    start = time.monotonic()
    task = pipeline()
    seconds = time.monotonic() - start
    print(f"\nKFP local run of {len(STAGE_NAMES)} stages: {seconds:.1f}s")
    assert task is not None

    from raypipe.registry import Registry

    reg = Registry(str(tmp_path / "store"), "t-kfp")
    assert reg.versions() == [1]
    summaries = [json.loads(json.loads(p.read_text())["parameterValues"]["Output"])
                 for p in (tmp_path / "kfp-root").rglob("executor_output.json")]
    ran = sorted(name for s in summaries for name, st in s["stages"].items() if st["status"] == "ran")
    assert ran == sorted(STAGE_NAMES), "each task runs its one stage (the others are cache hits)"
    assert all(s["status"] == "ok" for s in summaries)


class _FakeCustomObjects:
    """The two CustomObjectsApi calls the RayJob task makes, answering a scripted status sequence."""

    def __init__(self, statuses: list[dict]) -> None:
        self.statuses, self.created = list(statuses), []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, plural) == ("ray.io", "v1", "rayjobs") and name == self.created[-1][4]["metadata"]["name"]
        return {"status": self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]}


def _fake_kubernetes(monkeypatch, api: _FakeCustomObjects) -> None:
    import types

    class ConfigException(Exception):
        pass

    def incluster() -> None:
        raise ConfigException("not in a pod")

    config = types.SimpleNamespace(ConfigException=ConfigException, load_incluster_config=incluster,
                                   load_kube_config=lambda: None)
    module = types.SimpleNamespace(client=types.SimpleNamespace(CustomObjectsApi=lambda: api), config=config)
    monkeypatch.setitem(sys.modules, "kubernetes", module)


def test_rayjob_task_creates_the_rayjob_and_waits_for_its_status(monkeypatch) -> None:
    """The rayjob task's body against a fake ``kubernetes`` client (no cluster here)."""
    from raypipe.export.kfp_components import raypipe_rayjob
    from raypipe.export.kuberay import rayjob_manifest

    manifest = json.dumps(rayjob_manifest("/app/p.yaml", "train", image="img", pipeline="p"))
    api = _FakeCustomObjects([{}, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                              {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}])
    _fake_kubernetes(monkeypatch, api)
    out = json.loads(raypipe_rayjob(manifest, "ml", 0.0, 60.0))
    (_, _, namespace, plural, body), = api.created
    assert (namespace, plural, out["jobStatus"], out["namespace"]) == ("ml", "rayjobs", "SUCCEEDED", "ml")
    assert body["metadata"]["name"].startswith("raypipe-p-train-") and out["rayjob"] == body["metadata"]["name"]
    assert check_manifest(body) == []  # the unique name is still a valid one

    _fake_kubernetes(monkeypatch, _FakeCustomObjects([{"jobDeploymentStatus": "Complete", "jobStatus": "FAILED",
                                                       "message": "exit code 4"}]))
    with pytest.raises(RuntimeError, match="jobStatus=FAILED"):
        raypipe_rayjob(manifest, "ml", 0.0, 60.0)
    _fake_kubernetes(monkeypatch, _FakeCustomObjects([{"jobDeploymentStatus": "Initializing"}]))
    with pytest.raises(TimeoutError):
        raypipe_rayjob(manifest, "ml", 0.0, 0.0)


def test_stage_task_fails_on_a_missing_earlier_stage_and_on_another_spec(tmp_path: Path, monkeypatch) -> None:
    """The container task's body: `raypipe run --only` exits 2 (no Ray started), and the spec's sha256 is checked."""
    import hashlib

    from raypipe.export.kfp_components import raypipe_stage

    spec = _write_spec(tmp_path)
    digest = hashlib.sha256(spec.read_bytes()).hexdigest()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(raypipe.__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(RuntimeError, match="'train' failed with exit code 2"):
        raypipe_stage(str(spec), "train", "", digest)
    with pytest.raises(RuntimeError, match="is not the spec this pipeline was exported from"):
        raypipe_stage(str(spec), "ingest", "", "0" * 64)
    assert not (tmp_path / "store" / "stages").exists()
