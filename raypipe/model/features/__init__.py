"""Fitted, serialisable feature pipelines (no pickle): the operators and :class:`FeaturePipeline`."""
