"""Logged transitions: a flat table whose rows, returns and chaining match the rollouts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raypipe.envs import ENV_ID, Maintenance
from raypipe.envs.logged import log_transitions, returns, rollout_returns
from raypipe.envs.maintenance import informed_policy
from raypipe.envs.policies import cartpole_policy, noisy


def obs_cols(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(n)]


def test_columns_dtypes_and_rows():
    df = log_transitions(ENV_ID, informed_policy, episodes=3, seed=10, env_config={"horizon": 40})
    expected = ["eps_id", "t", *obs_cols("obs", 6), "action", "reward", *obs_cols("new_obs", 6),
                "terminated", "truncated"]
    assert list(df.columns) == expected
    assert df["eps_id"].dtype == np.int64 and df["t"].dtype == np.int64 and df["action"].dtype == np.int64
    assert all(df[c].dtype == np.float64 for c in obs_cols("obs", 6) + obs_cols("new_obs", 6) + ["reward"])
    assert df["terminated"].dtype == bool and df["truncated"].dtype == bool
    assert len(df) == 3 * 40 and sorted(df["eps_id"].unique()) == [10, 11, 12]
    assert df.groupby("eps_id")["t"].apply(list).tolist() == [list(range(40))] * 3
    last = df.groupby("eps_id").tail(1)
    assert last["truncated"].all() and df["truncated"].sum() == 3 and not df["terminated"].any()
    assert set(df["action"]) == {0, 1}


def test_rows_are_total_steps_with_terminations():
    policy = noisy(cartpole_policy, 0.6, np.random.default_rng(0), Maintenance().action_space)
    df = log_transitions("CartPole-v1", policy, episodes=4, seed=0)
    lengths = df.groupby("eps_id").size()
    assert len(df) == lengths.sum() and (lengths < 500).all()  # the noisy controller drops the pole
    assert df.groupby("eps_id").tail(1)["terminated"].all() and df["terminated"].sum() == 4
    assert returns(df).tolist() == lengths.astype(float).tolist()


def test_returns_match_rollout_returns_and_seeds():
    df = log_transitions(ENV_ID, informed_policy, episodes=5, seed=3)
    r = returns(df)
    assert list(r.index) == [3, 4, 5, 6, 7]
    expected = rollout_returns(ENV_ID, informed_policy, episodes=5, seed=3)
    np.testing.assert_allclose(r.to_numpy(), expected)
    direct = rollout_returns(lambda cfg: Maintenance(cfg), informed_policy, episodes=5, seed=3)
    np.testing.assert_allclose(direct, expected)
    assert len(set(np.round(expected, 6))) == 5


def test_new_obs_chains_into_next_obs():
    df = log_transitions(ENV_ID, informed_policy, episodes=3, seed=0, env_config={"horizon": 30})
    for _, ep in df.groupby("eps_id"):
        new = ep[obs_cols("new_obs", 6)].to_numpy()[:-1]
        nxt = ep[obs_cols("obs", 6)].to_numpy()[1:]
        np.testing.assert_array_equal(new, nxt)
    first = df.groupby("eps_id").head(1)[obs_cols("obs", 6)].to_numpy()
    assert not np.array_equal(first[0], first[1])


def test_box_actions_get_one_float_column_each(tmp_path):
    df = log_transitions("Pendulum-v1", lambda o: np.array([-2.0 * o[2]], dtype=np.float32), episodes=1, seed=0)
    assert "action" not in df.columns and df["action_0"].dtype == np.float64 and len(df) == 200
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert list(back.columns) == list(df.columns) and back["truncated"].dtype == bool


def test_bad_episodes_refused():
    with pytest.raises(ValueError, match="episodes"):
        log_transitions(ENV_ID, informed_policy, episodes=-1, seed=0)
