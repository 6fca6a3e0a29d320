"""Reinforcement learning: an RLlib algorithm (new API stack) trained in one Ray task, checkpointed, exported.

The spec maps onto RLlib's own config: ``model.kind: rllib:PPO`` picks ``PPOConfig``;
``data.env`` becomes ``.environment(...)`` (through :func:`raypipe.envs.make.env_creator`);
``train.env_runners`` and ``train.envs_per_env_runner``
``.env_runners(num_env_runners=..., num_envs_per_env_runner=...)``; ``model.params`` go to
``.training(...)`` under RLlib's names (``lr``, ``gamma``, ``entropy_coeff``,
``train_batch_size_per_learner``, ...), except ``model.params.model``, RLlib's
``model_config`` (``fcnet_hiddens``, ``fcnet_activation``, ...), which goes to ``.rl_module``.
Offline algorithms (BC, MARWIL) read the validated train split, converted once to RLlib's
column layout (:mod:`raypipe.train.offline`), through ``.offline_data(input_=[...])``.

The algorithm lives in one Ray task (its learner runs there; env runners are its actors, restarted by
RLlib when one dies). Every ``train.checkpoint_every`` iterations the task saves RLlib's checkpoint
into the stage's work folder (:func:`raypipe.train.checkpoint.work_folder`) and seals it with a marker
holding every file's sha256. RLlib's checkpoints are pickles: like Tune's state, they are resumed only
from a folder private to this user (:mod:`raypipe.train.tune.trust`), otherwise training starts again. A killed task is retried
by Ray up to ``train.max_failures`` times and a rerun after a crash starts the same way: from the
newest complete checkpoint, never from a half-written one. The result leaves the task as a policy
(:mod:`raypipe.model.policy`: safetensors + JSON); RLlib's checkpoints never become the artefact.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any

from raypipe.errors import SpecError, StageFailed

KEEP = 2  # complete checkpoints kept
ENV_NAME = "raypipe-env"


def check_installed(spec: Any) -> None:
    """Fail before the run when the spec trains a policy but RLlib (the ``rl`` extra) is missing."""
    import importlib.util

    # Ray's wheel always holds ray.rllib; what the extra adds are its dependencies
    if spec.model.is_rllib and any(importlib.util.find_spec(m) is None for m in ("gymnasium", "tree", "lz4")):
        raise SpecError(f"model.kind {spec.model.kind!r} needs RLlib, which is not installed; install it with: "
                        "pip install 'raypipe[rl]' (after the CPU build of torch, on machines without a GPU)")


def algo_config(spec: Any, offline: str | None = None) -> Any:
    """RLlib's AlgorithmConfig for the spec (``offline``: the folder of logged transitions in RLlib's layout)."""
    from ray.tune.registry import register_env

    from raypipe.envs.make import env_creator, spaces
    from raypipe.model.policy import algorithm

    register_env(ENV_NAME, env_creator)
    _, config = algorithm(spec.model.algo)
    params = dict(spec.model.params)
    model_config = params.pop("model", None)
    env = spec.data.env.model_dump()
    obs_space, act_space = spaces(env)
    config.environment(env=ENV_NAME, env_config={"raypipe_env": env, "raypipe_rescale": rescales(spec)})
    if offline:  # no env runner samples: RLlib takes the spaces from the spec's environment
        config.environment(observation_space=obs_space, action_space=act_space)
    config.env_runners(num_env_runners=0 if offline else spec.train.env_runners,
                       num_envs_per_env_runner=1 if offline else envs_per_env_runner(spec))
    if _one_hot(obs_space):
        if offline:
            raise SpecError("data.env: offline algorithms need a Box observation space; this environment's is "
                            f"{obs_space}")
        config.env_runners(env_to_module_connector=_flatten_connector)
    try:
        config.training(**params)
    except TypeError as exc:
        raise SpecError(f"model.params: {exc}; use the names of {spec.model.algo}Config.training() "
                        "(e.g. lr, gamma, train_batch_size_per_learner) and model.params.model for the network") from None
    if model_config:
        config.rl_module(model_config=model_config)
    config.learners(num_learners=0)
    config.debugging(seed=spec.train.seed)
    config.fault_tolerance(restart_failed_env_runners=True)
    if offline:
        config.offline_data(input_=[offline], dataset_num_iters_per_learner=1,
                            input_read_method_kwargs={"override_num_blocks": 2},
                            map_batches_kwargs={"concurrency": 1, "num_cpus": 1},
                            iter_batches_kwargs={"prefetch_batches": 1, "local_shuffle_buffer_size": None})
    return config


ON_POLICY = ("PPO",)  # each iteration samples a fixed batch, however many environments step together


def envs_per_env_runner(spec: Any) -> int:
    """``train.envs_per_env_runner``, auto resolved: 8 for on-policy algorithms (their per-step cost is mostly
    the module's forward pass, batched over the copies), 1 for DQN/SAC (vectorising changes their updates per
    sampled step)."""
    n = spec.train.envs_per_env_runner
    if n != "auto":
        return int(n)
    return 8 if spec.model.algo in ON_POLICY else 1


def rescales(spec: Any) -> bool:
    """Whether the network sees rescaled observations: ``train.rescale_observations: auto`` with an online
    algorithm (offline algorithms learn the log as it was written) on a bounded Box (:func:`envs.make.bounded`)."""
    from raypipe.envs.make import bounded, spaces
    from raypipe.spec import OFFLINE_ALGOS

    if spec.train.rescale_observations != "auto" or spec.model.algo in OFFLINE_ALGOS:
        return False
    return bounded(spaces(spec.data.env.model_dump())[0])


def _one_hot(space: Any) -> bool:
    import gymnasium as gym

    return isinstance(space, gym.spaces.Discrete)


def _flatten_connector(env: Any = None, spaces: Any = None, device: Any = None) -> Any:
    """Discrete observations become one-hot vectors (RLlib's FlattenObservations), as the policy serves them."""
    from ray.rllib.connectors.env_to_module import FlattenObservations

    return FlattenObservations()


def _seal(path: str, iteration: int) -> None:
    from raypipe.store import Store

    Store(path).complete_artifact("", {"iteration": iteration})


def _stop(spec: Any, row: dict[str, Any], greedy: Any = None) -> str | None:
    """Why training stops after this iteration (None: it goes on). ``greedy(row)``: the greedy policy's mean
    return over the validation episodes, asked only once the training return reaches ``train.stop_return``
    (None: not checked, ``train.stop_episodes: 0``)."""
    t = spec.train
    if t.stop_return is not None and row.get("episode_return_mean") is not None \
            and row["episode_return_mean"] >= t.stop_return:
        held = greedy(row) if greedy is not None else row.get("validation_return")
        if held is None:
            return f"train.stop_return {t.stop_return:g} reached"
        if held >= t.stop_return:
            return (f"train.stop_return {t.stop_return:g} reached, by the greedy policy too ({held:.1f} over "
                    f"{t.stop_episodes} validation episodes)")
    if t.timesteps is not None and row["timesteps"] >= t.timesteps:
        return f"train.timesteps {t.timesteps:,} reached"
    if t.iterations is not None and row["iteration"] >= t.iterations:
        return f"train.iterations {t.iterations} reached"
    return None


def validation_seeds(spec: Any) -> list[int]:
    """The seeds of ``train.stop_episodes``' validation episodes: after the evaluate stage's test seeds
    (``evaluate.seed`` onward), so the test episodes never decide when training stops."""
    first = spec.evaluate.seed + spec.evaluate.episodes
    return [first + i for i in range(spec.train.stop_episodes)]


def _greedy_return(spec: Any, algo: Any, row: dict[str, Any]) -> float | None:
    """The greedy policy's mean return over the validation episodes (recorded in ``row``), played through the
    :class:`raypipe.model.policy.Policy` that evaluate and the endpoint use; None when ``train.stop_episodes`` is 0.

    The training return is the exploring policy's, and the greedy one can be far below it: on CartPole, PPO
    stopped at a training return of 400 evaluated at 352 over the test episodes on one machine.
    """
    if not spec.train.stop_episodes:
        return None
    import numpy as np
    from safetensors.torch import load

    from raypipe.envs.play import play
    from raypipe.model.policy import Policy

    meta, weights = export(spec, algo)
    played = play(spec.data.env.model_dump(), Policy(meta, load(weights)), validation_seeds(spec))
    row["validation_return"] = float(np.mean(played["returns"]))
    return row["validation_return"]


def _row(result: dict[str, Any], offline: bool, t0: float) -> dict[str, Any]:
    runners = result.get("env_runners") or {}
    learners = (result.get("learners") or {}).get("default_policy") or {}
    steps = (learners.get("num_module_steps_trained_lifetime") or result.get("num_env_steps_trained_lifetime", 0)) \
        if offline else result.get("num_env_steps_sampled_lifetime", runners.get("num_env_steps_sampled_lifetime", 0))
    loss = learners.get("total_loss", learners.get("policy_loss"))
    return {"iteration": int(result["training_iteration"]), "timesteps": int(steps or 0),
            "episode_return_mean": _num(runners.get("episode_return_mean")),
            "episode_len_mean": _num(runners.get("episode_len_mean")),
            "episodes": int(runners.get("num_episodes_lifetime", 0) or 0),
            "loss": _num(loss), "seconds": round(time.perf_counter() - t0, 2),
            "env_runner_restarts": int((result.get("fault_tolerance") or {}).get("num_remote_worker_restarts") or 0)}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def learner_module(algo: Any) -> Any:
    """The learner's RLModule (full: with its value head), not an env runner's inference-only copy."""
    learner = getattr(algo.learner_group, "_learner", None)
    module = learner.module["default_policy"] if learner is not None else algo.get_module()
    return module.unwrapped() if hasattr(module, "unwrapped") else module


def export(spec: Any, algo: Any) -> tuple[dict[str, Any], bytes]:
    """The learner's module as a policy: ``model.json`` contents and the safetensors bytes."""
    from safetensors.torch import save

    from raypipe.envs.make import spaces
    from raypipe.model.policy import module_state, policy_meta

    module = learner_module(algo)
    obs_space, act_space = spaces(spec.data.env.model_dump())
    meta = policy_meta(spec.model.algo, module, obs_space, act_space,
                       normalize_actions=bool(algo.config.normalize_actions), clip_actions=bool(algo.config.clip_actions),
                       rescale_observations=rescales(spec))
    return meta, save({k: v.contiguous() for k, v in module_state(module).items()})


def train_policy(spec: Any, folder: str, offline: str | None = None, report: Any = None) -> dict[str, Any]:
    """The task's body: build, resume from the newest complete checkpoint, train until a stop, export.

    ``report``: called with each iteration's row and the algorithm (a Tune trial reports through it).
    Returns the policy's ``meta`` and ``weights`` (safetensors bytes), the ``history`` and how the run went.
    """
    import json

    import torch

    from raypipe.train.checkpoint import newest_in
    from raypipe.train.tune.trust import make_private, why_untrusted

    torch.set_num_threads(1)
    make_private(folder)
    config = algo_config(spec, offline)
    algo = config.build_algo()
    history: list[dict[str, Any]] = []
    resumed = None
    newest = newest_in(folder, "iter_")
    if newest is not None:
        untrusted = why_untrusted(folder)
        if untrusted:
            print(f"raypipe: not resuming from {newest}: {untrusted}; training from the start", flush=True)
        else:
            algo.restore_from_path(os.path.join(newest, "algo"))
            state = json.loads(open(os.path.join(newest, "history.json")).read())
            history, resumed = state["history"], state["iteration"]
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    why = _stop(spec, history[-1]) if history else None
    while why is None:
        row = _row(algo.train(), offline is not None, t0)
        history.append(row)
        why = _stop(spec, row, greedy=lambda r: _greedy_return(spec, algo, r))
        if row["iteration"] % spec.train.checkpoint_every == 0 or why is not None:
            _checkpoint(algo, folder, row["iteration"], history)
        if report is not None:
            report(row, algo)
    meta, weights = export(spec, algo)
    algo.stop()
    return {"meta": meta, "weights": weights, "history": history, "stopped": why, "resumed_from": resumed,
            "pid": os.getpid()}


def _checkpoint(algo: Any, folder: str, iteration: int, history: list[dict[str, Any]]) -> None:
    import json

    target = os.path.join(folder, f"iter_{iteration:06d}")
    shutil.rmtree(target, ignore_errors=True)  # an incomplete one left by a killed attempt
    algo.save_to_path(os.path.join(target, "algo"))
    with open(os.path.join(target, "history.json"), "w") as f:
        json.dump({"iteration": iteration, "history": history, "pid": os.getpid()}, f)
    _seal(target, iteration)
    for old in sorted(n for n in os.listdir(folder) if n.startswith("iter_"))[:-KEEP]:
        shutil.rmtree(os.path.join(folder, old), ignore_errors=True)


def train_rl(spec: Any, ctx: Any, offline: str | None) -> dict[str, Any]:
    """Run :func:`train_policy` as one Ray task (retried from the newest checkpoint up to
    ``train.max_failures`` times); the task's result."""
    import ray

    from raypipe.train.checkpoint import work_folder

    store = work_folder(ctx)
    if not store.is_local:
        raise StageFailed(f"train: RL checkpoints go to a local or shared filesystem; storage "
                          f"{ctx.root.full_uri('')!r} is remote")
    folder = store.path("rl")
    cpus = float(spec.train.resources.get("CPU", 1))
    task = ray.remote(train_policy).options(num_cpus=cpus, max_retries=spec.train.max_failures,
                                            retry_exceptions=False, name="raypipe-train-rl")
    try:
        out = ray.get(task.remote(spec, folder, offline))
    except ray.exceptions.WorkerCrashedError as exc:
        raise StageFailed(
            f"stage 'train' failed after train.max_failures={spec.train.max_failures} restart(s): {exc}\n"
            f"Every complete checkpoint is kept under {store.full_uri('rl')}; run again to resume from it, or "
            "raise train.max_failures.") from exc
    out["checkpoints"] = store.full_uri("rl")
    return out
