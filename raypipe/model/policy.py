"""A trained RLlib policy as a registry artefact: safetensors weights plus JSON, nothing pickled.

RLlib's own checkpoints hold pickled (or msgpack) state; they stay in the train stage's working
folder. The registered policy is ``model.safetensors`` (the RLModule's state) and ``model.json``:
the algorithm, the module's ``model_config``, the spaces written as plain JSON (RLlib's own space
serialisation calls ``np.load(allow_pickle=True)``, so it is not used on stored files), and how
observations and actions are converted between the environment and the module.

At load the module's class comes from the algorithm's default ``RLModuleSpec`` in this process's
RLlib, never from the file: a stored name that differs is refused. :class:`Policy` answers
observations with actions (deterministic: the greedy / mean action), the action probabilities of
a discrete policy and the value estimate where the module has one. The evaluate stage, batch
inference and the Serve replica all act through it, so the evaluated policy is the served one.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from raypipe.errors import ArtifactError
from raypipe.model.formats import MODEL_JSON, TORCH_WEIGHTS
from raypipe.store import Store

POLICY_FORMAT = "raypipe.policy/1"


# --- spaces as JSON --------------------------------------------------------------------
def space_to_json(space: Any) -> dict[str, Any]:
    """A Box or Discrete space as plain JSON (infinite bounds as null)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        def bounds(a: np.ndarray) -> Any:
            return np.where(np.isfinite(a), a.astype(np.float64), np.nan).tolist()

        return {"type": "box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _nan_to_none(bounds(space.low)), "high": _nan_to_none(bounds(space.high))}
    raise ArtifactError(f"space {space!r}: raypipe serves policies over Box and Discrete spaces only")


def space_from_json(doc: dict[str, Any]) -> Any:
    import gymnasium as gym

    if doc["type"] == "discrete":
        return gym.spaces.Discrete(int(doc["n"]), start=int(doc.get("start", 0)))
    if doc["type"] == "box":
        shape = tuple(int(d) for d in doc["shape"])
        dtype = np.dtype(doc["dtype"])
        if dtype.kind not in "fiu":
            raise ArtifactError(f"Box dtype {doc['dtype']!r} is not numeric")
        low = np.array(_none_to(doc["low"], -np.inf), dtype=np.float64).reshape(shape)
        high = np.array(_none_to(doc["high"], np.inf), dtype=np.float64).reshape(shape)
        return gym.spaces.Box(low=low.astype(dtype), high=high.astype(dtype), shape=shape, dtype=dtype)
    raise ArtifactError(f"space type {doc.get('type')!r} is not box or discrete")


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def _none_to(v: Any, fill: float) -> Any:
    if isinstance(v, list):
        return [_none_to(x, fill) for x in v]
    return fill if v is None else float(v)


# --- the module's class, from code ----------------------------------------------------------
def algorithm(algo: str) -> tuple[Any, Any]:
    """RLlib's algorithm class and a fresh default config for ``algo`` (``PPO``, ``BC``, ...)."""
    from ray.rllib.algorithms.registry import ALGORITHMS

    return ALGORITHMS[algo]()


def default_module_spec(algo: str) -> Any:
    """The algorithm's default RLModuleSpec (module and catalog class) in this process's RLlib."""
    return algorithm(algo)[1].get_default_rl_module_spec()


def _type_name(t: Any) -> str | None:
    return None if t is None else f"{t.__module__}.{t.__qualname__}"


def policy_meta(algo: str, module: Any, env_observation_space: Any, env_action_space: Any, *,
                normalize_actions: bool, clip_actions: bool, rescale_observations: bool = False,
                **extra: Any) -> dict[str, Any]:
    """``model.json`` of a trained module (its spec as JSON; the env's spaces for checking requests)."""
    return {
        "format": POLICY_FORMAT, "kind": f"rllib:{algo}", "task": "reinforcement", "algo": algo,
        "module_class": _type_name(type(module)),
        "catalog_class": _type_name(type(module.catalog)) if getattr(module, "catalog", None) is not None else None,
        "model_config": _plain(module.model_config),
        "module_observation_space": space_to_json(module.observation_space),
        "module_action_space": space_to_json(module.action_space),
        "observation_space": space_to_json(env_observation_space),
        "action_space": space_to_json(env_action_space),
        "normalize_actions": bool(normalize_actions), "clip_actions": bool(clip_actions),
        "rescale_observations": bool(rescale_observations),
        **extra,
    }


def _plain(v: Any) -> Any:
    """model_config as JSON: dataclass configs as dicts, tuples as lists."""
    import dataclasses

    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        v = dataclasses.asdict(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items() if not callable(x)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def module_state(module: Any) -> dict[str, Any]:
    """The module's weights as torch tensors (for safetensors)."""
    import torch

    return {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in module.get_state(inference_only=False).items()}


def save_policy(store: Store, meta: dict[str, Any], module: Any) -> None:
    from safetensors.torch import save

    store.write_bytes(TORCH_WEIGHTS, save({k: v.contiguous() for k, v in module_state(module).items()}))
    store.write_json(MODEL_JSON, meta)


def is_policy(store: Store) -> bool:
    """Whether a model folder holds a policy (``model.json`` of this format)."""
    return store.read_json(MODEL_JSON).get("format") == POLICY_FORMAT


def load_policy(store: Store) -> "Policy":
    from safetensors.torch import load

    meta = store.read_json(MODEL_JSON)
    if meta.get("format") != POLICY_FORMAT:
        raise ArtifactError(f"{store.full_uri(MODEL_JSON)}: not a raypipe policy (format {meta.get('format')!r})")
    return Policy(meta, load(store.read_bytes(TORCH_WEIGHTS)))


def build_module(meta: dict[str, Any]) -> Any:
    """The RLModule described by ``meta``, its class from the algorithm's default spec (never from the file)."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    algo = meta.get("algo")
    from raypipe.spec import RLLIB_ALGOS

    if algo not in RLLIB_ALGOS:
        raise ArtifactError(f"model.json names the algorithm {algo!r}; raypipe loads policies of {list(RLLIB_ALGOS)}")
    default = default_module_spec(algo)
    spec = RLModuleSpec(module_class=default.module_class, catalog_class=default.catalog_class,
                        observation_space=space_from_json(meta["module_observation_space"]),
                        action_space=space_from_json(meta["module_action_space"]),
                        model_config=meta.get("model_config") or {}, inference_only=False)
    module = spec.build()
    built = {"module_class": _type_name(type(module)),
             "catalog_class": _type_name(type(module.catalog)) if getattr(module, "catalog", None) is not None else None}
    for field, expected in built.items():
        if meta.get(field) != expected:
            raise ArtifactError(f"model.json's {field} is {meta.get(field)!r}, but {algo} builds {expected!r} here: a "
                                "stored policy never decides what code runs (custom RLModules are not served)")
    return module


class Policy:
    """A loaded policy: observations in, actions out (see the module docstring)."""

    task = "reinforcement"
    threshold = 0.5
    classes = None

    def __init__(self, meta: dict[str, Any], state: dict[str, Any]) -> None:
        import torch

        self.meta, self._torch = meta, torch
        self.module = build_module(meta)
        self.module.set_state({k: v.numpy() for k, v in state.items()})
        self.module.eval()
        self.observation_space = space_from_json(meta["observation_space"])
        self.action_space = space_from_json(meta["action_space"])
        self.one_hot = meta["module_observation_space"] != meta["observation_space"] \
            and meta["observation_space"]["type"] == "discrete"
        from ray.rllib.core.rl_module.apis import ValueFunctionAPI

        self.has_values = isinstance(self.module, ValueFunctionAPI)

    # -- observations ----------------------------------------------------------------------
    @property
    def obs_shape(self) -> tuple[int, ...]:
        return () if self.observation_space.shape is None else tuple(self.observation_space.shape)

    def problems(self, obs: np.ndarray, loc: str = "observations") -> list[dict[str, Any]]:
        """Why these observations (one per row) are not in the observation space: at most 10, each with
        its location, the value and the bounds. Shapes and finiteness are checked when parsing."""
        space, out = self.observation_space, []
        if self.meta["observation_space"]["type"] == "discrete":
            lo, hi = space.start, space.start + space.n - 1
            bad = np.argwhere((obs < lo) | (obs > hi) | (obs != np.round(obs)))
            for (i,) in bad[:10]:
                out.append({"loc": [loc, int(i)], "msg": f"{obs[i]:g} is not a state of the observation space: "
                            f"an integer in [{lo}, {hi}]", "type": "out_of_space"})
            return out
        low, high = np.broadcast_to(space.low, obs.shape), np.broadcast_to(space.high, obs.shape)
        bad = np.argwhere((obs < low) | (obs > high))
        for idx in bad[:10]:
            i = tuple(int(j) for j in idx)
            out.append({"loc": [loc, *i], "msg": f"{obs[i]:g} is outside the observation space's bounds "
                        f"[{low[i]:g}, {high[i]:g}]", "type": "out_of_bounds"})
        return out

    def check(self, observations: Any) -> np.ndarray:
        """Observations as an array (one per row), or ValueError naming the first problems."""
        obs = np.asarray(observations, dtype=np.float64)
        if obs.shape[1:] != self.obs_shape:
            raise ValueError(f"observations have shape {list(obs.shape[1:])} each; the observation space's is "
                             f"{list(self.obs_shape)}")
        if not np.isfinite(obs).all():
            raise ValueError("observations hold NaN or infinite values")
        found = self.problems(obs)
        if found:
            raise ValueError("; ".join(f"{p['loc']}: {p['msg']}" for p in found))
        return obs

    # -- actions ----------------------------------------------------------------------------
    def _module_obs(self, obs: np.ndarray) -> Any:
        """Observations as the network saw them in training: one-hot states, or a bounded Box rescaled to
        [-1, 1] (``rescale_observations``, as gymnasium's RescaleObservation did to the training env)."""
        torch = self._torch
        if self.meta.get("rescale_observations"):
            low = self.observation_space.low.astype(np.float64)
            high = self.observation_space.high.astype(np.float64)
            obs = -1.0 + 2.0 * (np.asarray(obs, dtype=np.float64) - low) / (high - low)
        if self.one_hot:
            space = self.observation_space
            hot = np.zeros((len(obs), space.n), dtype=np.float32)
            hot[np.arange(len(obs)), obs.astype(np.int64) - space.start] = 1.0
            return torch.from_numpy(hot)
        return torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32))

    def act(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """``actions`` for a batch of observations, with ``probabilities`` (discrete actions) and ``values``
        where the module has them. Deterministic: the greedy action, or the distribution's mean."""
        torch = self._torch
        with torch.inference_mode():
            batch = {"obs": self._module_obs(np.asarray(obs))}
            out = self.module.forward_inference(batch)
            extra: dict[str, np.ndarray] = {}
            if "actions" in out:  # DQN: the greedy action, with its Q-values
                actions = out["actions"]
                if hasattr(self.module, "compute_q_values"):
                    extra["q_values"] = self.module.compute_q_values(batch)["qf_preds"].float().cpu().numpy()
            else:
                logits = out["action_dist_inputs"]
                dist = self.module.get_inference_action_dist_cls().from_logits(logits)
                actions = dist.to_deterministic().sample()
                if self.meta["action_space"]["type"] == "discrete":
                    extra["probabilities"] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if self.has_values:
                try:
                    extra["values"] = self.module.compute_values(batch).float().cpu().numpy().reshape(len(obs))
                except Exception:  # a module built without its value head
                    pass
        actions = actions.cpu().numpy()
        return {"actions": self._env_actions(actions), **extra}

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        """Module actions as the environment takes them (RLlib's unsquash / clip, as its env runners do)."""
        if self.meta["action_space"]["type"] == "discrete":
            return actions.astype(np.int64) + self.action_space.start
        from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

        if self.meta["normalize_actions"]:
            return np.stack([unsquash_action(a, self.action_space) for a in actions]).astype(self.action_space.dtype)
        if self.meta["clip_actions"]:
            return np.stack([clip_action(a, self.action_space) for a in actions]).astype(self.action_space.dtype)
        return actions.astype(self.action_space.dtype)

    def __call__(self, obs: Any) -> Any:
        """One observation in, one action out (what an episode loop calls)."""
        a = self.act(np.asarray(obs)[None])["actions"][0]
        return int(a) if np.ndim(a) == 0 and self.meta["action_space"]["type"] == "discrete" else a

    def records(self, observations: Any) -> list[dict[str, Any]]:
        """One JSON-ready answer per observation: ``action`` (and ``probabilities``, ``value``, ``q_values``)."""
        obs = np.asarray(observations, dtype=np.float64)
        out = self.act(obs)
        recs = []
        for i in range(len(obs)):
            a = out["actions"][i]
            rec: dict[str, Any] = {"action": a.tolist() if np.ndim(a) else (int(a) if np.issubdtype(
                np.asarray(a).dtype, np.integer) else float(a))}
            if "probabilities" in out:
                rec["probabilities"] = [float(p) for p in out["probabilities"][i]]
            if "q_values" in out:
                rec["q_values"] = [float(q) for q in out["q_values"][i]]
            if "values" in out:
                rec["value"] = float(out["values"][i])
            recs.append(rec)
        return recs

    predict_records = records  # the replica's batch method calls this for every kind of model
