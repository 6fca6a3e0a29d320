"""Seeded episodes of a policy in an environment: the evaluate stage's (:mod:`raypipe.evaluate.episodes`), and
the train stage's check that a greedy policy holds ``train.stop_return`` before it stops early
(:mod:`raypipe.train.rl`)."""
from __future__ import annotations

from typing import Any, Callable


def play(env_doc: dict[str, Any], act: Callable[[Any], Any] | None, seeds: list[int]) -> dict[str, list[float]]:
    """Returns and lengths of one episode per seed; ``act`` None plays uniformly random actions."""
    from raypipe.envs.make import make_env

    env = make_env(env_doc)
    returns, lengths = [], []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            env.action_space.seed(seed)
            total, steps, done = 0.0, 0, False
            while not done:
                action = env.action_space.sample() if act is None else act(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(steps)
    finally:
        env.close()
    return {"returns": returns, "lengths": lengths}
