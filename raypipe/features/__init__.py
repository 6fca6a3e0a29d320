"""Fitted, serialisable feature pipelines (no pickle)."""
from raypipe.features.pipeline import FeaturePipeline

__all__ = ["FeaturePipeline"]
