"""A worker node of a real two-node cluster lost during a Tune search: every trial resumes.

Two ``ray start --block`` processes on this host form the cluster, with token
authentication on (:mod:`tests.cluster_helpers`). The head has no logical CPU, as Ray
advises for a production head: the job's driver (and Tune's controller in it) runs
there, but every trial, its Ray Train controller and its workers, and every Ray Data
task must run on the worker node. The pipeline is a Ray job (``ray job submit``): a
FIFO search over 2 learning rates of a torch MLP, both trials at once, a checkpoint
every epoch, ``train.max_failures: 2``.

Deterministic trigger: a watcher waits until one trial's Ray Train run has
*registered* the checkpoint of epoch 1 (its ``checkpoint_manager_snapshot.json`` in
the search's working folder names it as the latest, and that folder is complete) and
until the pid that wrote it (in the checkpoint's ``meta.json``) is one of the worker
node's processes. Then it SIGKILLs the whole node at once: its ``ray start`` process
group (``ray start``, raylet, agents) and every descendant (the raylet gives each
worker a process group of its own). Once the node's processes are gone, it records
from the files on disk each trial's registered checkpoint and the checkpoint folders
that exist; no sleeps decide when the fault happens. Ray Train's report poll (2 s)
paces the epochs, so the watcher has time to act between two registrations. The head
cannot host a trial (no CPU), so a replacement worker node joins, as an autoscaler
would bring one: Tune relaunches the lost trials there, and each trial's Ray Train
run picks up its registered checkpoint.

Checked from disk: each trial ends with a complete checkpoint of its last epoch and
the history of every epoch; the checkpoint folders written after the kill start at
the epoch after the one registered at kill time and cover each later epoch once
(nothing redone, nothing skipped); the job succeeded and registered a version.

Other people may run Ray on this host: own temp dir and free ports, never
``ray stop``, and only the processes this test started are ended.
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from raypipe.store import MARKER
from raypipe.train.checkpoint import is_complete
from tests.cluster_helpers import (
    PYTHON,
    RAY,
    alive_nodes,
    cluster_env,
    free_ports,
    join_node,
    kill_leftovers,
    kill_node,
    node_ports_args,
    node_processes,
    start_node,
    stop_nodes,
    tail,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]  # 2.5-5 min on a shared 2-core host; 9 min under a load of 50

EPOCHS = 5
KILL_AT_EPOCH = 1
LRS = (0.003, 0.03)
NAME = "t-tune-node"


def _spec(storage: Path) -> dict:
    """A small FIFO search: 2 torch trials at once, one Train worker each, a checkpoint per epoch."""
    return {
        "name": NAME, "storage": str(storage),
        "data": {"source": {"type": "builtin", "name": "breast_cancer"}, "target": "target"},
        "model": {"kind": "torch.mlp", "params": {"hidden": [16]}},
        # always: each trial's TorchTrainer run (its driver, controller and worker on the lost node) is what this
        # test follows; a one-process trial is an ordinary Tune function trainable.
        "train": {"workers": 1, "epochs": EPOCHS, "batch_size": 32, "max_failures": 2, "distributed": "always"},
        "tune": {"space": {"train.lr": {"grid": list(LRS)}}, "num_samples": 1, "scheduler": "fifo",
                 "max_concurrent_trials": 2, "seed": 0},
        "evaluate": {"metrics": ["accuracy", "f1"], "gate": {"min": {"accuracy": 0.8}}},
        "deploy": {"enabled": False},
    }


def _trial_runs(storage: Path) -> list[Path]:
    """Each trial's Ray Train run folder in the search's working folder (named by the trial id)."""
    return sorted(p for p in storage.glob("work/tune/*/train/*") if p.is_dir())


def _registered(run: Path) -> Path | None:
    """The checkpoint folder that the run's snapshot registers as the latest, when it is complete."""
    try:
        latest = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError):
        return None  # none yet, or being written
    if not latest:
        return None
    ckpt = run / latest["checkpoint_dir_name"]
    return ckpt if is_complete(str(ckpt)) else None


def _meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())


def _checkpoint_dirs(run: Path) -> set[str]:
    return {p.name for p in run.glob("checkpoint_*") if p.is_dir()}


