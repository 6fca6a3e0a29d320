"""Reinforcement learning: PPO on CartPole-v1 through raypipe vs. the plain RLlib script vs. stable-baselines3.

One training run per way, until the mean training return reaches 450 (``--stop-return``) or
``--timesteps`` env steps, with the same PPO hyperparameters (``PARAMS``: lr 3e-4, 6 epochs,
vf_loss_coeff 0.01, one hidden layer of 32 linear units shared by policy and value;
RLlib's other PPO defaults: 4000 steps per iteration, minibatches of 128, gamma 0.99, lambda
1.0, clip 0.3, KL loss):

  (a) raypipe: ``raypipe.run(spec)`` with ``data.task: reinforcement``, ``model.kind:
      rllib:PPO``, ``train.stop_return`` and ``train.timesteps``, ``deploy.enabled: false``:
      the whole pipeline (train in one Ray task with a checkpoint every iteration, the
      default ``train.checkpoint_every: 1``; evaluate: 20 seeded episodes plus the random
      and scripted baselines; register). Reports the train stage's seconds, env steps and
      iterations (the train stage's ``train_report.json``) and the evaluated mean return
      of the 20 episodes (the run's metrics) beside the last training return.
  (b) the plain RLlib script a user would write: ``ray.init``, ``PPOConfig()`` with the same
      ``.training(...)`` / ``.rl_module(model_config=...)`` / ``.env_runners(num_env_runners=1)``
      / ``.debugging(seed=...)``, ``build_algo()``, ``algo.train()`` until
      ``result["env_runners"]["episode_return_mean"] >= 450`` or the budget. No evaluation. RLlib's
      default of one environment per env runner, as the script is usually written.
  (b') the same script with ``num_envs_per_env_runner=8``, what raypipe's
      ``train.envs_per_env_runner: auto`` gives PPO: (a) and (b') sample alike.
  (c) stable-baselines3 PPO (``--sb3-params matched``, the default: one env, n_steps 4000,
      batch 128, 6 epochs, lr 3e-4, gamma 0.99, gae_lambda 1.0, clip 0.3, vf_coef 0.01,
      ent_coef 0, net_arch [32] with linear activation; SB3 cannot share the hidden layer
      between policy and value, so each has its own [32], and it has no KL loss but clips
      gradients at 0.5; or ``--sb3-params zoo``: rl-zoo3's tuned CartPole-v1 settings, 8
      envs, n_steps 32, batch 256, 20 epochs, lr and clip linearly decayed from 1e-3 and
      0.2, gamma 0.98, gae_lambda 0.8, SB3's default 64x64 tanh network), until a callback
      sees the mean return of the last 100 episodes >= 450 at the end of a rollout (RLlib's
      ``episode_return_mean`` is also over the last 100 episodes, checked after each
      iteration) or the budget. Runs with the interpreter given by ``--sb3-python``.

Timing: every way runs in a fresh Python process and its wall time is that whole command,
timed by this process: interpreter start, imports, Ray's start (a new local Ray for (a),
(b) and (b'): raypipe's own, without the dashboard, and the script's ``ray.init(address="local")``,
Ray's defaults otherwise, dashboard included) and shutdown. Each child also reports its time
from just before ``raypipe.run`` / ``ray.init`` / building the SB3 model to just after
training (plus, for (a), the rest of the pipeline), printed as ``in-process``. Repeats
(``--repeats N``: seeds 0..N-1, the ways one after the other per seed) are summarised
by their median. Target: raypipe's wall time <= 1.1x the plain RLlib script's. Prints a
table and, last, one JSON line. Not a test: timings depend on the machine, and RL's
steps-to-450 vary with the seed.

What each way counts: env steps are environment steps sampled (RLlib's
``num_env_steps_sampled_lifetime``, SB3's ``num_timesteps`` up to the end of the rollout that
reached the return), so (a), (b) and (b') count whole 4000-step iterations; "iterations" are
RLlib's ``training_iteration`` and SB3's rollouts (each followed by ``n_epochs`` passes of
minibatch updates; ``gradient_epochs`` in the JSON). (a) and (b') with the same seed follow
the same trajectory (same steps, same returns). Threads: raypipe's train task runs torch
with one thread (``torch.set_num_threads(1)``; Ray also sets ``OMP_NUM_THREADS=1`` in its
workers), while the script's learner (in the driver) and SB3 use torch's default, one
thread per core. On the 2-core machine under other load, one short check (``--sb3-params
zoo``, 3,072 steps) trained in 62.8 s with torch's default and 1.2 s with one thread, and
(b) was slower than (a); ``--torch-threads 1`` sets ``OMP_NUM_THREADS`` for every child to
see the difference.

    PYTHONPATH=. .venv/bin/python benchmarks/rl_bench.py [--repeats 1] [--timesteps 200000] \\
        [--sb3-python /tmp/sb3venv/bin/python] [--sb3-params matched|zoo]

stable-baselines3 is not a raypipe dependency and must not go into raypipe's venv (it may
move pinned versions). Put it in a venv of its own made from the same interpreter, with
the CPU torch wheel (check with ``--dry-run`` first that no CUDA wheels are pulled in):

    .venv/bin/python -m venv /tmp/sb3venv
    /tmp/sb3venv/bin/pip install --dry-run torch==2.13.0 stable-baselines3 gymnasium==1.2.2
    /tmp/sb3venv/bin/pip install torch==2.13.0 stable-baselines3 gymnasium==1.2.2

Without ``--sb3-python`` (or when that interpreter lacks stable_baselines3) (c) is skipped
with a note. This file imports only the standard library at the top so that the SB3
interpreter can run its child without raypipe or Ray.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENV_ID = "CartPole-v1"
PARAMS: dict[str, Any] = {"lr": 0.0003, "num_epochs": 6, "vf_loss_coeff": 0.01}
MODEL_CONFIG: dict[str, Any] = {"fcnet_hiddens": [32], "fcnet_activation": "linear", "vf_share_layers": True}
ENV_RUNNERS = 1
VEC_ENVS = 8  # what raypipe's train.envs_per_env_runner: auto gives PPO (raypipe.train.rl.envs_per_env_runner)
EVAL_EPISODES = 20


def raypipe_spec(storage: str, seed: int, stop_return: float, timesteps: int) -> dict[str, Any]:
    return {"name": "cartpole", "storage": storage,
            "data": {"task": "reinforcement", "env": {"id": ENV_ID}},
            "model": {"kind": "rllib:PPO", "params": {**PARAMS, "model": MODEL_CONFIG}},
            "train": {"timesteps": timesteps, "stop_return": stop_return, "env_runners": ENV_RUNNERS, "seed": seed},
            "evaluate": {"episodes": EVAL_EPISODES, "gate": {"min": {"episode_return_mean": stop_return}}},
            "deploy": {"enabled": False}}


def child_raypipe(seed: int, stop_return: float, timesteps: int, tmp: str) -> dict[str, Any]:
    """(a), inside its own process: one `raypipe.run` of the spec.

    Read back from the run's manifest (stage seconds, metrics) and the train stage's ``train_report.json``, so
    that a run whose policy misses the gate (``GateFailed``: registered as rejected) is reported too."""
    import raypipe
    from raypipe.errors import GateFailed
    from raypipe.progress import Progress
    from raypipe.stage import artifact_path

    storage = Path(tmp) / "store"
    spec = raypipe.load_spec(raypipe_spec(str(storage), seed, stop_return, timesteps))
    t0 = time.perf_counter()
    try:
        raypipe.run(spec, progress=Progress(quiet=True))
        gate = "passed"
    except GateFailed:
        gate = "not passed"
    s = time.perf_counter() - t0
    (manifest_path,) = storage.glob("runs/*/manifest.json")  # fresh storage: this run's only
    manifest = json.loads(manifest_path.read_text())
    stages = {st["name"]: round(st["seconds"], 2) for st in manifest["stages"]}
    train = next(st for st in manifest["stages"] if st["name"] == "train")
    report = json.loads((storage / artifact_path("train", train["fingerprint"]) / "train_report.json").read_text())
    last = report["history"][-1]
    return {"in_process_s": s, "train_s": stages.get("train"), "stages": stages, "steps": last["timesteps"],
            "iterations": last["iteration"], "train_return": last["episode_return_mean"],
            "eval_return": (manifest.get("metrics") or {}).get("episode_return_mean"), "stopped": report["stopped"],
            "gate": gate, "resumed_from": report.get("resumed_from"),
            # 4000 each unless an env runner was lost (RLlib restarts it; that iteration samples less)
            "steps_per_iteration": sorted({b["timesteps"] - a["timesteps"]
                                           for a, b in zip([{"timesteps": 0}] + report["history"], report["history"])})}


def child_rllib(seed: int, stop_return: float, timesteps: int, tmp: str, envs: int = 1) -> dict[str, Any]:
    """(b), inside its own process: the script a user would write (``envs``: num_envs_per_env_runner; RLlib's
    default is 1, (b') sets raypipe's 8)."""
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig

    t0 = time.perf_counter()
    # address="local": a new Ray, as a plain ray.init() makes on a machine without one; never another user's.
    ray.init(address="local")
    config = (PPOConfig().environment(ENV_ID).env_runners(num_env_runners=ENV_RUNNERS, num_envs_per_env_runner=envs)
              .training(**PARAMS).rl_module(model_config=MODEL_CONFIG).debugging(seed=seed))
    algo = config.build_algo()
    t_built = time.perf_counter()
    while True:
        result = algo.train()
        ret = result["env_runners"].get("episode_return_mean")
        steps = result.get("num_env_steps_sampled_lifetime",
                           result["env_runners"].get("num_env_steps_sampled_lifetime", 0))
        if (ret is not None and ret >= stop_return) or steps >= timesteps:
            break
    t_trained = time.perf_counter()
    algo.stop()
    ray.shutdown()
    return {"in_process_s": time.perf_counter() - t0, "train_s": t_trained - t_built,
            "init_and_build_s": t_built - t0, "steps": int(steps), "iterations": int(result["training_iteration"]),
            "train_return": ret, "eval_return": None,
            "stopped": "stop_return" if ret is not None and ret >= stop_return else "timesteps"}


def child_sb3(seed: int, stop_return: float, timesteps: int, tmp: str, params: str) -> dict[str, Any]:
    """(c), inside its own process (the SB3 interpreter): SB3's PPO until the last 100 episodes' mean >= stop."""
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class StopAtReturn(BaseCallback):
        """Checks the last 100 episodes' mean return after each rollout; stops before the next one's first step."""

        def __init__(self) -> None:
            super().__init__()
            self.rollouts, self.mean, self.done, self.steps = 0, None, False, 0

        def _on_rollout_end(self) -> None:
            self.rollouts += 1
            self.steps = self.num_timesteps  # the next rollout's first step, where it stops, is not counted
            buf = self.model.ep_info_buffer
            if buf:
                self.mean = float(np.mean([e["r"] for e in buf]))
                self.done = self.mean >= stop_return

        def _on_step(self) -> bool:
            return not self.done

    t0 = time.perf_counter()
    if params == "zoo":  # rl-zoo3 hyperparams/ppo.yml, CartPole-v1
        env = make_vec_env(ENV_ID, n_envs=8, seed=seed)
        kw: dict[str, Any] = {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                              "ent_coef": 0.0, "learning_rate": lambda f: f * 1e-3, "clip_range": lambda f: f * 0.2}
    else:  # matched to (a)/(b)
        env = make_vec_env(ENV_ID, n_envs=1, seed=seed)
        kw = {"n_steps": 4000, "batch_size": 128, "n_epochs": PARAMS["num_epochs"], "learning_rate": PARAMS["lr"],
              "gamma": 0.99, "gae_lambda": 1.0, "clip_range": 0.3, "vf_coef": PARAMS["vf_loss_coeff"],
              "ent_coef": 0.0, "policy_kwargs": {"net_arch": [32], "activation_fn": torch.nn.Identity}}
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kw)
    cb = StopAtReturn()
    t_built = time.perf_counter()
    model.learn(total_timesteps=timesteps, callback=cb)
    t_trained = time.perf_counter()
    return {"in_process_s": t_trained - t0, "train_s": t_trained - t_built, "steps": int(cb.steps if cb.done else model.num_timesteps),
            "iterations": cb.rollouts, "gradient_epochs": int(model._n_updates), "train_return": cb.mean,
            "eval_return": None, "stopped": "stop_return" if cb.done else "timesteps", "params": params,
            "torch_threads": torch.get_num_threads()}


def run_child(python: str, way: str, args: argparse.Namespace, seed: int, home: str) -> dict[str, Any]:
    """One way in a fresh process; its result with ``wall_s``, the whole command's time."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAYPIPE_HOME"] = home  # a private raypipe home: (a) starts its own Ray even if `raypipe up` runs
    if args.torch_threads:  # the driver's torch threads in (b), SB3's in (c); raypipe's train task already uses 1
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix=f"rl-bench-{way}-", ignore_cleanup_errors=True) as tmp:
        cmd = [python, os.path.abspath(__file__), "--child", way, "--seed", str(seed), "--tmp", tmp,
               "--stop-return", str(args.stop_return), "--timesteps", str(args.timesteps),
               "--sb3-params", args.sb3_params]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"({way}) failed with exit status {proc.returncode}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    got["wall_s"] = wall
    return got


