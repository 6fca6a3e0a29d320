"""Logged transitions, as the validate stage kept them, in the column layout RLlib's offline API reads.

A log arrives as a flat table, the way a CSV export holds it: ``obs_0..obs_{n-1}``, ``action``
(or ``action_0..`` for a vector action), ``reward``, ``new_obs_0..``, ``terminated``,
``truncated`` and optionally ``eps_id`` (``actions``, ``rewards``, ``terminateds``, ``truncateds``
are accepted too). RLlib wants one list column per observation (``obs``, ``new_obs``) and its own
names. Rows the validate stage kept but which miss a value the learner needs (an empty cell) are
dropped here and counted in the train report.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from raypipe.errors import SpecError

ALIASES = {"action": ("action", "actions"), "reward": ("reward", "rewards"),
           "terminated": ("terminated", "terminateds", "done", "dones"), "truncated": ("truncated", "truncateds")}


def _vector(names: list[str], prefix: str) -> list[str]:
    found = sorted(((int(m.group(1)), n) for n in names if (m := re.fullmatch(rf"{prefix}_(\d+)", n))))
    return [n for _, n in found]


def layout(columns: list[str], obs_dim: int) -> dict[str, Any]:
    """Which columns hold what; SpecError naming the missing ones and the expected names."""
    out: dict[str, Any] = {"obs": _vector(columns, "obs"), "new_obs": _vector(columns, "new_obs"),
                           "action": _vector(columns, "action")}
    for key, names in ALIASES.items():
        hit = next((n for n in names if n in columns), None)
        if key == "action" and out["action"]:
            continue
        out[key] = [hit] if hit else []
    out["eps_id"] = "eps_id" if "eps_id" in columns else None
    missing = [k for k in ("obs", "new_obs", "action", "reward", "terminated") if not out[k]]
    if missing:
        raise SpecError(f"data.source: logged transitions need columns for {missing}; found {sorted(columns)}. "
                        "Write obs_0..obs_N, action, reward, new_obs_0..new_obs_N, terminated, truncated (one row "
                        "per step)")
    for key in ("obs", "new_obs"):
        if len(out[key]) != obs_dim:
            raise SpecError(f"data.source: {len(out[key])} {key}_<i> columns, but the environment's observations "
                            f"have {obs_dim} values; log one column per value")
    return out


def to_rllib(table: Any, obs_dim: int, discrete_actions: bool) -> tuple[Any, dict[str, int]]:
    """The table in RLlib's layout (``obs``, ``new_obs`` list columns, ``actions``, ``rewards``,
    ``terminateds``, ``truncateds``, ``eps_id``) and the counts of rows kept and dropped."""
    import pyarrow as pa

    cols = layout(table.column_names, obs_dim)

    def mat(names: list[str]) -> np.ndarray:
        return np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names])

    def flag(names: list[str]) -> np.ndarray:
        if not names:
            return np.zeros(table.num_rows, dtype=bool)
        v = table.column(names[0]).to_numpy(zero_copy_only=False)
        return np.asarray([bool(x) if x is not None and x == x else False for x in v])

    obs, new_obs, act = mat(cols["obs"]), mat(cols["new_obs"]), mat(cols["action"])
    reward = mat(cols["reward"])[:, 0]
    ok = np.isfinite(obs).all(1) & np.isfinite(new_obs).all(1) & np.isfinite(act).all(1) & np.isfinite(reward)
    for key in ("terminated", "truncated"):
        if cols[key]:
            ok &= np.asarray([x is not None for x in table.column(cols[key][0]).to_pylist()])
    eps = (table.column(cols["eps_id"]).to_numpy(zero_copy_only=False) if cols["eps_id"]
           else np.arange(table.num_rows))
    keep = np.flatnonzero(ok)
    actions = act[keep, 0].astype(np.int64) if discrete_actions and act.shape[1] == 1 else act[keep].astype(np.float32)
    out = pa.table({
        "eps_id": pa.array([str(e) for e in np.asarray(eps)[keep]]),
        "obs": pa.array(list(obs[keep].astype(np.float32)), type=pa.list_(pa.float32())),
        "actions": pa.array(actions) if actions.ndim == 1 else pa.array(list(actions), type=pa.list_(pa.float32())),
        "rewards": pa.array(reward[keep].astype(np.float32)),
        "new_obs": pa.array(list(new_obs[keep].astype(np.float32)), type=pa.list_(pa.float32())),
        "terminateds": pa.array(flag(cols["terminated"])[keep]),
        "truncateds": pa.array(flag(cols["truncated"])[keep]),
    })
    return out, {"rows": int(table.num_rows), "kept": int(len(keep)), "dropped_incomplete": int(table.num_rows - len(keep))}
