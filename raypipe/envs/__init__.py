"""Built-in gymnasium environments for raypipe's reinforcement learning.

Importing the package registers :class:`~raypipe.envs.maintenance.Maintenance` as
``raypipe/Maintenance-v0`` (once: importing again, or reloading, neither warns nor fails), so
``gymnasium.make(ENV_ID)`` works after ``import raypipe.envs``. Only gymnasium and numpy are
imported here. The registration's ``max_episode_steps`` is the default horizon (200); a longer
``horizon`` through ``gymnasium.make`` also needs ``max_episode_steps=horizon`` there.
"""
from __future__ import annotations

import gymnasium

from raypipe.envs.maintenance import DEFAULTS, Maintenance

ENV_ID = "raypipe/Maintenance-v0"
"""The gymnasium id of :class:`Maintenance`."""

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="raypipe.envs.maintenance:Maintenance",
        max_episode_steps=DEFAULTS["horizon"],
    )

__all__ = ["ENV_ID", "Maintenance"]
