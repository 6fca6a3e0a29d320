"""The fraud-detection example as a Ray job on a real 2-node Ray cluster.

Two ``ray start --block`` processes on this host form the cluster (head + one
worker node), with token authentication on. The pipeline is submitted through the
Jobs API (``ray job submit``) exactly as the example's README says, and joins the
cluster with ``--address auto``. The test checks the job's result, the registry in
its storage folder, and that Ray Train ran 2 DDP workers in different processes.

Other people may run Ray on this host: this test uses its own temp dir and free
ports, never ``ray stop``, and ends only the two processes it started. It does not
touch the pytest process's own Ray (no ``ray_session`` fixture).
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import yaml

from tests.cluster_helpers import (
    PYTHON,
    RAY,
    REPO,
    alive_nodes,
    cluster_env,
    free_ports,
    kill_leftovers,
    node_ports_args,
    stop_nodes,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

EXAMPLE = REPO / "examples" / "fraud_detection" / "pipeline.yaml"


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    from tests.export.test_airflow import airflow_home as make

    return make(tmp_path_factory)  # the same Airflow home the export tests make


class Cluster(NamedTuple):
    dashboard: str  # the Jobs API: http://127.0.0.1:<port>
    env: dict[str, str]  # a client's environment: token auth, this checkout on PYTHONPATH
    tmp: Path


def _example_for_test(dest: Path) -> Path:
    """The example spec, shrunk to keep the job short; storage lands in ``dest``."""
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["storage"] = "./.raypipe"  # relative: resolved against dest
    spec["data"]["source"]["rows"] = 5000
    # Few rows and epochs: small batches still give the MLP enough optimizer steps
    # to clear the example's gate (roc_auc >= 0.75; about 0.88 in a simulation).
    spec["train"].update(epochs=2, batch_size=128, lr=0.005, distributed="always")  # DDP across the two nodes
    spec["deploy"]["enabled"] = False
    path = dest / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A 2-node cluster (head + worker, token auth on, dashboard on 127.0.0.1) shared by this module's tests."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    if not RAY.exists():
        pytest.skip(f"no `ray` executable next to {PYTHON}")
    token = secrets.token_hex(32)
    env = cluster_env(token)
    # The nodes only: a node given SIGTERM at the end drains for at most 5 s (Ray's default, 30 s, is what the head
    # waited every time here); the clients' environment (Cluster.env) stays as is.
    node_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
    # A short temp dir: Ray's unix sockets live under it (path limit ~107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="rp-cluster-", dir="/tmp"))
    gcs_port, dash_port, client_port, *node_ports = free_ports(3 + 12)
    head_log, worker_log = tmp_path / "ray-head.log", tmp_path / "ray-worker.log"
    head = worker = None
    passed = False
    t_start = time.monotonic()
    try:
        with open(head_log, "w") as log:
            head = subprocess.Popen(
                [str(RAY), "start", "--head", "--block", f"--port={gcs_port}",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                 f"--ray-client-server-port={client_port}", "--num-cpus=2",
                 "--object-store-memory=500000000", f"--temp-dir={temp_dir}",
                 "--disable-usage-stats", *node_ports_args(node_ports[:6])],
                env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
            )
        procs = {"head": (head, head_log)}
        address_file = temp_dir / "ray_current_cluster"
        wait_for("the head node's address file", address_file.exists, 120, procs)
        # Ray replaces a loopback node IP by the routable one: the GCS listens there
        # (with token auth); only the dashboard stays on 127.0.0.1.
        gcs_address = wait_for("the GCS address", lambda: address_file.read_text().strip(), 30, procs)

        with open(worker_log, "w") as log:
            worker = subprocess.Popen(
                [str(RAY), "start", "--block", f"--address={gcs_address}", "--num-cpus=2",
                 "--object-store-memory=500000000", f"--temp-dir={temp_dir}",
                 "--disable-usage-stats", *node_ports_args(node_ports[6:])],
                env=node_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
            )
        procs["worker"] = (worker, worker_log)
        wait_for("2 alive nodes", lambda: alive_nodes(gcs_address, env) >= 2, 180, procs, every=3.0)

        # Token auth is really on: the dashboard refuses a request without a token,
        # and the Jobs client is refused with a wrong one.
        with pytest.raises(urllib.error.HTTPError) as refused_http:
            urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/api/jobs/", timeout=30)
        assert refused_http.value.code in (401, 403)
        wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32), "HOME": str(tmp_path)}
        refused = subprocess.run([str(RAY), "job", "list", "--address", f"http://127.0.0.1:{dash_port}"],
                                 check=False, env=wrong, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0, refused.stdout + refused.stderr
        assert "token" in (refused.stdout + refused.stderr).lower(), refused.stdout + refused.stderr
        print(f"\ncluster of 2 nodes up (GCS {gcs_address}, token auth on) after {time.monotonic() - t_start:.1f}s")

        yield Cluster(f"http://127.0.0.1:{dash_port}", env, tmp_path)
        passed = True
    finally:
        t_stop = time.monotonic()
        stop_nodes(worker, head)  # SIGTERM both at once, then wait for each
        leftovers = kill_leftovers(temp_dir)
        print(f"\ncluster stopped in {time.monotonic() - t_stop:.1f}s")
        if leftovers:
            print("Ray processes of this cluster outlived `ray start`; killed:\n" + "\n".join(leftovers))
        if passed:
            assert not leftovers, leftovers
            shutil.rmtree(temp_dir, ignore_errors=True)
        else:
            print(f"\nRay logs kept in {temp_dir}/session_latest/logs; `ray start` output in {tmp_path}")


def test_example_pipeline_as_ray_job_on_two_node_cluster(cluster: Cluster, tmp_path: Path) -> None:
    spec_path = _example_for_test(tmp_path)
    storage = tmp_path / ".raypipe"
    t0 = time.monotonic()
    job = subprocess.run(
        [str(RAY), "job", "submit", "--address", cluster.dashboard, "--",
         PYTHON, "-m", "raypipe", "run", str(spec_path), "--address", "auto", "--no-serve", "--json"],
        check=False, env=cluster.env, capture_output=True, text=True, timeout=420, cwd=tmp_path,
    )
    output = job.stdout + job.stderr
    print(f"\nray job submit: exit {job.returncode} after {time.monotonic() - t0:.1f}s")
    assert job.returncode == 0, output[-6000:]
    assert "succeeded" in output, output[-6000:]

    summaries = []
    for line in job.stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and '"run_id"' in line:
            summaries.append(json.loads(line))
    assert summaries, f"no JSON summary in the job output:\n{output[-6000:]}"
    summary = summaries[-1]
    assert summary["status"] == "ok", summary
    assert isinstance(summary["version"], int) and summary["version"] >= 1, summary
    assert summary["alias"] == "champion", summary
    assert all(s["status"] == "ran" for s in summary["stages"].values()), summary["stages"]
    assert summary["metrics"]["roc_auc"] >= 0.75, summary["metrics"]

    # The job wrote to this test's storage folder: a registered champion.
    import raypipe

    registry = raypipe.Registry(str(storage), "fraud-detection")
    assert registry.versions() == [summary["version"]]
    assert registry.alias("champion") == summary["version"]
    assert registry.info(summary["version"])["status"] != "rejected"

    # The manifest of that run, and Ray Train's evidence of 2 DDP workers.
    manifest = json.loads((storage / "runs" / summary["run_id"] / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert manifest["spec"]["train"]["workers"] == 2
    train = next(s for s in manifest["stages"] if s["name"] == "train")
    assert train["status"] == "ran"
    report = json.loads((storage / "stages" / "train" / train["fingerprint"][:20] / "train_report.json").read_text())
    workers = report["ddp"]["workers"]
    assert len(workers) == 2, report["ddp"]
    assert report["ddp"]["world_size"] == 2
    assert len({w["pid"] for w in workers}) == 2, workers
    assert len({w["digest"] for w in workers}) == 1, workers  # DDP kept the replicas equal


def _raypipe_submit(cluster: Cluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "raypipe", "submit", *args, "--address", cluster.dashboard, "--json"],
                          check=False, env=cluster.env, capture_output=True, text=True, timeout=timeout,
                          cwd=cluster.tmp)


def test_raypipe_submit_runs_stages_as_jobs_with_their_exit_codes(cluster: Cluster, tmp_path: Path) -> None:
    """`raypipe submit` through the Jobs API (token auth on): one stage at a time, the job's output streamed
    back, and the run's own exit codes (2: an earlier stage missing, 4: the gate) as the command's."""
    from tests.conftest import small_spec

    storage = tmp_path / "store"
    spec = small_spec(storage, name="t-submit", rows=1500)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))

    missing = _raypipe_submit(cluster, str(path), "--only", "train")
    assert missing.returncode == 2, missing.stderr[-4000:]
    assert "--only train needs the 'ingest' stage complete" in missing.stderr  # the job's output, streamed

    first = _raypipe_submit(cluster, str(path), "--until", "features")
    assert first.returncode == 0, first.stderr[-4000:]
    job = json.loads(first.stdout.strip().splitlines()[-1])
    assert job["status"] == "SUCCEEDED" and job["submission_id"].startswith("raypipe-t-submit-until-features-")
    assert {k: v["status"] for k, v in job["summary"]["stages"].items()} == \
        {"ingest": "ran", "validate": "ran", "features": "ran"}

    train = _raypipe_submit(cluster, str(path), "--only", "train")
    assert train.returncode == 0, train.stderr[-4000:]
    stages = json.loads(train.stdout.strip().splitlines()[-1])["summary"]["stages"]
    assert {k: v["status"] for k, v in stages.items()} == \
        {"ingest": "cached", "validate": "cached", "features": "cached", "train": "ran"}
    assert (storage / "stages" / "train").is_dir()  # the job wrote to the shared storage, by its absolute path

    spec["evaluate"] = {"gate": {"min": {"roc_auc": 0.9999}}}
    path.write_text(yaml.safe_dump(spec))
    gate = _raypipe_submit(cluster, str(path))
    assert gate.returncode == 4, gate.stderr[-4000:]
    gated = json.loads(gate.stdout.strip().splitlines()[-1])
    assert gated["status"] == "FAILED" and "evaluation gate not passed" in gate.stderr
    from raypipe.registry import Registry

    assert Registry(str(storage), "t-submit").info(1)["status"] == "rejected"


@pytest.mark.airflow
def test_airflow_dag_in_ray_job_mode_runs_each_stage_as_a_job(cluster: Cluster, airflow_home, tmp_path: Path) -> None:
    """The exported DAG with `--mode ray-job`: a real Airflow runs each stage as `raypipe submit --only STAGE`, a
    Ray job on the two-node cluster (the Ray token comes from the worker's environment, never the DAG file)."""
    import shlex

    from raypipe.export.airflow import export_airflow
    from raypipe.registry import Registry
    from raypipe.runner import STAGE_NAMES
    from tests.conftest import small_spec
    from tests.export.test_airflow import _dag_test

    storage = tmp_path / "store"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(small_spec(storage, name="t-airflow-jobs", rows=1500)))
    env = {**airflow_home, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"]}
    env.pop("RAY_ADDRESS", None)
    command = f"env PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(PYTHON)} -m raypipe"
    out = export_airflow(path, Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / "t_airflow_jobs.py", mode="ray-job",
                         address=cluster.dashboard, raypipe=command, schedule=None)
    assert cluster.env["RAY_AUTH_TOKEN"] not in Path(out.path).read_text()
    states, stages, seconds = _dag_test(env, out.dag_id, storage)
    assert states == {stage: "success" for stage in STAGE_NAMES}
    assert stages == {stage: "ran" for stage in STAGE_NAMES}
    assert Registry(str(storage), "t-airflow-jobs").versions() == [1]
    print(f"airflow dags test, a Ray job per stage: {seconds:.0f} s")
