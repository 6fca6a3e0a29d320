"""Offline logging: roll a policy out over seeded episodes into a flat table of transitions.

One row per transition, flat numeric columns (no list columns), so the table is what a CSV
or Parquet export holds and what offline RL reads back: ``eps_id``, ``t``, ``obs_0 ..``,
``action`` (``action_0 ..`` for a ``Box`` action space), ``reward``, ``new_obs_0 ..``,
``terminated``, ``truncated``.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import gymnasium
import numpy as np
import pandas as pd
from gymnasium import spaces

EnvSource = Union[str, Callable[[dict], gymnasium.Env]]
"""A gymnasium id, or a factory called with the env config (as RLlib calls env creators)."""


def _open(env: EnvSource, env_config: dict | None = None) -> gymnasium.Env:
    """An id through :func:`raypipe.envs.make.make_env` (as a spec's ``data.env`` is built), ``env(env_config)``
    for a factory."""
    if isinstance(env, str):
        from raypipe.envs.make import make_env

        return make_env({"id": env, "config": env_config or {}})
    return env(dict(env_config or {}))


def _action_columns(space: gymnasium.Space) -> list[str]:
    """``["action"]`` for a ``Discrete`` space, ``action_0 ..`` for a ``Box``."""
    if isinstance(space, spaces.Discrete):
        return ["action"]
    if isinstance(space, spaces.Box):
        return [f"action_{i}" for i in range(int(np.prod(space.shape)))]
    raise ValueError(f"only Discrete and Box action spaces can be logged, got {space}")


def _episodes(env: gymnasium.Env, policy: Callable[[np.ndarray], Any], episodes: int, seed: int):
    """Yields ``(episode seed, t, obs, action, reward, new_obs, terminated, truncated)`` per step."""
    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        t, done = 0, False
        while not done:
            action = policy(obs)
            new_obs, reward, terminated, truncated, _ = env.step(action)
            yield seed + i, t, obs, action, float(reward), new_obs, bool(terminated), bool(truncated)
            obs, t, done = new_obs, t + 1, terminated or truncated


def log_transitions(
    env_id_or_factory: EnvSource,
    policy: Callable[[np.ndarray], Any],
    episodes: int,
    seed: int,
    env_config: dict | None = None,
) -> pd.DataFrame:
    """Rolls ``policy`` out for ``episodes`` episodes, reset with seeds ``seed``, ``seed + 1``, ...

    Args:
        env_id_or_factory: A gymnasium id or a factory ``f(env_config) -> env``.
        policy: Maps an observation to an action (wrap it in
            :func:`raypipe.envs.policies.noisy` for exploration).
        episodes: Number of episodes.
        seed: Reset seed of the first episode.
        env_config: Environment options.

    Returns:
        One row per transition, in episode then step order: ``eps_id`` (int64, the episode's
        reset seed), ``t`` (int64), ``obs_<i>`` (float64), ``action`` (int64) or ``action_<i>``
        (float64), ``reward`` (float64), ``new_obs_<i>`` (float64), ``terminated`` and
        ``truncated`` (bool).
    """
    env = _open(env_id_or_factory, env_config)
    try:
        act_cols = _action_columns(env.action_space)
        n_obs = int(np.prod(env.observation_space.shape))
        rows = list(_episodes(env, policy, episodes, seed))
    finally:
        env.close()
    obs_cols = [f"obs_{i}" for i in range(n_obs)]
    new_cols = [f"new_obs_{i}" for i in range(n_obs)]
    obs = np.array([np.asarray(r[2], dtype=np.float64).ravel() for r in rows]).reshape(len(rows), n_obs)
    new = np.array([np.asarray(r[5], dtype=np.float64).ravel() for r in rows]).reshape(len(rows), n_obs)
    if act_cols == ["action"]:
        act = np.array([int(r[3]) for r in rows], dtype=np.int64).reshape(len(rows), 1)
    else:
        act = np.array([np.asarray(r[3], dtype=np.float64).ravel() for r in rows]).reshape(len(rows), len(act_cols))
    frame = {
        "eps_id": np.array([r[0] for r in rows], dtype=np.int64),
        "t": np.array([r[1] for r in rows], dtype=np.int64),
        **{c: obs[:, i] for i, c in enumerate(obs_cols)},
        **{c: act[:, i] for i, c in enumerate(act_cols)},
        "reward": np.array([r[4] for r in rows], dtype=np.float64),
        **{c: new[:, i] for i, c in enumerate(new_cols)},
        "terminated": np.array([r[6] for r in rows], dtype=bool),
        "truncated": np.array([r[7] for r in rows], dtype=bool),
    }
    return pd.DataFrame(frame)


def returns(df: pd.DataFrame) -> pd.Series:
    """Per-episode returns of a :func:`log_transitions` table, indexed by ``eps_id`` (ascending)."""
    return df.groupby("eps_id", sort=True)["reward"].sum()


def rollout_returns(
    env_id: EnvSource,
    policy: Callable[[np.ndarray], Any],
    episodes: int,
    seed: int,
    env_config: dict | None = None,
) -> np.ndarray:
    """Returns of ``policy`` over episodes reset with seeds ``seed + i``, without keeping transitions."""
    env = _open(env_id, env_config)
    out = np.zeros(episodes, dtype=np.float64)
    try:
        for eps_seed, _, _, _, reward, _, _, _ in _episodes(env, policy, episodes, seed):
            out[eps_seed - seed] += reward
    finally:
        env.close()
    return out
