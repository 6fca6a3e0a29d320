"""A registered RLlib policy as ONNX: observations in, the deterministic action out.

The graph is the policy's RLModule wrapped in :class:`PolicyHead` and exported with
``torch.onnx`` (dynamo, like the torch zoo in :mod:`raypipe.export.onnx_model`). It answers
what :meth:`raypipe.model.policy.Policy.act` answers:

- input ``obs``: float32 ``[N, *obs_shape]``; for a Discrete observation space ``[N]``, the
  state index (the one-hot encoding the module takes is done inside the graph);
- ``action``: int64 ``[N]`` for Discrete actions (argmax of the logits, or of the Q-values for
  DQN, plus the space's ``start``); float32 ``[N, *act_shape]`` for Box actions: the
  distribution's mean, unsquashed to the bounds (``normalize_actions``) or clipped to them
  (``clip_actions``) as RLlib's env runners do;
- ``probabilities`` float32 ``[N, K]``: softmax of the logits (discrete actions, not DQN);
- ``q_values`` float32 ``[N, K]`` (DQN); ``value`` float32 ``[N]`` where the module has a value
  function (PPO).

The observation space's bounds are not checked in the graph: the caller checks them (the
``raypipe.observation_space`` metadata holds them; :meth:`Policy.check` does it in Python).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from raypipe.errors import ExportError


def _action_transform(meta: dict[str, Any], space: Any) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """How module actions become env actions for a Box space: ``("unsquash"|"clip"|"none", low, high)``.

    Mirrors RLlib's ``unsquash_action`` (only for a float Box bounded on every side) and
    ``clip_action`` (as :meth:`Policy._env_actions` calls them)."""
    low, high = np.asarray(space.low, dtype=np.float64), np.asarray(space.high, dtype=np.float64)
    if meta["normalize_actions"]:
        bounded = bool(np.all(space.bounded_below) and np.all(space.bounded_above))
        if not bounded:
            return "none", None, None
        if np.dtype(space.dtype).kind != "f":
            raise ExportError([f"action space {space}: an integer Box has no ONNX export (use a Discrete space)"])
        return "unsquash", low, high
    if meta["clip_actions"]:
        return "clip", low, high
    return "none", None, None


def _head(policy: Any) -> tuple[Any, list[str]]:
    """The policy as a ``torch.nn.Module`` of one tensor, and its output names."""
    import torch
    from ray.rllib.core.distribution.torch.torch_distribution import (
        TorchCategorical, TorchDeterministic, TorchDiagGaussian, TorchSquashedGaussian)

    meta, module = policy.meta, policy.module
    discrete_actions = meta["action_space"]["type"] == "discrete"
    dqn = meta.get("algo") == "DQN"
    if dqn:
        mode = "q"
    else:
        dist = module.get_inference_action_dist_cls()
        if isinstance(dist, type) and issubclass(dist, TorchCategorical):
            mode = "argmax"
        elif isinstance(dist, type) and issubclass(dist, (TorchDiagGaussian, TorchSquashedGaussian)):
            mode = "loc"  # to_deterministic() of both is the Gaussian's loc (the logits' first half)
        elif isinstance(dist, type) and issubclass(dist, TorchDeterministic):
            mode = "identity"
        else:
            raise ExportError([f"{meta.get('kind')}: action distribution {getattr(dist, '__name__', dist)!r} has "
                               "no ONNX export (Categorical, DiagGaussian and SquashedGaussian have)"])
    if discrete_actions != (mode in ("q", "argmax")):
        raise ExportError([f"{meta.get('kind')}: action space {meta['action_space']['type']} with a {mode} "
                           "action distribution has no ONNX export"])
    from ray.rllib.core.rl_module.apis import ValueFunctionAPI

    with_value = isinstance(module, ValueFunctionAPI) and policy.has_values
    obs_space = policy.observation_space
    one_hot = (int(obs_space.start), int(obs_space.n)) if policy.one_hot else None
    rescale = bool(meta.get("rescale_observations"))
    transform, low, high = ("none", None, None) if discrete_actions else _action_transform(meta, policy.action_space)
    start = int(policy.action_space.start) if discrete_actions else 0
    act_dtype = None if discrete_actions else torch.float32

    class PolicyHead(torch.nn.Module):
        """``obs`` -> the deterministic action (and probabilities / Q-values / value) via the module's inference path."""

        def __init__(self) -> None:
            super().__init__()
            self.module = module
            if one_hot is not None:
                self.register_buffer("states", torch.arange(one_hot[0], one_hot[0] + one_hot[1], dtype=torch.float32))
            if low is not None:
                self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
                self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
            if rescale:  # the bounded Box the policy was trained on rescaled to [-1, 1] (Policy._module_obs)
                self.register_buffer("obs_low", torch.as_tensor(obs_space.low, dtype=torch.float32))
                self.register_buffer("obs_high", torch.as_tensor(obs_space.high, dtype=torch.float32))

        def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = (obs.unsqueeze(-1) == self.states).float() if one_hot is not None else obs
            if rescale:
                x = -1.0 + 2.0 * (x - self.obs_low) / (self.obs_high - self.obs_low)
            batch = {"obs": x}
            outs: list[torch.Tensor] = []
            if mode == "q":
                q = self.module.compute_q_values(batch)["qf_preds"].float()
                outs = [torch.argmax(q, dim=-1) + start, q]
            else:
                logits = self.module.forward_inference(batch)["action_dist_inputs"].float()
                if mode == "argmax":
                    outs = [torch.argmax(logits, dim=-1) + start, torch.softmax(logits, dim=-1)]
                else:
                    a = logits.chunk(2, dim=-1)[0] if mode == "loc" else logits
                    a = a.reshape((a.shape[0], *policy.action_space.shape))
                    if transform == "unsquash":
                        a = self.low + (torch.clamp(a, -1.0, 1.0) + 1.0) * (self.high - self.low) / 2.0
                    elif transform == "clip":
                        a = torch.maximum(torch.minimum(a, self.high), self.low)
                    outs = [a.to(act_dtype)]
            if with_value:
                outs.append(self.module.compute_values(batch).float().reshape(-1))
            return tuple(outs)

    names = ["action"] + (["q_values"] if mode == "q" else ["probabilities"] if mode == "argmax" else [])
    return PolicyHead().eval(), names + (["value"] if with_value else [])


