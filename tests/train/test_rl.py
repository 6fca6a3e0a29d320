"""RLlib training in one Ray task: its checkpoints, a killed learner, a killed env runner, offline data layout.

Faults are triggered by what is on disk, not by sleeps: a watcher waits for the complete checkpoint of
an iteration in the stage's work folder, then SIGKILLs a process: the learner's (its pid is in the
checkpoint's ``history.json``), or the env runner's (an actor titled ``ray::SingleAgentEnvRunner``).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import raypipe
from raypipe.errors import SpecError
from raypipe.progress import Progress
from raypipe.store import MARKER
from raypipe.train.offline import to_rllib

ITERATIONS = 5


def _spec(storage: Path, name: str, **train) -> dict:
    return {"name": name, "storage": str(storage),
            "data": {"task": "reinforcement", "env": {"id": "CartPole-v1"}},
            "model": {"kind": "rllib:PPO", "params": {"train_batch_size_per_learner": 500, "minibatch_size": 128,
                                                      "num_epochs": 2, "model": {"fcnet_hiddens": [16]}}},
            "train": {"iterations": ITERATIONS, "env_runners": 1, "max_failures": 1, **train},
            "evaluate": {"episodes": 2}, "deploy": {"enabled": False}}


def _report(result) -> dict:
    return result.outputs["train"].store.read_json("train_report.json")


class KillAtIteration(threading.Thread):
    """Once the checkpoint of ``iteration`` is complete, SIGKILLs the learner task or an env runner."""

    def __init__(self, storage: Path, target: str, iteration: int = 2, timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self.storage, self.target, self.iteration, self.timeout = storage, target, iteration, timeout
        self.killed: dict | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            for ckpt in self.storage.glob(f"work/train/*/rl/iter_{self.iteration:06d}"):
                if (ckpt / MARKER).exists():
                    saved = json.loads((ckpt / "history.json").read_text())
                    pid = saved["pid"] if self.target == "learner" else _env_runner_pid(saved["pid"])
                    os.kill(pid, signal.SIGKILL)
                    self.killed = {"pid": pid, "iteration": saved["iteration"], "learner": saved["pid"]}
                    return
            time.sleep(0.02)


def _started(pid: int) -> int:
    """A process's start time in clock ticks since boot (/proc/<pid>/stat, field 22)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _env_runner_pid(learner: int) -> int:
    """An env runner of this run: an actor process titled ray::SingleAgentEnvRunner started after its learner."""
    born = _started(learner)
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0]
            if proc.name.isdigit() and title.startswith(b"ray::SingleAgentEnvRunner") and _started(int(proc.name)) >= born:
                return int(proc.name)
        except OSError:  # gone meanwhile
            continue
    raise AssertionError("no env runner process found")


def test_a_killed_learner_resumes_from_its_last_complete_checkpoint(ray_session, tmp_path):
    storage = tmp_path / "store"
    killer = KillAtIteration(storage, "learner")
    killer.start()
    try:
        result = raypipe.run(_spec(storage, "t-rl-learner"), until="train", progress=Progress(quiet=True))
    finally:
        killer.stop.set()
    assert killer.killed is not None, "the fault was never injected"
    report = _report(result)
    # At least the checkpoint the watcher saw; a later one only if the task wrote it before the signal landed.
    assert report["resumed_from"] >= killer.killed["iteration"]
    assert [h["iteration"] for h in report["history"]] == list(range(1, ITERATIONS + 1))
    assert report["process"]["pid"] != killer.killed["pid"]
    steps = [h["timesteps"] for h in report["history"]]
    assert steps == sorted(steps) and steps[-1] >= ITERATIONS * 500, "the resumed run kept counting, not restarting"
    kept = sorted(p.name for p in storage.glob("work/train/*/rl/iter_*"))
    assert kept == [f"iter_{ITERATIONS - 1:06d}", f"iter_{ITERATIONS:06d}"], "the newest two are kept"


