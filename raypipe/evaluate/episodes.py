"""Seeded evaluation episodes: the policy, the baselines and the champion on the same seeds.

Episode ``i`` of every policy starts from ``reset(seed=evaluate.seed + i)``, so their returns are
paired: a difference is the policies', not the starting states'. The policy acts through
:class:`raypipe.model.policy.Policy`, the object the endpoint serves, deterministically.
Baselines: the uniformly random policy (the trivial baseline: its action space seeded per
episode), and the environment's own ``baseline_policy(obs)`` where it has one (e.g. the
maintenance environment's threshold rule).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from raypipe.envs.play import play


def env_baseline(env_doc: dict[str, Any]) -> tuple[str, Callable[[Any], Any]] | None:
    """The environment's own baseline policy (``baseline_policy`` on the unwrapped env) and its name."""
    from raypipe.envs.make import make_env

    env = make_env(env_doc)
    rule = getattr(env.unwrapped, "baseline_policy", None)
    if rule is None:
        env.close()
        return None
    return str(getattr(env.unwrapped, "baseline_name", "baseline")), rule


def summary(played: dict[str, list[float]]) -> dict[str, float]:
    """The task's metrics over the episodes (``raypipe.tasks.RL_METRICS``)."""
    r, n = np.asarray(played["returns"], dtype=float), np.asarray(played["lengths"], dtype=float)
    return {"episode_return_mean": float(r.mean()), "episode_return_median": float(np.median(r)),
            "episode_return_min": float(r.min()), "episode_return_max": float(r.max()),
            "episode_return_std": float(r.std()), "episode_len_mean": float(n.mean()), "episodes": int(len(r))}


def evaluate_all(env_doc: dict[str, Any], policy_uri: str, champion_uri: str | None,
                 seeds: list[int]) -> dict[str, dict[str, Any]]:
    """The Ray task's body: every player's episodes (policy, random, the env's baseline, the champion)."""
    import torch

    from raypipe.model.policy import load_policy
    from raypipe.store import Store

    torch.set_num_threads(1)
    out: dict[str, dict[str, Any]] = {"policy": play(env_doc, load_policy(Store(policy_uri)), seeds),
                                      "random": play(env_doc, None, seeds)}
    rule = env_baseline(env_doc)
    if rule is not None:
        out["baseline"] = {**play(env_doc, rule[1], seeds), "name": rule[0]}
    if champion_uri is not None:
        out["champion"] = play(env_doc, load_policy(Store(champion_uri)), seeds)
    return out
