"""ONNX export of a reinforcement-learning version: onnxruntime answers what ``Policy.act`` answers
(discrete and Box actions, PPO and DQN, a Discrete observation space one-hot encoded in the graph)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from raypipe.model.predictor import Predictor
from raypipe.registry import Registry

N = 300
CASES = {  # name: (env id, algorithm)
    "cartpole-ppo": ("CartPole-v1", "PPO"),
    "cartpole-dqn": ("CartPole-v1", "DQN"),
    "pendulum-ppo": ("Pendulum-v1", "PPO"),
    "frozenlake-ppo": ("FrozenLake-v1", "PPO"),
}


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """One registered version per case (an untrained module, saved and registered as a trained one is:
    parity does not depend on training), as ``{case: (spec, policy)}``."""
    from tests.policies import register_untrained

    out = {}
    storage = tmp_path_factory.mktemp("rl-export") / "store"
    for case, (env, algo) in CASES.items():
        spec = register_untrained(storage, case, env, algo)
        reg = Registry(str(storage), case)
        v = reg.alias("champion")
        out[case] = (spec, Predictor.from_version(reg.version_store(v), v))
    return out


def _observations(policy, n: int = N, seed: int = 0) -> np.ndarray:
    """``n`` observations of the space (unbounded / huge bounds clipped to +-3, CartPole's velocities)."""
    space, rng = policy.observation_space, np.random.default_rng(seed)
    if hasattr(space, "n"):
        return rng.integers(space.start, space.start + space.n, n).astype(np.float32)
    low, high = np.clip(space.low, -3, 3), np.clip(space.high, -3, 3)
    return rng.uniform(low, high, (n, *space.shape)).astype(np.float32)


def _run(path: str, obs: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"obs": obs})))


def _export(policy, tmp_path) -> str:
    from raypipe.export import export_onnx

    path = str(tmp_path / "policy.onnx")
    result = export_onnx(policy, path, pipeline="t")
    assert result.inputs[0]["name"] == "obs" and result.bytes > 0
    return path


@pytest.mark.parametrize("case", ["cartpole-ppo", "frozenlake-ppo"])
def test_discrete_actions_and_probabilities_match_the_policy(versions, case, tmp_path):
    _, policy = versions[case]
    obs = _observations(policy)
    got, want = _run(_export(policy, tmp_path), obs), policy.act(obs.astype(np.float64))
    assert got["action"].dtype == np.int64
    np.testing.assert_array_equal(got["action"], want["actions"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got["value"], want["values"], atol=1e-4)


def test_a_discrete_observation_is_one_hot_encoded_in_the_graph(versions, tmp_path):
    _, policy = versions["frozenlake-ppo"]
    assert policy.one_hot
    path = _export(policy, tmp_path)
    assert [d.dim_param or d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim] == ["N"]
    states = np.arange(policy.observation_space.n, dtype=np.float32)  # every state once
    got = _run(path, states)
    np.testing.assert_allclose(got["probabilities"], policy.act(states)["probabilities"], atol=1e-5)


def test_dqn_exports_the_greedy_action_over_its_q_values(versions, tmp_path):
    import torch

    _, policy = versions["cartpole-dqn"]
    obs = _observations(policy)
    got = _run(_export(policy, tmp_path), obs)
    assert "probabilities" not in got
    np.testing.assert_array_equal(got["action"], policy.act(obs)["actions"])
    with torch.inference_mode():
        q = policy.module.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"].numpy()
    np.testing.assert_allclose(got["q_values"], q, atol=1e-5)
    np.testing.assert_array_equal(got["action"], q.argmax(axis=1))


def test_box_actions_are_the_unsquashed_mean_within_bounds(versions, tmp_path):
    _, policy = versions["pendulum-ppo"]
    assert policy.meta["normalize_actions"]
    obs = _observations(policy)
    got, want = _run(_export(policy, tmp_path), obs), policy.act(obs)
    assert got["action"].shape == (N, *policy.action_space.shape) and got["action"].dtype == np.float32
    np.testing.assert_allclose(got["action"], want["actions"], atol=1e-5)
    assert (got["action"] >= policy.action_space.low).all() and (got["action"] <= policy.action_space.high).all()
    np.testing.assert_allclose(got["value"], want["values"], atol=1e-4)


def test_the_batch_axis_is_dynamic(versions, tmp_path):
    _, policy = versions["cartpole-ppo"]
    path = _export(policy, tmp_path)
    for n in (1, 7, 1000):
        obs = _observations(policy, n, seed=n)
        np.testing.assert_array_equal(_run(path, obs)["action"], policy.act(obs)["actions"])


def test_api_export_writes_the_version_with_its_spaces(versions, tmp_path):
    from raypipe.api import export

    spec, policy = versions["cartpole-ppo"]
    out = export(spec, output=str(tmp_path / "cp.onnx"))
    assert out["outputs"] == ["action", "probabilities", "value"] and out["version"] == policy.version
    props = {p.key: p.value for p in onnx.load(out["path"]).metadata_props}
    assert props["raypipe.task"] == "reinforcement" and props["raypipe.kind"] == "rllib:PPO"
    assert json.loads(props["raypipe.inputs"]) == [{"name": "obs", "kind": "observation", "dtype": "float32",
                                                    "shape": ["N", 4]}]
    assert json.loads(props["raypipe.action_space"]) == {"type": "discrete", "n": 2, "start": 0}
    assert json.loads(props["raypipe.observation_space"]) == policy.meta["observation_space"]
