"""Scripted policies: a CartPole-v1 controller, and an epsilon-greedy wrapper for logged data."""
from __future__ import annotations

import copy
from typing import Any, Callable

import gymnasium
import numpy as np

Policy = Callable[[np.ndarray], Any]
"""A policy maps an observation to an action."""


def cartpole_policy(obs: np.ndarray) -> int:
    """A PD controller for ``CartPole-v1``: push towards where the pole is falling.

    Pushes right (1) when ``theta + 0.5 * theta_dot + 0.1 * x + 0.1 * x_dot > 0``, else left
    (0); the cart terms keep the cart from drifting off the track. Mean return 500 (the
    maximum) over episodes seeded 0 to 19.
    """
    x, x_dot, theta, theta_dot = (float(v) for v in obs[:4])
    return int(theta + 0.5 * theta_dot + 0.1 * x + 0.1 * x_dot > 0)


def noisy(policy: Policy, epsilon: float, rng: np.random.Generator, action_space: gymnasium.Space) -> Policy:
    """``policy`` with exploration: a uniformly random action with probability ``epsilon``.

    Args:
        policy: The policy followed otherwise.
        epsilon: Probability of a random action, in [0, 1].
        rng: Source of the coin flips and of the random actions (seed it for reproducible logs).
        action_space: The environment's action space; a copy of it, seeded from ``rng``, draws
            the random actions (the caller's space is left unseeded).
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    space = copy.deepcopy(action_space)
    space.seed(int(rng.integers(2**31)))

    def explore(obs: np.ndarray) -> Any:
        if rng.random() < epsilon:
            return space.sample()
        return policy(obs)
    return explore
