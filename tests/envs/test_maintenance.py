"""The Maintenance environment: gymnasium's checks, seeding, registration and how policies compare.

Policy returns are means over episodes seeded 0 to 49 (common random numbers: every policy
meets the same loads, wear noise and failure chances). Measured when written: random -433,
never service -185, threshold (4.8) 34, the linear two-feature rule 62, informed_policy 77.
"""
from __future__ import annotations

import importlib
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import raypipe.envs
from raypipe.envs import ENV_ID, Maintenance
from raypipe.envs.maintenance import (
    OBS_NAMES, informed_policy, mean_return, threshold_policy, tune_threshold,
)

EPISODES = 50
SINCE = OBS_NAMES.index("cycles_since_service")


def trajectory(env: gymnasium.Env, seed: int, policy) -> tuple[np.ndarray, np.ndarray]:
    obs, _ = env.reset(seed=seed)
    seen, rewards, done = [obs], [], False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        seen.append(obs)
        rewards.append(reward)
        done = terminated or truncated
    return np.array(seen), np.array(rewards)


def linear_rule(obs: np.ndarray) -> int:
    """Load-corrected log-vibration plus cycles since service (grid-searched on seeds 1000-1049)."""
    return int(np.log(obs[1]) - 0.4 * obs[4] + 0.8 * obs[SINCE] > 1.5)


def test_env_checker_passes():
    check_env(Maintenance(), skip_render_check=True)
    check_env(gymnasium.make(ENV_ID).unwrapped, skip_render_check=True)


def test_observations_stay_in_bounds_and_finite():
    env = Maintenance(horizon=100)
    rng = np.random.default_rng(0)
    for seed in range(10):
        seen, _ = trajectory(env, seed, lambda o: int(rng.random() < 0.02))
        assert seen.dtype == np.float32 and np.isfinite(seen).all()
        assert all(env.observation_space.contains(o) for o in seen)


def test_same_seed_same_trajectory_other_seed_differs():
    a_obs, a_rew = trajectory(Maintenance(), 7, threshold_policy(4.8))
    b_obs, b_rew = trajectory(Maintenance(), 7, threshold_policy(4.8))
    c_obs, _ = trajectory(Maintenance(), 8, threshold_policy(4.8))
    assert np.array_equal(a_obs, b_obs) and np.array_equal(a_rew, b_rew)
    assert a_obs.shape == c_obs.shape == (201, len(OBS_NAMES))
    assert not np.array_equal(a_obs, c_obs)


def test_horizon_truncates_and_options_come_from_config_or_keywords():
    env = Maintenance({"horizon": 5, "service_cost": 3.0}, service_cost=7.0)
    _, rewards = trajectory(env, 0, lambda o: 1)
    assert rewards.tolist() == [-7.0] * 5
    with pytest.raises(ValueError, match="unknown Maintenance option"):
        Maintenance({"horizn": 5})


def test_service_resets_cycles_and_failure_costs():
    env = Maintenance()
    env.reset(seed=0)
    for _ in range(3):
        obs, reward, *_ = env.step(0)
        assert 0.2 <= reward <= 1.0
    assert obs[SINCE] == pytest.approx(0.03)
    obs, reward, terminated, truncated, info = env.step(1)
    assert (obs[SINCE], reward, terminated, truncated, info["wear"]) == (0.0, -5.0, False, False, 0.0)
    failures = []
    for seed in range(5):
        env.reset(seed=seed)
        for _ in range(200):
            obs, reward, _, _, info = env.step(0)
            if info["failed"]:
                failures.append((obs[SINCE], info["wear"], reward))
    assert failures, "a machine never serviced fails"
    assert all(since == 0.0 and wear == 0.0 and -100.0 < r <= -99.0 for since, wear, r in failures)


def test_registered_and_reimport_is_silent():
    env = gymnasium.make(ENV_ID, horizon=10)
    assert isinstance(env.unwrapped, Maintenance) and env.spec.max_episode_steps == 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(raypipe.envs)
    assert ENV_ID in gymnasium.registry


def test_threshold_baseline_beats_random_and_never_service_by_far():
    rng = np.random.default_rng(0)
    env = Maintenance()
    threshold = mean_return(env.baseline_policy, EPISODES)
    never = mean_return(lambda o: 0, EPISODES)
    random = mean_return(lambda o: int(rng.random() < 0.5), EPISODES)
    assert env.baseline_name == "threshold"
    assert threshold > never + 150 and threshold > random + 400, (threshold, never, random)
    assert threshold > 20


def test_tuned_threshold_is_near_optimal():
    grid = [round(3.6 + 0.3 * i, 1) for i in range(9)]  # 3.6 .. 6.0
    best, best_score, scores = tune_threshold(grid, episodes=30, seed=0)
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    assert Maintenance.BASELINE_VIBRATION in ranked[:3], ranked
    assert scores[Maintenance.BASELINE_VIBRATION] > best_score - 10
    assert max(scores[3.6], scores[6.0]) < best_score - 30  # the grid brackets the optimum


def test_two_feature_rules_beat_the_threshold():
    threshold = mean_return(threshold_policy(Maintenance.BASELINE_VIBRATION), EPISODES)
    informed = mean_return(informed_policy, EPISODES)
    linear = mean_return(linear_rule, EPISODES)
    assert informed > threshold + 25, (informed, threshold)  # measured +43
    assert linear > threshold + 10, (linear, threshold)  # measured +28
