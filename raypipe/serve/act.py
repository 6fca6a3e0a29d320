"""The body of ``POST /act``: one observation, or a list of them, checked against the observation space.

``{"observation": <obs>}`` or ``{"observations": [<obs>, ...]}``, where an observation is a number
(a Discrete space's state) or nested lists of the Box space's shape. pydantic-core parses the raw
body against a model generated from the space, in one pass: wrong shapes, text and NaN or
infinite values are 422s naming the place (``observations.3.2``); the bounds are checked after
(:meth:`raypipe.model.policy.Policy.problems`), also a 422 naming the value and the bounds.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, conlist, create_model, model_validator

MAX_OBSERVATIONS = 10_000

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def observation_type(policy: Any) -> Any:
    """The pydantic type of one observation: nested fixed-length lists of finite numbers (Box), an int (Discrete)."""
    if policy.meta["observation_space"]["type"] == "discrete":
        return StrictInt
    inner: Any = Number
    for n in reversed(policy.obs_shape):
        inner = conlist(inner, min_length=n, max_length=n)
    return inner


def act_model(policy: Any) -> TypeAdapter[Any]:
    """The body model of ``POST /act`` for this policy's observation space."""
    obs = observation_type(policy)

    class _OneOf(BaseModel):
        model_config = ConfigDict(extra="forbid")

        @model_validator(mode="after")
        def _one(self) -> "_OneOf":
            if (self.observation is None) == (self.observations is None):  # type: ignore[attr-defined]
                raise ValueError('send {"observation": <one observation>} or {"observations": [<observation>, ...]}')
            return self

    body = create_model("ActRequest", __base__=_OneOf,
                        observation=(Optional[obs], None),
                        observations=(Optional[conlist(obs, max_length=MAX_OBSERVATIONS)], None))
    return TypeAdapter(body)


def observations(parsed: Any) -> tuple[list[Any], bool]:
    """The observations of a parsed body, and whether it sent a list."""
    if parsed.observations is not None:
        return list(parsed.observations), True
    return [parsed.observation], False
