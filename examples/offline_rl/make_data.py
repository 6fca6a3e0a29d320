"""Log CartPole transitions of a scripted controller as a CSV export would hold them.

The controller (``raypipe.envs.policies.cartpole_policy``) acts with 5 % random actions, so the
log holds some recoveries. The file is made messy the way real exports are: a few cells of
stray text, a few empty cells. Usage::

    python examples/offline_rl/make_data.py [--episodes 40] [--out examples/offline_rl/data/transitions.csv]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from raypipe.envs.logged import log_transitions, returns
from raypipe.envs.policies import cartpole_policy, noisy

EPSILON = 0.05


def make(out: Path, episodes: int = 40, seed: int = 0) -> float:
    """Write the log; return the logging policy's mean episode return (what BC is compared with)."""
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    policy = noisy(cartpole_policy, EPSILON, rng, gym.make("CartPole-v1").action_space)
    df = log_transitions("CartPole-v1", policy, episodes=episodes, seed=seed)
    mean_return = float(returns(df).mean())
    frame = df.astype(object)
    bad = rng.choice(len(frame), size=max(3, len(frame) // 500), replace=False)
    frame.loc[bad[: len(bad) // 2], "obs_2"] = "ERR"       # stray text in a numeric column: quarantined
    frame.loc[bad[len(bad) // 2:], "reward"] = None        # empty cells: dropped before training, counted
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return mean_return


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "transitions.csv")
    args = parser.parse_args()
    print(f"logged {args.out}; the logging policy's mean return: {make(args.out, args.episodes):.1f}")