class KillNodeAtCheckpoint(threading.Thread):
    """SIGKILLs the worker node once a trial running there has registered the checkpoint of ``epoch``.

    (Or of a later epoch, should the watcher have been slow, but never of the last one: the
    trial must still have epochs to train.)

    After the kill (the node's processes are gone, so nothing writes to the trials'
    folders until a new node joins) it records, per trial run folder, the epoch of the
    registered complete checkpoint (None: training restarts at epoch 0) and the names
    of the checkpoint folders present.
    """

    def __init__(self, storage: Path, node: subprocess.Popen, epoch: int, timeout: float = 400) -> None:
        super().__init__(daemon=True)
        self.storage, self.node, self.epoch, self.timeout = storage, node, epoch, timeout
        self.killed_trial: str | None = None
        self.killed_pid: int | None = None
        self.victims: dict[int, str] = {}
        self.at_kill: dict[str, tuple[int | None, set[str]]] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while not self.stop.is_set() and time.monotonic() < deadline:
                for run in _trial_runs(self.storage):
                    ckpt = _registered(run)
                    if ckpt is None or not self.epoch <= _meta(ckpt)["epoch"] < EPOCHS - 1:
                        continue  # no checkpoint of that epoch yet, or already finished
                    pid = _meta(ckpt)["pid"]
                    if pid not in node_processes(self.node.pid):
                        continue  # written on another node: not this drill
                    self.victims = kill_node(self.node)
                    self.killed_trial, self.killed_pid = run.name, pid
                    for r in _trial_runs(self.storage):
                        registered = _registered(r)
                        self.at_kill[r.name] = (_meta(registered)["epoch"] if registered else None, _checkpoint_dirs(r))
                    return
                time.sleep(0.05)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()


