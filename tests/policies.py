"""Registered policies without training: an RLlib module built untrained from its algorithm's default spec,
saved as raypipe saves a trained one (:mod:`raypipe.model.policy`), registered and made champion.

For tests of what is done with a policy version (export, batch inference, loading), not of learning.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from raypipe.envs.make import bounded
from raypipe.model.policy import algorithm, default_module_spec, policy_meta, save_policy
from raypipe.registry import Registry
from raypipe.store import Store


def untrained_module(algo: str, env: gym.Env, hidden: list[int] | None = None, seed: int = 0) -> tuple[Any, bool]:
    """The module a learner would build for ``env`` (one-hot states for a Discrete observation space, [-1, 1]
    for a bounded Box, as training sees them), and whether observations are rescaled."""
    obs_space = env.observation_space
    rescale = algo not in ("BC", "MARWIL") and bounded(obs_space)
    if isinstance(obs_space, gym.spaces.Discrete):
        obs_space = gym.spaces.Box(0.0, 1.0, (int(obs_space.n),), np.float32)
    elif rescale:
        obs_space = gym.spaces.Box(-1.0, 1.0, obs_space.shape, np.float32)
    spec = default_module_spec(algo)
    spec.observation_space, spec.action_space = obs_space, env.action_space
    spec.model_config = {**algorithm(algo)[1].model_config, "fcnet_hiddens": hidden or [32]}
    torch.manual_seed(seed)
    return spec.build(), rescale


def register_untrained(storage: Path, name: str, env_id: str, algo: str = "PPO", alias: str = "champion",
                       seed: int = 0) -> dict[str, Any]:
    """A ready version of pipeline ``name`` holding an untrained ``algo`` policy for ``env_id``, under ``alias``;
    returns the spec (as a dict) that names it."""
    env = gym.make(env_id)
    module, rescale = untrained_module(algo, env, seed=seed)
    tmp = Store(str(storage / "_policies" / name))
    save_policy(tmp, policy_meta(algo, module, env.observation_space, env.action_space, normalize_actions=True,
                                 clip_actions=False, rescale_observations=rescale), module)
    files = {f"model/{f}": tmp.read_bytes(f) for f in tmp.walk_files()}
    files.update({"metrics.json": json.dumps({"metrics": {}}).encode(), "lineage.json": b"{}"})
    reg = Registry(str(storage), name)
    version = reg.register(files, status="ready", meta={"task": "reinforcement", "kind": f"rllib:{algo}"})
    reg.set_alias(alias, version, reason="test")
    return {"name": name, "storage": str(storage), "data": {"task": "reinforcement", "env": {"id": env_id}},
            "model": {"kind": f"rllib:{algo}"}, "train": {"iterations": 1}, "deploy": {"enabled": False}}
