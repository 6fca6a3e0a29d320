"""Fitted, serialisable feature pipelines (no pickle)."""
from __future__ import annotations

from typing import Any

__all__ = ["FeaturePipeline"]


def __getattr__(name: str) -> Any:  # imported on use: Ray workers that need only `base` skip the operators
    if name == "FeaturePipeline":
        from raypipe.model.features.pipeline import FeaturePipeline

        return FeaturePipeline
    raise AttributeError(name)
