"""Ray Tune over the train stage, end to end on the session's Ray.

- torch trials under ASHA, both as function trainables training in their own process and
  as Tune driver functions launching a 2-worker ``TorchTrainer``: the poor configuration is
  stopped after its first rung (and trained no further epoch), and the best trial's
  checkpoint becomes the registered model;
- scikit-learn trials with Optuna's search, interrupted by killing the driver process
  mid-search: the rerun continues with ``Tuner.restore`` and no finished trial runs again
  (counted by each trial's launch records).
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import raypipe
from raypipe.store import MARKER
from raypipe.progress import Progress
from raypipe.registry import Registry

quiet = Progress(quiet=True)
CANCER = {"source": {"type": "builtin", "name": "breast_cancer"}, "target": "target"}


def _checkpoints(work: Path, trial_id: str, distributed: str) -> int:
    """Complete checkpoints a trial wrote: one per epoch it trained."""
    if distributed == "always":  # the trial's Ray Train run, named by the trial id
        return len(glob.glob(str(work / "train" / trial_id / "*" / MARKER)))
    return len(glob.glob(str(work / "tune" / f"*{trial_id}*" / "checkpoint_*" / MARKER)))  # Tune's trial folder


@pytest.mark.parametrize("distributed", ["auto", "always"])
def test_torch_trials_under_asha(ray_session, tmp_path, distributed):
    """auto: each trial trains in its own process (a function trainable); always: a 2-worker TorchTrainer."""
    good, bad = 0.03, 1e-5
    result = raypipe.run({
        "name": "t-tune-torch", "storage": str(tmp_path / "store"), "data": CANCER,
        "model": {"kind": "torch.mlp", "params": {"hidden": [16]}},
        "train": {"workers": 2, "epochs": 3, "batch_size": 32, "lr": 0.001, "distributed": distributed},
        # Grid points run in an order shuffled by tune.seed; seed 0 starts the good rate first, so it sets the
        # first rung and the bad one falls below it.
        "tune": {"space": {"train.lr": {"grid": [good, bad]}}, "num_samples": 1, "scheduler": "asha",
                 "grace_period": 1, "reduction_factor": 2, "max_concurrent_trials": 1, "seed": 0},
        "evaluate": {"metrics": ["accuracy", "f1"], "gate": {"min": {"accuracy": 0.85}}},
    }, progress=quiet)
    assert result.status == "ok" and result.metrics["accuracy"] >= 0.85
    train = result.outputs["train"]
    table = train.store.read_json("tune_trials.json")
    epochs = {row["config"]["train.lr"]: row["epochs"] for row in table["trials"]}
    assert epochs == {good: 3, bad: 1}  # ASHA stopped the bad trial at its first rung
    assert table["trial_epochs"] == 4 and table["metric"] == "val_f1"
    # Lockstep: the workers waited for ASHA's decision after each report, so the stopped trial trained (and
    # checkpointed) exactly one epoch, not the epochs its workers could have run while the result travelled.
    work = next((tmp_path / "store" / "work" / "tune").iterdir())
    trained = {row["config"]["train.lr"]: _checkpoints(work, row["trial_id"], distributed) for row in table["trials"]}
    assert trained == {good: 3, bad: 1}
    tune = train.outputs.tune
    assert tune["best_config"] == {"train.lr": good} and tune["trials"] == 2
    best_row = next(r for r in table["trials"] if r["config"]["train.lr"] == good)
    assert tune["best_score"] == best_row["val_f1"] == max(r["val_f1"] for r in table["trials"])
    report = train.store.read_json("train_report.json")
    # The best trial's rate: the peak of the default schedule (a warm-up epoch at lr / 2, then the cosine decay).
    assert [h["epoch"] for h in report["history"]] == [0, 1, 2] and max(h["lr"] for h in report["history"]) == good
    if distributed == "always":
        assert report["path"] == "ray_train"
        assert report["ddp"]["world_size"] == 2 and len({w["digest"] for w in report["ddp"]["workers"]}) == 1
    else:
        assert report["path"] == "single_process" and report["ddp"] is None
    assert Registry(str(tmp_path / "store"), "t-tune-torch").alias("champion") == result.version


SKLEARN_SPEC = {
    "name": "t-tune-sk", "data": CANCER,
    "model": {"kind": "sklearn:sklearn.linear_model:LogisticRegression", "params": {"max_iter": 2000}},
    "tune": {"space": {"model.params.C": {"loguniform": [0.001, 10.0]}}, "num_samples": 6, "search": "optuna",
             "scheduler": "fifo", "max_concurrent_trials": 1, "seed": 3},
    "evaluate": {"metrics": ["accuracy", "f1"], "gate": {"min": {"accuracy": 0.8}}},
}


def _terminated(work: Path) -> set[str]:
    """Trials that Tune's saved experiment state records as finished."""
    states = sorted(glob.glob(str(work / "tune" / "experiment_state-*.json")))
    if not states:
        return set()
    try:
        data = json.loads(Path(states[-1]).read_text())
    except (OSError, ValueError):
        return set()  # being written
    trials = [json.loads(t[0]) for t in data["trial_data"]]
    return {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}


