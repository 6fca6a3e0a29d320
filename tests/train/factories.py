"""A user's model factory, imported by ``model.kind: torch:tests.train.factories:<name>``."""
from __future__ import annotations

import torch.nn as nn


def tiny(input_dim: int, n_outputs: int, layout: list, width: int = 8) -> nn.Module:
    assert layout[0]["start"] == 0  # the factory sees the feature layout
    return nn.Sequential(nn.Linear(input_dim, width), nn.Tanh(), nn.Linear(width, n_outputs))


def not_a_module(input_dim: int, n_outputs: int, layout: list) -> str:
    return "nope"
