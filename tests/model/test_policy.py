"""The registered policy: safetensors + JSON, rebuilt from the algorithm's own module spec, nothing unpickled.

The modules here are built untrained from RLlib's default module spec (no Ray, no training):
what is tested is the file format, the load-time checks and the answers, not learning.
"""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from raypipe.errors import ArtifactError
from raypipe.model.policy import (Policy, algorithm, default_module_spec, load_policy, policy_meta, save_policy, space_from_json,
                                  space_to_json)
from raypipe.model.predictor import Predictor
from raypipe.registry import Registry
from raypipe.store import Store

CANARY = Path("/tmp/raypipe-policy-canary")


def _module(algo: str, env_id: str, hidden: list[int] | None = None):
    env = gym.make(env_id)
    spec = default_module_spec(algo)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    # as a learner builds it: the algorithm's own model settings (DQN: dueling, double_q, atoms) and the network
    spec.model_config = {**algorithm(algo)[1].model_config, "fcnet_hiddens": hidden or [16]}
    torch.manual_seed(0)
    return spec.build(), env


def _saved(tmp_path: Path, algo: str = "PPO", env_id: str = "CartPole-v1") -> tuple[Store, object, gym.Env]:
    module, env = _module(algo, env_id)
    store = Store(str(tmp_path / "model"))
    save_policy(store, policy_meta(algo, module, env.observation_space, env.action_space, normalize_actions=True,
                                   clip_actions=False), module)
    return store, module, env


def _observations(env: gym.Env, n: int = 100) -> np.ndarray:
    env.observation_space.seed(0)
    obs = np.stack([env.observation_space.sample() for _ in range(n)]).astype(np.float64)
    return np.clip(obs, -3, 3)  # CartPole's velocities are unbounded: keep them in a sane range


@pytest.mark.parametrize("algo", ["PPO", "DQN"])
def test_a_saved_policy_acts_like_the_module_it_was_saved_from(tmp_path, algo):
    store, module, env = _saved(tmp_path, algo)
    policy = load_policy(store)
    obs = _observations(env)
    with torch.inference_mode():
        out = module.forward_inference({"obs": torch.tensor(obs, dtype=torch.float32)})
    expected = out["actions"] if "actions" in out else out["action_dist_inputs"].argmax(-1)
    answer = policy.act(obs)
    assert answer["actions"].tolist() == expected.tolist()
    assert len(set(answer["actions"].tolist())) == 2, "an untrained module still picks both actions somewhere"
    if algo == "PPO":  # a discrete policy's probabilities and its value head
        assert np.allclose(answer["probabilities"].sum(1), 1.0) and answer["values"].shape == (100,)
    # nothing but safetensors and JSON was written
    assert sorted(store.walk_files()) == ["model.json", "model.safetensors"]
    assert json.loads(store.read_bytes("model.json"))["format"] == "raypipe.policy/1"


def test_box_actions_are_unsquashed_into_the_action_space(tmp_path):
    store, _, env = _saved(tmp_path, "PPO", "Pendulum-v1")
    policy = load_policy(store)
    actions = policy.act(_observations(env, 200))["actions"]
    low, high = env.action_space.low, env.action_space.high
    assert actions.shape == (200, 1) and (actions >= low).all() and (actions <= high).all()
    assert actions.std() > 0


def test_spaces_round_trip_through_plain_json():
    box = gym.spaces.Box(low=np.array([-1.0, -np.inf], dtype=np.float32), high=np.array([2.0, np.inf], dtype=np.float32))
    for space in (box, gym.spaces.Discrete(5, start=2), gym.spaces.Box(0, 255, (2, 3), np.uint8)):
        doc = json.loads(json.dumps(space_to_json(space)))  # plain JSON: no base64 numpy, no pickle
        assert space_from_json(doc) == space
    with pytest.raises(ArtifactError, match="Box and Discrete"):
        space_to_json(gym.spaces.MultiBinary(3))


def test_a_stored_module_class_never_decides_what_is_imported(tmp_path):
    store, _, _ = _saved(tmp_path)
    meta = store.read_json("model.json")
    meta["module_class"] = "raypipe_evil_module_that_does_not_exist.Payload"
    store.write_json("model.json", meta)
    with pytest.raises(ArtifactError, match="never decides what code runs"):
        load_policy(store)
    assert "raypipe_evil_module_that_does_not_exist" not in sys.modules
    meta["algo"] = "os.system"
    store.write_json("model.json", meta)
    with pytest.raises(ArtifactError, match="names the algorithm"):
        load_policy(store)


def test_problems_name_the_place_the_value_and_the_bounds(tmp_path):
    store, _, _ = _saved(tmp_path)
    policy = load_policy(store)
    obs = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 1e6, 0.9, 0.0]])
    (p,) = policy.problems(obs)
    assert p["loc"] == ["observations", 1, 2] and "0.9" in p["msg"] and "0.418879" in p["msg"]
    with pytest.raises(ValueError, match="shape"):
        policy.check([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="NaN"):
        policy.check([[0.0, float("nan"), 0.0, 0.0]])


class _Evil:
    def __reduce__(self):
        return (CANARY.write_text, ("pwned",))


def _register(tmp_path: Path) -> tuple[Registry, int]:
    store, _, _ = _saved(tmp_path / "src")
    reg = Registry(str(tmp_path / "reg"), "rl")
    files = {f"model/{f}": store.read_bytes(f) for f in store.walk_files()}
    files.update({"metrics.json": b"{}", "lineage.json": b"{}"})
    return reg, reg.register(files, status="ready", meta={"task": "reinforcement"})


def test_a_registered_policy_loads_and_a_planted_pickle_is_refused_and_never_run(tmp_path):
    CANARY.unlink(missing_ok=True)
    reg, v = _register(tmp_path)
    assert isinstance(Predictor.from_version(reg.version_store(v), v), Policy)
    weights = tmp_path / "reg" / "registry" / "rl" / "versions" / f"{v:06d}" / "model" / "model.safetensors"
    weights.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ArtifactError, match="sha256"):  # the manifest no longer matches
        Predictor.from_version(reg.version_store(v), v)
    # Re-sealed by someone who can write storage: the bytes still go to safetensors only, which never unpickles.
    reg.version_store(v).complete_artifact("", reg.version_store(v).read_json("_COMPLETE.json").get("meta"))
    with pytest.raises(Exception):
        Predictor.from_version(reg.version_store(v), v)
    assert not CANARY.exists()