def test_interrupted_search_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    storage = tmp_path / "store"
    spec = {**SKLEARN_SPEC, "storage": str(storage)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    gcs = ray_session.get_runtime_context().gcs_address
    driver = textwrap.dedent(f"""
        import json, raypipe
        from raypipe.progress import Progress
        raypipe.run(json.load(open({str(tmp_path / 'spec.json')!r})), address={gcs!r}, progress=Progress(quiet=True))
    """)
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"}  # save the experiment state after every trial event
    err = open(tmp_path / "driver.err", "w")  # why a driver that ended early ended, for the message below
    proc = subprocess.Popen([sys.executable, "-c", driver], env=env, cwd=os.getcwd(),
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    finished: set[str] = set()
    began = time.monotonic()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            works = glob.glob(str(storage / "work" / "tune" / "*"))
            finished = _terminated(Path(works[0])) if works else set()
            if len(finished) >= 2:
                os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-search
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        err.close()
    assert 2 <= len(finished) < 6, (
        f"the search was not interrupted mid-way (finished: {finished}; the driver's exit code "
        f"{proc.returncode} after {time.monotonic() - began:.0f} s); its stderr ends:\n"
        + (tmp_path / "driver.err").read_text()[-3000:])
    assert proc.returncode == -signal.SIGKILL

    result = raypipe.run(spec, progress=quiet)  # the same spec again: the train stage resumes the search
    assert result.status == "ok"
    (work,) = glob.glob(str(storage / "work" / "tune" / "*"))
    launches: dict[str, int] = {}
    for f in os.listdir(Path(work) / "launches"):
        trial = json.loads((Path(work) / "launches" / f).read_text())["trial_id"]
        launches[trial] = launches.get(trial, 0) + 1
    assert all(launches[t] == 1 for t in finished)  # no finished trial ran again
    table = result.outputs["train"].store.read_json("tune_trials.json")
    assert len(table["trials"]) == 6 and all(r["status"] == "ok" for r in table["trials"])
    ids = {r["trial_id"] for r in table["trials"]}
    assert ids <= set(launches) and finished <= ids  # every reported trial ran here; the finished ones kept their ids
    # A trial launched just before the kill, before Tune's saved state listed it, is generated again under a new id
    # on resume (the killed one never finished); it must never be one the first driver saw finish.
    assert not (set(launches) - ids) & finished
    tune = result.outputs["train"].outputs.tune
    meta = result.outputs["train"].store.read_json("model", "model.json")
    assert meta["params"]["C"] == pytest.approx(tune["best_config"]["model.params.C"])
    assert tune["best_score"] == max(r["val_f1"] for r in table["trials"])


def test_an_rl_search_under_asha_stops_the_poor_trial_at_its_rung(ray_session, tmp_path):
    """Each trial is an RLlib PPO run in its own process; ASHA reads the training return per iteration."""
    good, bad = 0.005, 1e-7
    result = raypipe.run({
        "name": "t-tune-rl", "storage": str(tmp_path / "store"),
        "data": {"task": "reinforcement", "env": {"id": "CartPole-v1"}},
        "model": {"kind": "rllib:PPO", "params": {"train_batch_size_per_learner": 1000, "minibatch_size": 128,
                                                  "num_epochs": 10, "model": {"fcnet_hiddens": [32]}}},
        "train": {"iterations": 4, "env_runners": 0},
        # Seed 0 starts the good rate first (as above). Both trials share train.seed, so their first iteration
        # samples the same episodes; from the second on, only the good rate has learnt anything.
        "tune": {"space": {"model.params.lr": {"grid": [good, bad]}}, "num_samples": 1, "scheduler": "asha",
                 "grace_period": 2, "reduction_factor": 2, "max_concurrent_trials": 1, "seed": 0},
        "evaluate": {"episodes": 3},
        "deploy": {"enabled": False},
    }, progress=quiet)
    assert result.status == "ok", result.summary()
    train = result.outputs["train"]
    table = train.store.read_json("tune_trials.json")
    assert table["metric"] == "episode_return_mean"
    assert {row["config"]["model.params.lr"]: row["epochs"] for row in table["trials"]} == {good: 4, bad: 2}
    assert train.outputs.tune["best_config"] == {"model.params.lr": good}
    report = train.store.read_json("train_report.json")
    assert [h["iteration"] for h in report["history"]] == [1, 2, 3, 4]  # the best trial's own history
    assert result.metrics["episode_return_mean"] > result.baselines["trivial"]["metrics"]["episode_return_mean"]