def test_worker_node_lost_during_tune_search(tmp_path: Path) -> None:
    if not RAY.exists():
        pytest.skip(f"no `ray` executable next to {PYTHON}")
    # Ray Train's default report poll (2 s, not raypipe's 0.25 s for a local Ray) paces the epochs: the watcher
    # has ~2 s to act between two registrations even on a loaded host. At the end, a node given SIGTERM drains
    # for at most 5 s (not 30: the head never finished draining here).
    # The GCS marks the killed node dead after 3 failed health checks 1 s apart (Ray's defaults: 5, 3 s apart, so
    # ~15 s in which Tune cannot place the relaunched trials); each check still waits Ray's 10 s before it fails,
    # so a node that is merely slow on a loaded host is not declared dead.
    env = {**cluster_env(secrets.token_hex(32)), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5",
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    temp_dir = Path(tempfile.mkdtemp(prefix="rp-tunenode-", dir="/tmp"))  # short: Ray's unix sockets live under it
    gcs_port, dash_port, client_port = free_ports(3)
    storage = tmp_path / "store"
    logs = {name: tmp_path / f"ray-{name}.log" for name in ("head", "worker", "replacement")}
    head = worker = replacement = job = killer = None
    passed = False
    t_start = time.monotonic()
    node_args = ["--object-store-memory=400000000", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        head = start_node(["--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
                           f"--ray-client-server-port={client_port}", "--num-cpus=0", *node_args,
                           *node_ports_args(free_ports(6))], logs["head"], env, tmp_path)
        procs = {"head": (head, logs["head"])}
        address_file = temp_dir / "ray_current_cluster"
        wait_for("the head node's address file", address_file.exists, 120, procs)
        gcs_address = wait_for("the GCS address", lambda: address_file.read_text().strip(), 30, procs)
        worker_args = [f"--address={gcs_address}", "--num-cpus=4", *node_args]
        worker = join_node(worker_args, logs["worker"], env, tmp_path)
        procs["worker"] = (worker, logs["worker"])
        wait_for("2 alive nodes", lambda: alive_nodes(gcs_address, env) >= 2, 180, procs, every=2.0)
        print(f"\ncluster up after {time.monotonic() - t_start:.1f}s")

        spec_path = tmp_path / "pipeline.yaml"
        spec_path.write_text(yaml.safe_dump(_spec(storage), sort_keys=False))
        killer = KillNodeAtCheckpoint(storage, worker, KILL_AT_EPOCH)
        killer.start()
        t_job = time.monotonic()
        job_log = tmp_path / "job.log"
        with open(job_log, "w") as out:
            job = subprocess.Popen(
                [str(RAY), "job", "submit", "--address", f"http://127.0.0.1:{dash_port}", "--",
                 PYTHON, "-m", "raypipe", "run", str(spec_path), "--address", "auto", "--no-serve", "--json"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            )
        while not killer.done.wait(0.5):
            assert job.poll() is None, f"the job ended before the fault:\n{tail(job_log, 6000)}"
        assert killer.error is None, f"the watcher failed: {killer.error!r}"
        assert killer.killed_trial is not None, f"the fault was never injected:\n{tail(job_log, 6000)}"
        t_kill = time.monotonic()
        print(f"worker node killed {t_kill - t_job:.1f}s into the job: {len(killer.victims)} processes; "
              f"trial {killer.killed_trial} (rank 0 pid {killer.killed_pid}); registered epochs at the kill: "
              + ", ".join(f"{t}={e}" for t, (e, _) in sorted(killer.at_kill.items())))
        assert killer.killed_pid in killer.victims
        assert not node_processes(worker.pid), "processes of the killed node survived"

        # The head has no CPU for a trial: a replacement node joins, as an autoscaler would bring one.
        replacement = join_node(worker_args, logs["replacement"], env, tmp_path)
        procs = {"head": (head, logs["head"]), "replacement": (replacement, logs["replacement"])}
        wait_for("the job's end", lambda: job.poll() is not None, 420, procs)
        output = job_log.read_text(errors="replace")
        print(f"job: exit {job.returncode} {time.monotonic() - t_kill:.1f}s after the kill, "
              f"{time.monotonic() - t_job:.1f}s in all")
        assert job.returncode == 0, output[-6000:]
        summaries = [json.loads(line) for line in map(str.strip, output.splitlines())
                     if line.startswith("{") and '"run_id"' in line]
        assert summaries, f"no JSON summary in the job output:\n{output[-6000:]}"
        summary = summaries[-1]
        assert summary["status"] == "ok", summary
        assert isinstance(summary["version"], int) and summary["version"] >= 1, summary

        import raypipe

        assert raypipe.Registry(str(storage), NAME).versions() == [summary["version"]]

        runs = {run.name: run for run in _trial_runs(storage)}
        assert len(runs) == len(LRS) and set(killer.at_kill) <= set(runs), (runs, killer.at_kill)
        for trial, run in runs.items():
            # Each trial ended at its full epoch count: its last registered checkpoint, read from disk.
            final = _registered(run)
            assert final is not None, f"{trial}: no complete registered checkpoint"
            meta = _meta(final)
            assert meta["epoch"] == EPOCHS - 1, (trial, meta["epoch"])
            assert [h["epoch"] for h in meta["history"]] == list(range(EPOCHS)), (trial, meta["history"])
            # The folders written after the kill start right after the checkpoint registered at the kill.
            at_kill, before = killer.at_kill.get(trial, (None, set()))
            after = sorted(_meta(run / d)["epoch"] for d in _checkpoint_dirs(run) - before
                           if (run / d / MARKER).exists())
            first = 0 if at_kill is None else at_kill + 1
            print(f"trial {trial}: registered epoch at the kill {at_kill}, epochs checkpointed after it {after}")
            assert after == list(range(first, EPOCHS)), (trial, at_kill, after)
        # The trial table agrees: every trial ok, at its full epoch count.
        train = next(s for s in json.loads((storage / "runs" / summary["run_id"] / "manifest.json").read_text())["stages"]
                     if s["name"] == "train")
        table = json.loads((storage / "stages" / "train" / train["fingerprint"][:20] / "tune_trials.json").read_text())
        assert {r["trial_id"]: (r["status"], r["epochs"]) for r in table["trials"]} == \
            {t: ("ok", EPOCHS) for t in runs}, table
        killed_at = killer.at_kill[killer.killed_trial][0]
        assert killed_at is not None and KILL_AT_EPOCH <= killed_at < EPOCHS - 1, killed_at

        # Both trials started at once (2 slots), so both were running on the node. Tune launched each
        # again: the first launch's driver (its pid in raypipe's launch record) died with the node.
        work = next(storage.glob("work/tune/*"))
        records = sorted((json.loads(f.read_text()) for f in (work / "launches").iterdir()), key=lambda r: r["time"])
        launches: dict[str, list[int]] = {}
        for rec in records:
            launches.setdefault(rec["trial_id"], []).append(rec["pid"])
        print(f"launches per trial: { {t: len(p) for t, p in launches.items()} }")
        for trial in runs:
            if killer.at_kill.get(trial, (None,))[0] == EPOCHS - 1:
                continue  # finished before the kill (not expected with these sizes)
            assert len(launches[trial]) == 2, launches
            assert launches[trial][0] in killer.victims and launches[trial][1] not in killer.victims, launches
        assert alive_nodes(gcs_address, env) == 2  # the head and the replacement
        passed = True
    finally:
        if killer is not None:
            killer.stop.set()
        if job is not None and job.poll() is None:
            job.kill()  # the client only: the job itself ends with the cluster
            job.wait()
        t_stop = time.monotonic()
        stop_nodes(replacement, worker, head)
        leftovers = kill_leftovers(temp_dir)
        print(f"cluster stopped in {time.monotonic() - t_stop:.1f}s; test took {time.monotonic() - t_start:.1f}s")
        if leftovers:
            print("Ray processes of this cluster outlived `ray start`; killed:\n" + "\n".join(leftovers))
        if passed:
            assert not leftovers, leftovers
            shutil.rmtree(temp_dir, ignore_errors=True)
        else:
            print(f"\nRay logs kept in {temp_dir}/session_latest/logs; `ray start` and job output in {tmp_path}")