def policy_input(policy: Any) -> dict[str, Any]:
    """The exported graph's one input: ``{name, kind, dtype, shape}`` (as ``raypipe.inputs`` lists it)."""
    shape = ["N"] if policy.one_hot else ["N", *policy.obs_shape]
    return {"name": "obs", "kind": "observation", "dtype": "float32", "shape": shape}


def policy_proto(policy: Any, *, pipeline: str = "") -> Any:
    """The ONNX model of ``policy`` (a :class:`raypipe.model.policy.Policy`), metadata included, checked."""
    import onnx
    import torch

    head, names = _head(policy)
    spec = policy_input(policy)
    sample = torch.zeros((2, *[int(d) for d in spec["shape"][1:]]), dtype=torch.float32)
    if policy.one_hot:
        sample += float(policy.observation_space.start)
    try:
        program = torch.onnx.export(head, (sample,), dynamo=True, input_names=["obs"], output_names=names,
                                    dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False, verbose=False)
    except Exception as exc:
        raise ExportError([f"model.kind {policy.meta.get('kind')!r}: torch.onnx.export failed "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"]) from exc
    proto = program.model_proto
    proto.doc_string = f"raypipe {pipeline} version {getattr(policy, 'version', None)}"
    meta = {"raypipe.pipeline": pipeline, "raypipe.version": str(getattr(policy, "version", None)),
            "raypipe.task": "reinforcement", "raypipe.kind": str(policy.meta.get("kind")),
            "raypipe.inputs": json.dumps([spec]),
            "raypipe.observation_space": json.dumps(policy.meta["observation_space"]),
            "raypipe.action_space": json.dumps(policy.meta["action_space"]),
            "raypipe.normalize_actions": json.dumps(bool(policy.meta["normalize_actions"])),
            "raypipe.clip_actions": json.dumps(bool(policy.meta["clip_actions"]))}
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    return proto
