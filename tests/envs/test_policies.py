"""Scripted policies: the CartPole controller and the epsilon-random wrapper."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from raypipe.envs.logged import rollout_returns
from raypipe.envs.policies import cartpole_policy, noisy


def test_cartpole_policy_balances():
    returns = rollout_returns("CartPole-v1", cartpole_policy, episodes=20, seed=0)
    assert returns.mean() >= 475, returns


def test_noisy_explores_at_epsilon_and_is_reproducible():
    space = gymnasium.spaces.Discrete(2)
    obs = np.zeros(4, dtype=np.float32)
    never = noisy(lambda o: 0, 0.0, np.random.default_rng(0), space)
    assert {never(obs) for _ in range(200)} == {0}
    half = noisy(lambda o: 0, 0.5, np.random.default_rng(1), space)
    ones = sum(int(half(obs)) for _ in range(2000))
    assert 400 < ones < 600  # a random action half the time, itself 1 half of those
    a = noisy(lambda o: 0, 0.3, np.random.default_rng(2), space)
    b = noisy(lambda o: 0, 0.3, np.random.default_rng(2), space)
    assert [int(a(obs)) for _ in range(100)] == [int(b(obs)) for _ in range(100)]
    with pytest.raises(ValueError, match="epsilon"):
        noisy(cartpole_policy, 1.5, np.random.default_rng(0), space)


def test_noisy_cartpole_is_worse_but_not_random():
    policy = noisy(cartpole_policy, 0.5, np.random.default_rng(0), gymnasium.spaces.Discrete(2))
    returns = rollout_returns("CartPole-v1", policy, episodes=5, seed=0)
    assert 50 < returns.mean() < 400, returns  # measured 160; random play gets about 22