def test_a_killed_env_runner_is_restarted_and_training_finishes(ray_session, tmp_path):
    storage = tmp_path / "store"
    killer = KillAtIteration(storage, "env_runner", iteration=1)
    killer.start()
    iterations = 8  # RLlib restarts a lost env runner asynchronously: the next iteration or two sample nothing
    try:
        result = raypipe.run(_spec(storage, "t-rl-runner", iterations=iterations), until="train",
                             progress=Progress(quiet=True))
    finally:
        killer.stop.set()
    assert killer.killed is not None and killer.killed["pid"] != killer.killed["learner"]
    report = _report(result)
    history = report["history"]
    assert [h["iteration"] for h in history] == list(range(1, iterations + 1))
    assert history[-1]["env_runner_restarts"] >= 1, "RLlib restarted the dead env runner"
    assert history[-1]["timesteps"] > history[-3]["timesteps"], "and the restarted one samples again"
    assert report["resumed_from"] is None, "the learner itself never stopped"
    assert report["process"]["pid"] == killer.killed["learner"]


def test_a_rerun_after_the_run_resumes_nothing_and_force_starts_again(ray_session, tmp_path):
    storage = tmp_path / "store"
    spec = _spec(storage, "t-rl-rerun", iterations=2)
    first = raypipe.run(spec, until="train", progress=Progress(quiet=True))
    again = raypipe.run(spec, until="train", progress=Progress(quiet=True))
    assert {s["name"]: s["status"] for s in again.stages}["train"] == "cached"
    forced = raypipe.run(spec, until="train", force="train", progress=Progress(quiet=True))
    assert _report(forced)["resumed_from"] is None and _report(first)["resumed_from"] is None


# --- offline data layout (no Ray) -------------------------------------------------------
def _log(n: int = 6) -> pa.Table:
    rng = np.random.default_rng(0)
    cols = {f"obs_{i}": rng.normal(size=n) for i in range(4)}
    cols.update({f"new_obs_{i}": rng.normal(size=n) for i in range(4)})
    cols.update(action=np.array([0, 1, 1, 0, 1, 0]), reward=np.ones(n), terminated=[False] * 5 + [True],
                truncated=[False] * n, eps_id=[7] * n)
    return pa.table(cols)


def test_flat_logged_columns_become_rllib_columns_and_incomplete_rows_are_counted():
    table = _log()
    reward = table.column("reward").to_numpy().copy()
    reward[2] = np.nan  # an empty cell
    table = table.set_column(table.column_names.index("reward"), "reward", pa.array(reward))
    out, counts = to_rllib(table, obs_dim=4, discrete_actions=True)
    assert counts == {"rows": 6, "kept": 5, "dropped_incomplete": 1}
    assert out.column_names == ["eps_id", "obs", "actions", "rewards", "new_obs", "terminateds", "truncateds"]
    assert out.column("obs").to_pylist()[0] == pytest.approx(
        [table.column(f"obs_{i}")[0].as_py() for i in range(4)], rel=1e-6)
    assert out.column("actions").to_pylist() == [0, 1, 0, 1, 0] and out.column("terminateds").to_pylist()[-1]


def test_a_log_missing_columns_names_them_and_the_layout():
    with pytest.raises(SpecError, match=r"\['reward'\].*obs_0..obs_N, action, reward"):
        to_rllib(_log().drop(["reward"]), obs_dim=4, discrete_actions=True)
    with pytest.raises(SpecError, match="3 obs_<i> columns, but the environment's observations have 4"):
        to_rllib(_log().drop(["obs_3"]), obs_dim=4, discrete_actions=True)


@pytest.mark.parametrize("kind, train, expected", [
    ("rllib:PPO", {}, 8),                               # on-policy: one batched forward pass for 8 copies
    ("rllib:DQN", {}, 1),                               # vectorising would change its updates per sampled step
    ("rllib:PPO", {"envs_per_env_runner": 3}, 3),
    ("rllib:DQN", {"envs_per_env_runner": 4}, 4),
])
def test_envs_per_env_runner_reaches_rllibs_config(tmp_path, kind, train, expected):
    from raypipe.train.rl import algo_config

    doc = _spec(tmp_path, "vec", **train)
    doc["model"] = {"kind": kind}
    config = algo_config(raypipe.load_spec(doc))
    assert config.num_envs_per_env_runner == expected and config.num_env_runners == 1


