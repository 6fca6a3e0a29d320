"""Predictive maintenance as a decision problem: keep a machine running or service it.

The environment mirrors the built-in ``sensors`` data (:mod:`raypipe.ingest.builtin.sensors`):
a hidden wear level in [0, 1] rises cycle by cycle, the sensors follow it (temperature and
vibration up, pressure and rpm down) on top of the operating load, the machine model and
noise, and a worn machine fails. Each step is one operating cycle.

Hidden state, drawn per episode (one episode is one machine):

* ``rate``: mean wear added per cycle, log-uniform over [``rate_low``, ``rate_high``]
  (machines differ, like the per-machine lives of ``sensors``); each cycle adds
  ``rate * (0.5 + load) * gamma-noise``, so full wear comes after about 35 to 210 cycles.
* ``model``: the machine model, which offsets temperature, pressure and vibration as in
  ``sensors``; ``speed``: the set point, one of 1200, 1500, 1800 rpm.

Each cycle the machine fails with probability ``hazard_scale * wear ** hazard_power`` (steep:
almost nothing below half wear). Actions (``Discrete(2)``):

* ``0`` keep running: reward ``load`` (the production of the cycle, its load drawn as
  ``sensors``'s ``setting_load``, in [0.2, 1], and not known in advance), then
  wear grows and the machine may fail; a failure costs ``failure_cost`` and the machine is
  repaired (wear back to 0) for the next cycle.
* ``1`` service: the cycle produces nothing and costs ``service_cost``; wear goes back to 0.

The episode never terminates; it is truncated after ``horizon`` cycles. A failure is thus a
cost, not an end (ending the episode would make failing a way to stop losing reward), and
the problem is a well-posed finite-horizon one: maximise production less service and
failure costs over ``horizon`` cycles.

The observation (``Box`` float32, each component clipped into the bounds in
:data:`OBS_LOW` / :data:`OBS_HIGH`) holds the readings of the cycle just run, computed as the
``sensors`` generator computes them (ambient temperature unobserved), the load it ran at
(a service cycle ends with a test run at load 0.2), and the cycles since the last service or
repair (divided by 100). Wear shows in each reading only through noise, the
load and the machine model (vibration's model offset is as large as its whole wear effect
is at half wear); the cycles since service say how much wear a typical machine would
have, the readings how worn this one is. Mean returns over 200 episodes seeded 5000 to 5199
(none used for tuning): random -432, never service -179, the vibration threshold of
:meth:`Maintenance.baseline_policy` 31 (good), and rules on two features better still:
:func:`informed_policy` (the rpm's sag below its set point and the cycles since service)
77, a linear rule (load-corrected log-vibration and cycles since service) 55. Servicing on
the true, hidden wear reaches 92.
"""
from __future__ import annotations

from typing import Any, Callable

import gymnasium
import numpy as np
from gymnasium import spaces

