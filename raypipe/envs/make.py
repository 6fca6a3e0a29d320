"""Build the environment a spec's ``data.env`` names: a gymnasium id or a ``module:function`` factory.

The train stage's env runners, the evaluate stage's episodes and the examples all build their
environments here, so they act in the same one. Ids in the ``raypipe/`` namespace are the
built-in environments (:mod:`raypipe.envs`), registered on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from raypipe.errors import SpecError


def make_env(env: dict[str, Any]) -> Any:
    """A ``gymnasium.Env`` from ``data.env`` as plain data (``id`` or ``factory``, ``config``,
    ``max_episode_steps``). Raises SpecError naming the field and the fix when it cannot be built."""
    import gymnasium as gym

    config = dict(env.get("config") or {})
    steps = env.get("max_episode_steps")
    if env.get("factory"):
        module, _, name = env["factory"].rpartition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise SpecError(f"data.env.factory: cannot import {env['factory']!r} ({exc}); check the module and "
                            "function name, and that the module is importable on every Ray node") from None
        made = factory(**config)
        if not isinstance(made, gym.Env):
            raise SpecError(f"data.env.factory {env['factory']!r} returned {type(made).__name__}, not a "
                            "gymnasium.Env")
        return gym.wrappers.TimeLimit(made, steps) if steps else made
    env_id = env["id"]
    if env_id.startswith("raypipe/"):
        import raypipe.envs  # noqa: F401  (registers the built-in environments)
    try:
        return gym.make(env_id, **({"max_episode_steps": steps} if steps else {}), **config)
    except gym.error.Error as exc:
        known = sorted(k for k in gym.registry if "/" not in k or k.startswith("raypipe/"))
        import difflib

        hint = difflib.get_close_matches(env_id, known, n=1)
        raise SpecError(f"data.env.id {env_id!r}: {exc}" + (f"; did you mean {hint[0]!r}?" if hint else "")) from None
    except TypeError as exc:
        raise SpecError(f"data.env.config {config!r} for {env_id!r}: {exc}") from None


def bounded(space: Any) -> bool:
    """A Box whose every component has finite bounds (low < high): it can be rescaled to [-1, 1]."""
    import gymnasium as gym
    import numpy as np

    return (isinstance(space, gym.spaces.Box) and bool(np.isfinite(space.low).all() and np.isfinite(space.high).all())
            and bool((space.high > space.low).all()))


def env_creator(env_config: dict[str, Any]) -> Any:
    """RLlib's env creator (``register_env``): the spec's env travels in ``env_config["raypipe_env"]``; with
    ``raypipe_rescale`` a bounded Box observation is rescaled to [-1, 1] (:func:`bounded`)."""
    import gymnasium as gym

    env = make_env(env_config["raypipe_env"])
    if env_config.get("raypipe_rescale") and bounded(env.observation_space):
        env = gym.wrappers.RescaleObservation(env, -1.0, 1.0)
    return env


def spaces(env: dict[str, Any]) -> tuple[Any, Any]:
    """The environment's observation and action spaces (one throwaway instance)."""
    made = make_env(env)
    try:
        return made.observation_space, made.action_space
    finally:
        made.close()


def env_version(env: dict[str, Any]) -> dict[str, Any]:
    """What lineage records about the environment: its id or factory, its registered spec's version and
    entry point, and gymnasium's version."""
    import gymnasium as gym

    out: dict[str, Any] = {"id": env.get("id"), "factory": env.get("factory"), "config": env.get("config") or {},
                           "gymnasium": gym.__version__}
    if env.get("id"):
        if env["id"].startswith("raypipe/"):
            import raypipe.envs  # noqa: F401
        try:
            registered = gym.spec(env["id"])
            out.update(version=registered.version, entry_point=str(registered.entry_point),
                       max_episode_steps=env.get("max_episode_steps") or registered.max_episode_steps)
        except gym.error.Error:
            pass
    return out