def test_an_offline_algorithm_samples_no_environment_copies(tmp_path):
    from raypipe.train.rl import algo_config

    doc = _spec(tmp_path, "bc", envs_per_env_runner=8)
    doc["model"] = {"kind": "rllib:BC"}
    doc["data"]["source"] = {"type": "csv", "path": str(tmp_path / "log.csv")}
    config = algo_config(raypipe.load_spec(doc), offline=str(tmp_path))
    assert config.num_envs_per_env_runner == 1 and config.num_env_runners == 0


def _stop_spec(tmp_path, **train):
    return raypipe.load_spec(_spec(tmp_path / "store", "t-rl-stop", stop_return=450, **train))


def test_stop_return_waits_for_the_greedy_policy_too(tmp_path):
    """The training return is the exploring policy's: training stops early only when the greedy policy (the
    one evaluated and served) reaches ``train.stop_return`` on the validation episodes as well."""
    from raypipe.train.rl import _stop, validation_seeds

    spec = _stop_spec(tmp_path)
    row = {"iteration": 3, "timesteps": 1500, "episode_return_mean": 460.0}
    asked = []
    assert _stop(spec, dict(row), greedy=lambda r: asked.append(r) or 352.0) is None  # goes on
    assert len(asked) == 1
    why = _stop(spec, dict(row), greedy=lambda r: 480.0)
    assert why is not None and "greedy policy too (480.0 over 10 validation episodes)" in why
    assert _stop(spec, {**row, "episode_return_mean": 300.0}, greedy=lambda r: asked.append(r) or 500.0) is None
    assert len(asked) == 1, "the greedy policy is played only once the training return is there"
    # A resumed run decides from what the checkpoint's history recorded.
    assert _stop(spec, {**row, "validation_return": 352.0}) is None
    assert _stop(spec, {**row, "validation_return": 455.0}) is not None
    # The validation episodes are not the test's: evaluate.seed onward, evaluate.episodes of them.
    test_seeds = set(range(spec.evaluate.seed, spec.evaluate.seed + spec.evaluate.episodes))
    assert len(validation_seeds(spec)) == 10 and not test_seeds & set(validation_seeds(spec))


def test_stop_episodes_zero_lets_the_training_return_decide(tmp_path):
    from raypipe.train.rl import _greedy_return, _stop

    spec = _stop_spec(tmp_path, stop_episodes=0)
    row = {"iteration": 3, "timesteps": 1500, "episode_return_mean": 460.0}
    assert _greedy_return(spec, None, row) is None  # nothing played: no algorithm needed
    assert _stop(spec, row, greedy=lambda r: _greedy_return(spec, None, r)) == "train.stop_return 450 reached"


def test_a_greedy_policy_below_stop_return_keeps_training(ray_session, tmp_path):
    """A real run whose every training return reaches stop_return (9: CartPole's worst is ~9): each iteration
    plays its greedy policy, and training stops at the first that reaches it too, or at the budget."""
    spec = _spec(tmp_path / "store", "t-rl-greedy", stop_return=9.0)
    spec["evaluate"]["gate"] = {"beat_trivial_baseline": False}  # a barely trained policy: not what is tested
    report = _report(raypipe.run(raypipe.load_spec(spec), progress=Progress(quiet=True)))
    history, stopped = report["history"], report["stopped"]
    assert all(r["episode_return_mean"] >= 9.0 and "validation_return" in r for r in history)
    assert all(r["validation_return"] < 9.0 for r in history[:-1]), "it stopped late"
    if "greedy policy too" in stopped:
        assert history[-1]["validation_return"] >= 9.0
    else:
        assert stopped == f"train.iterations {ITERATIONS} reached" and history[-1]["validation_return"] < 9.0