OBS_NAMES = ("temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "load", "cycles_since_service")
"""The components of an observation, in order (``cycles_since_service`` is divided by 100)."""

OBS_LOW = np.array([30.0, 0.5, 10.0, 1000.0, 0.2, 0.0], dtype=np.float32)
OBS_HIGH = np.array([130.0, 20.0, 50.0, 1900.0, 1.0, 5.0], dtype=np.float32)
VIBRATION = OBS_NAMES.index("vibration_mm_s")

_SPEEDS = np.array([1200.0, 1500.0, 1800.0])
_MODEL_P = np.array([0.5, 0.3, 0.2])
_MODEL_OFFSET = np.array([0.0, 3.0, -2.0])  # temperature offset by model, as in sensors.py
_MODEL_VIB = np.array([0.0, 0.3, -0.2])  # log-vibration offset by model
_WEAR_SHAPE = 4.0  # gamma shape of the per-cycle wear noise (mean 1, sd 0.5)

DEFAULTS: dict[str, Any] = {
    "horizon": 200,
    "service_cost": 5.0,
    "failure_cost": 100.0,
    "hazard_scale": 0.5,
    "hazard_power": 6.0,
    "rate_low": 0.004,
    "rate_high": 0.025,
}
"""Constructor defaults; any of them may be given in ``config`` or as a keyword."""


class Maintenance(gymnasium.Env):
    """One machine over ``horizon`` cycles: run it (production) or service it (cost)."""

    metadata = {"render_modes": []}
    baseline_name = "threshold"
    BASELINE_VIBRATION = 4.8
    """``baseline_policy`` services above this vibration (mm/s): the best of ``tune_threshold()``
    (2.0 to 8.0 by 0.2, episodes seeded 0 to 99; mean return 22.2)."""

    def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
        """Takes options as an RLlib ``env_config`` dict, as keywords, or both (keywords win)."""
        opts = {**DEFAULTS, **(config or {}), **kwargs}
        unknown = set(opts) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown Maintenance option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.horizon = int(opts["horizon"])
        self.service_cost = float(opts["service_cost"])
        self.failure_cost = float(opts["failure_cost"])
        self.hazard_scale = float(opts["hazard_scale"])
        self.hazard_power = float(opts["hazard_power"])
        self.rate_low, self.rate_high = float(opts["rate_low"]), float(opts["rate_high"])
        if self.horizon < 1 or not 0 < self.rate_low <= self.rate_high:
            raise ValueError("horizon must be >= 1 and 0 < rate_low <= rate_high")
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._wear = 0.0
        self._rate = self.rate_low
        self._model = 0
        self._speed = _SPEEDS[1]
        self._load = 0.5
        self._since = 0
        self._t = 0

    # -- dynamics -------------------------------------------------------------------------

    def _draw_load(self) -> float:
        """The load of a cycle, distributed as ``sensors``'s ``setting_load``."""
        return float(min(max(self.np_random.beta(4.0, 3.0) * 0.8 + 0.2, 0.2), 1.0))

    def _observe(self) -> np.ndarray:
        """Readings of the cycle just run (at ``self._load``) at the current wear, as ``sensors`` computes them."""
        noise = self.np_random.standard_normal(5)
        wear, load, amb = self._wear, self._load, 22.0 + 5.0 * noise[3]
        offset = _MODEL_OFFSET[self._model]
        obs = np.array([
            55 + 20 * load + 0.5 * amb + offset + 9 * wear + 3.0 * noise[0],
            np.exp(0.6 + 0.4 * load + _MODEL_VIB[self._model] + 0.7 * wear + 0.3 * noise[1]),
            30 + 6 * load - 0.5 * offset - 3.5 * wear + 1.4 * noise[2],
            self._speed * (1 - 0.015 * wear) + 6.0 * noise[4],
            load,
            self._since / 100.0,
        ])
        return np.clip(obs, OBS_LOW, OBS_HIGH).astype(np.float32)

    def hazard(self, wear: float) -> float:
        """Probability that a machine at ``wear`` fails during a cycle."""
        return min(1.0, self.hazard_scale * min(wear, 1.0) ** self.hazard_power)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """A new machine, new since its last service (wear 0)."""
        super().reset(seed=seed)
        rng = self.np_random
        self._rate = float(np.exp(rng.uniform(np.log(self.rate_low), np.log(self.rate_high))))
        self._model = int(min(np.searchsorted(np.cumsum(_MODEL_P), rng.random(), side="right"), 2))
        self._speed = float(_SPEEDS[rng.integers(0, len(_SPEEDS))])
        self._wear, self._since, self._t = 0.0, 0, 0
        self._load = self._draw_load()
        return self._observe(), self._info(failed=False)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Runs (0) or services (1) the machine for one cycle."""
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (run) or 1 (service), got {action!r}")
        # The same draws every cycle, whatever the action: two policies on one seed then meet the
        # same loads, wear noise and failure chances (common random numbers, fair comparisons).
        rng = self.np_random
        load, growth, chance = self._draw_load(), rng.gamma(_WEAR_SHAPE, 1.0 / _WEAR_SHAPE), rng.random()
        failed = False
        if int(action) == 1:
            reward = -self.service_cost
            self._wear, self._since = 0.0, 0
        else:
            reward = load
            self._wear = min(1.0, self._wear + self._rate * (0.5 + load) * growth)
            self._since += 1
            if chance < self.hazard(self._wear):
                failed = True
                reward -= self.failure_cost
                self._wear, self._since = 0.0, 0
        self._t += 1
        self._load = 0.2 if int(action) == 1 else load
        obs = self._observe()
        return obs, float(reward), False, self._t >= self.horizon, self._info(failed)

    def _info(self, failed: bool) -> dict:
        """Hidden state for analysis (never needed to act): wear, this machine's rate, a failure."""
        return {"wear": self._wear, "rate": self._rate, "failed": failed}

    # -- baseline ---------------------------------------------------------------------------

    def baseline_policy(self, obs: np.ndarray) -> int:
        """Services when vibration exceeds :attr:`BASELINE_VIBRATION`."""
        return threshold_policy(self.BASELINE_VIBRATION)(obs)


def threshold_policy(x: float) -> Callable[[np.ndarray], int]:
    """The policy "service when vibration > ``x``"."""
    def policy(obs: np.ndarray) -> int:
        return int(obs[VIBRATION] > x)
    return policy


def rpm_sag_pct(obs: np.ndarray) -> float:
    """How far (in %) the rpm reading lies below its nearest set point: 1.5 % at full wear, noise ~0.4 %.

    The set points (1200, 1500, 1800) lie far enough apart that the nearest one is the machine's.
    """
    rpm = float(obs[OBS_NAMES.index("rpm")])
    nearest = float(_SPEEDS[np.abs(_SPEEDS - rpm).argmin()])
    return (nearest - rpm) / nearest * 100.0


def informed_policy(obs: np.ndarray) -> int:
    """A two-feature rule beating the threshold: service when ``rpm_sag_pct + 2 * cycles_since_service/100 > 1.5``.

    Found by a small grid search over (weight, threshold) on episodes seeded 1000 to 1049.
    """
    return int(rpm_sag_pct(obs) + 2.0 * float(obs[OBS_NAMES.index("cycles_since_service")]) > 1.5)


def mean_return(policy: Callable[[np.ndarray], int], episodes: int, seed: int = 0, **config: Any) -> float:
    """Mean return of ``policy`` over episodes seeded ``seed``, ``seed + 1``, ...

    Steps the environment class directly (no ``gymnasium.make`` wrappers), for speed.
    """
    env = Maintenance(config)
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += reward
            done = terminated or truncated
    return total / episodes


def tune_threshold(
    thresholds: np.ndarray | list[float] | None = None, episodes: int = 100, seed: int = 0, **config: Any
) -> tuple[float, float, dict[float, float]]:
    """Searches the vibration threshold of :func:`threshold_policy` over seeded episodes.

    Args:
        thresholds: Candidates, by default 2.0 to 8.0 in steps of 0.2.
        episodes: Episodes per candidate, seeded ``seed .. seed + episodes - 1`` (the same for all).
        seed: First episode seed.
        config: Environment options.

    Returns:
        The best threshold, its mean return, and the mean return of every candidate.
    """
    if thresholds is None:
        thresholds = np.round(np.arange(2.0, 8.0 + 1e-9, 0.2), 2)
    scores = {float(x): mean_return(threshold_policy(float(x)), episodes, seed, **config) for x in thresholds}
    best = max(scores, key=scores.__getitem__)
    return best, scores[best], scores