def has_sb3(python: str) -> bool:
    return subprocess.run([python, "-c", "import stable_baselines3"], capture_output=True).returncode == 0


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="runs per way, seeds 0..N-1; medians are reported")
    ap.add_argument("--timesteps", type=int, default=200_000, help="env-step budget of every run")
    ap.add_argument("--stop-return", type=float, default=450.0)
    ap.add_argument("--sb3-python", help="a python with stable_baselines3 (see the docstring); without it (c) is skipped")
    ap.add_argument("--sb3-params", choices=("matched", "zoo"), default="matched",
                    help="(c)'s hyperparameters: matched to (a)/(b), or rl-zoo3's tuned CartPole-v1 ones")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="OMP_NUM_THREADS for every child (0: unset, torch's default of one thread per core, as a "
                         "user's script gets; raypipe's train task sets 1 itself)")
    ap.add_argument("--child", choices=("raypipe", "rllib", "rllib_vec", "sb3"), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = {"raypipe": child_raypipe, "rllib": child_rllib,
              "rllib_vec": lambda *a: child_rllib(*a, envs=VEC_ENVS)}.get(args.child)
        out = fn(args.seed, args.stop_return, args.timesteps, args.tmp) if fn else \
            child_sb3(args.seed, args.stop_return, args.timesteps, args.tmp, args.sb3_params)
        print(json.dumps(out))
        return

    ways = {"raypipe": "(a) raypipe.run (whole pipeline)", "rllib": "(b) plain RLlib script, RLlib's 1 env",
            "rllib_vec": f"(b') plain RLlib script, {VEC_ENVS} envs"}
    sb3_note = None
    if not args.sb3_python:
        sb3_note = "(c) skipped: no --sb3-python (see the docstring for its venv)"
    elif not has_sb3(args.sb3_python):
        sb3_note = f"(c) skipped: {args.sb3_python} cannot import stable_baselines3"
    else:
        ways["sb3"] = f"(c) stable-baselines3 PPO ({args.sb3_params})"
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in ways}
    home = tempfile.mkdtemp(prefix="rp-bench-home-")
    for seed in range(args.repeats):
        for way in ways:
            python = args.sb3_python if way == "sb3" else sys.executable
            r = run_child(python, way, args, seed, home)
            runs[way].append(r)
            print(f"seed {seed} {way}: wall {r['wall_s']:.1f} s, in-process {r['in_process_s']:.1f} s, train "
                  f"{r['train_s']:.1f} s, {r['steps']:,} steps, {r['iterations']} iterations, training return "
                  f"{r['train_return']}, evaluated {r['eval_return']} ({r['stopped']})", flush=True)

    keys = ("wall_s", "in_process_s", "train_s", "steps", "iterations", "train_return", "eval_return")
    med = {w: {k: median(rs, k) for k in keys} for w, rs in runs.items()}
    base = med["rllib"]["wall_s"]

    def f(v: float | None, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    print(f"\nPPO on {ENV_ID} to a mean training return of {args.stop_return:g} (budget {args.timesteps:,} env "
          f"steps), {args.repeats} run(s) each (median), {os.cpu_count()} cores")
    print(f"{'way':42s} {'wall s':>7s} {'ratio':>6s} {'in-proc s':>9s} {'train s':>8s} {'env steps':>10s} "
          f"{'iters':>6s} {'train ret':>9s} {'eval ret':>8s}")
    for w, label in ways.items():
        m = med[w]
        print(f"{label:42s} {m['wall_s']:7.1f} {m['wall_s'] / base:6.2f} {m['in_process_s']:9.1f} "
              f"{m['train_s']:8.1f} {m['steps']:10,.0f} {m['iterations']:6.0f} {f(m['train_return'], '9.1f')} "
              f"{f(m['eval_return'], '8.1f')}")
    if sb3_note:
        print(sb3_note)
    ratio_b = med["raypipe"]["wall_s"] / base
    ratio_c = med["raypipe"]["wall_s"] / med["sb3"]["wall_s"] if "sb3" in med else None
    ratio_vec = med["raypipe"]["wall_s"] / med["rllib_vec"]["wall_s"]
    met = ratio_b <= 1.1
    print(f"raypipe / plain RLlib wall time: {ratio_b:.2f}x (target <= 1.1x: {'met' if met else 'not met'}); "
          f"raypipe / the script with raypipe's {VEC_ENVS} envs: {ratio_vec:.2f}x"
          + (f"; raypipe / stable-baselines3: {ratio_c:.2f}x" if ratio_c is not None else ""))
    print("(a) per stage, last run:", runs["raypipe"][-1]["stages"])
    rounded = {w: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in m.items()} for w, m in med.items()}
    print(json.dumps({
        "bench": "rl", "env": ENV_ID, "stop_return": args.stop_return, "timesteps": args.timesteps,
        "repeats": args.repeats, "torch_threads": args.torch_threads or None, "sb3_params": args.sb3_params if "sb3" in ways else None,
        **{f"{w}": rounded[w] for w in ways},
        "ratio_raypipe_rllib": round(ratio_b, 2), "ratio_raypipe_rllib_vec": round(ratio_vec, 2), "ratio_raypipe_sb3": None if ratio_c is None else round(ratio_c, 2),
        "target_met": met, "raypipe_stages": runs["raypipe"][-1]["stages"],
        "runs": {w: [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "stages"}
                     for r in rs] for w, rs in runs.items()},
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
